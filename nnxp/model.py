"""``Sequential``: a stack of layers with forward, backward, fit, predict and evaluate."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import backend
from . import diagnostics as diag
from . import io as _io
from .callbacks import CallbackList, get_lr
from .layers import Layer, Softmax
from .losses import Loss, get_loss
from .metrics import Metric, get_metrics
from .optim import SGD, Optimizer, ParamRef
from .progress import EpochProgress
from .random import Generator
from .validation import check_features, check_flag, check_positive, check_sample_weight

Array = Any
Snapshot = list[tuple[dict[str, Array], dict[str, Array]]]
"""What :meth:`Sequential.snapshot_weights` returns: per layer, copies of its parameters and
buffers."""


class TrainingDivergedError(FloatingPointError):
    """The training loss (or a parameter) became NaN or infinite.

    Attributes
    ----------
    epoch, step
        Where it happened: the epoch (from 1) and the optimizer step counted from the start of
        this ``fit`` call (from 1); None when unknown.
    """

    def __init__(self, message: str, *, epoch: int | None = None,
                 step: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step


class History:
    """Per-epoch training record returned by :meth:`Sequential.fit`.

    Attributes
    ----------
    history
        Maps ``"loss"``, the metric names (``"accuracy"``, ...), ``"val_loss"``,
        ``"val_<metric>"``, ``"lr"`` (the learning rate the epoch ran with) and
        ``"epoch_time"`` (seconds, validation included) to one float per epoch.
    epoch
        The epoch numbers (from 1 in ``fit``; ``partial_fit`` numbers them cumulatively).
    diagnostics
        Filled by ``fit(..., diagnostics=True)``: ``"grad_norm"``, ``"dead_fraction"``,
        ``"saturated_fraction"`` (each ``{layer label: [one float per epoch]}``), ``"kind"`` and
        ``"epoch"``; see :mod:`nnxp.diagnostics`.
    diverged
        None, or the message saying where the loss became non-finite when training stopped
        quietly on divergence (with :class:`~nnxp.callbacks.TerminateOnNaN`).
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.diagnostics: dict[str, Any] = {}
        self.diverged: str | None = None

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __contains__(self, key: object) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.epoch)

    def __repr__(self) -> str:
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"

    def diagnostics_table(self, *, epoch: int | None = None) -> str:
        """The recorded diagnostics as text (see :func:`nnxp.diagnostics.format_table`)."""
        return diag.format_table(self, epoch=epoch)

    def plot(self, path: Any, *, title: str | None = None) -> None:
        """Write a PNG to ``path``: the loss (and ``val_loss``) per epoch, one panel per metric
        (with its validation curve), and the learning rate when it changed.

        Needs matplotlib (the ``plot`` extra: ``pip install 'nnxp[plot]'``), imported only
        here; the object-oriented API is used, so no GUI backend or pyplot state is touched.
        """
        if not self.epoch:
            raise ValueError("the history is empty: nothing to plot")
        bases = [k for k in self.history
                 if not k.startswith("val_") and k not in ("lr", "epoch_time")]
        for k in self.history:  # a validation-only entry still gets a panel
            if k.startswith("val_") and k[4:] not in bases:
                bases.append(k[4:])
        lrs = self.history.get("lr", [])
        show_lr = len(set(lrs)) > 1
        panels = len(bases) + (1 if show_lr else 0)
        fig, axes = diag.new_figure(1, panels, size=(4.5 * panels, 3.6))
        for ax, base in zip(axes[0], bases):
            for key, style in ((base, "-"), ("val_" + base, "--")):
                if key in self.history:
                    ax.plot(self.epoch, self.history[key], style, marker=".", label=key)
            ax.set_xlabel("epoch")
            ax.set_title(base)
            ax.legend(fontsize="small")
        if show_lr:
            ax = axes[0][-1]
            ax.plot(self.epoch, lrs, marker=".")
            ax.set_xlabel("epoch")
            ax.set_title("learning rate")
        if title:
            fig.suptitle(title)
        fig.savefig(path, dpi=100)


class Sequential:
    """Layers applied one after another, trained by backpropagation.

    Parameters
    ----------
    layers
        Objects following the layer protocol (``params``, ``grads``, ``buffers``, ``forward``,
        ``backward``), e.g. ``[Dense(64, 128), ReLU(), Dense(128, 10)]``.
    seed
        When given, every layer's parameters are redrawn from it (one independent stream per
        layer) and it fixes the shuffling order, so the same seed gives bit-identical initial
        weights and batches on every backend.
    loss
        The training objective (a name from ``nnxp.losses.LOSSES`` or a loss object), used by
        ``fit``, ``evaluate`` and ``predict`` unless they are given another; softmax
        cross-entropy by default. A regression model says so here (``loss="mse"``) so that
        ``evaluate`` and ``predict`` treat it as one before it is trained.

    The model works on the backend that was active when it was created; inputs from any other
    library (NumPy, CuPy, torch, nested lists) are moved there.
    """

    def __init__(self, layers: Iterable[Layer], *, seed: int | None = None,
                 loss: str | Loss = "softmax_cross_entropy") -> None:
        if isinstance(layers, Layer) or not isinstance(layers, Iterable):
            raise TypeError(f"layers must be a list of layers, got {type(layers).__name__} "
                            f"{layers!r}; write Sequential([...])")
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("layers must hold at least one layer, got an empty list")
        for i, layer in enumerate(self.layers):
            if not all(hasattr(layer, a) for a in ("params", "grads", "forward", "backward")):
                raise TypeError(f"layers[{i}] ({type(layer).__name__}) does not follow the layer "
                                "protocol: it needs params, grads, forward and backward")
            if isinstance(layer, Softmax) and layer.dim not in (1, -1):
                raise ValueError(f"layers[{i}] is Softmax(dim={layer.dim}), but a model's "
                                 "activations have shape (batch, features): use dim=-1 (the "
                                 "features); any other axis mixes samples or does not exist")
            first = next(j for j, other in enumerate(self.layers) if other is layer)
            if first != i:  # one cache per layer: a second forward would overwrite the first's
                raise ValueError(f"layers[{i}] is the same object as layers[{first}] "
                                 f"({layer!r}); a layer can appear only once in a model, so "
                                 "create a new instance for each position")
        self._check_widths()
        info = backend.get_backend()
        self.xp, self.device = info.xp, info.device
        foreign = [i for i, lay in enumerate(self.layers)
                   if getattr(lay, "xp", self.xp) is not self.xp]
        if foreign:
            raise ValueError(f"layers {foreign} were created on another backend than the active "
                             f"one ({info.name}); create all layers under the same backend")
        self.seed = seed
        rng = Generator(seed)
        self._data_rng = rng.spawn()
        if seed is not None:
            for layer in self.layers:
                layer.reset_parameters(rng.spawn())
        self.dtype = self._param_dtype()
        self.loss: Loss = get_loss(loss)
        self.optimizer: Any = None  # an Optimizer, bound by fit/partial_fit/train_on_batch
        self.metrics: list[Metric] | None = None  # resolved by fit (None: the default)
        self.epochs_trained = 0  # epochs completed over every fit/partial_fit call
        self.stop_training = False  # a callback sets it to end fit after the current epoch
        self.history: History | None = None  # the History of the latest fit/partial_fit
        self.metadata: dict[str, Any] = {}  # free-form, JSON-able; saved with the model

    # --- structure ------------------------------------------------------------------------

    def _check_widths(self) -> None:
        width, where = None, None
        for i, layer in enumerate(self.layers):
            fan_in = getattr(layer, "in_features", None)
            if width is not None and fan_in is not None and fan_in != width:
                raise ValueError(f"layers[{i}] expects {fan_in} input features but {where} "
                                 f"produces {width}")
            out = getattr(layer, "out_features", None)
            if out is not None:
                width, where = out, f"layers[{i}] ({layer!r})"

    def _param_dtype(self) -> Any:
        for layer in self.layers:
            for p in layer.params.values():
                return p.dtype
        return self.xp.float32

    @property
    def n_features(self) -> int | None:
        """Input width expected by the first layer that declares one."""
        for layer in self.layers:
            width = getattr(layer, "in_features", None)
            if width is not None:
                return int(width)
        return None

    @property
    def n_outputs(self) -> int | None:
        """Output width of the last layer that declares one."""
        for layer in reversed(self.layers):
            width = getattr(layer, "out_features", None)
            if width is not None:
                return int(width)
        return None

    def parameters(self) -> list[ParamRef]:
        """Every trainable parameter as ``(layer, key)``, in layer order."""
        return [(layer, key) for layer in self.layers for key in layer.params]

    def count_params(self) -> int:
        """Number of trainable scalars."""
        return sum(math.prod(p.shape) for layer in self.layers for p in layer.params.values())

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n  {inner},\n])"

    # --- forward and backward -------------------------------------------------------------

    def forward(self, x: Array, *, training: bool = False) -> Array:
        """Apply every layer in order (no input checks: the raw, fast path)."""
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    def backward(self, dy: Array, *, need_input_grad: bool = True) -> Array | None:
        """Backpropagate ``dy = ∂L/∂outputs`` through every layer; fills each ``layer.grads``.

        Returns ``∂L/∂inputs``. With ``need_input_grad=False`` (what training uses) it returns
        None and stops at the first layer that has parameters: that layer is asked not to
        compute its input gradient (``layer.needs_input_grad``), and the parameter-free layers
        before it (e.g. a ``Standardize`` first layer) are not differentiated at all.
        """
        layers = self.layers
        if need_input_grad:
            for layer in reversed(layers):
                dy = layer.backward(dy)
            return dy
        first = next((i for i, layer in enumerate(layers) if layer.params), len(layers))
        for i in range(len(layers) - 1, first, -1):
            dy = layers[i].backward(dy)
        if first < len(layers):
            layer = layers[first]
            previous = getattr(layer, "needs_input_grad", True)
            layer.needs_input_grad = False
            try:
                layer.backward(dy)
            finally:
                layer.needs_input_grad = previous
        return None

    def loss_and_grads(self, x: Array, y: Array, loss: Loss | None = None) -> Array:
        """One forward and backward pass on a batch; returns the 0-d loss (weight penalties
        included), fills the grads."""
        loss = self.loss if loss is None else loss
        value, cache = loss.forward(self.forward(x, training=True), y, xp=self.xp)
        self.backward(loss.backward(cache, xp=self.xp), need_input_grad=False)
        return value + self.penalty() if self._regularized() else value

    # --- weight penalties and constraints ---------------------------------------------------

    def _regularized(self) -> bool:
        return any(getattr(layer, "has_penalty", False) for layer in self.layers)

    def penalty(self) -> Array:
        """Σ of the layers' weight penalties (``Dense(l1=, l2=)``): a 0-d array.

        It is part of the loss that ``fit``, ``evaluate`` and ``loss_and_grads`` report; each
        layer adds its penalty's gradient to its own ``grads`` in ``backward``.
        """
        terms = [layer.penalty() for layer in self.layers
                 if getattr(layer, "has_penalty", False)]
        if not terms:
            return self.xp.zeros((), dtype=self.dtype, device=self.device)
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total

    def apply_constraints(self) -> None:
        """Project constrained parameters (``Dense(max_norm=)``); ``fit`` calls it after every
        optimizer step."""
        for layer in self.layers:
            if hasattr(layer, "apply_constraints"):
                layer.apply_constraints()

    # --- training -------------------------------------------------------------------------

    def _prepare(self, X: Any, y: Any, loss: Loss) -> tuple[Array, Array]:
        X = check_features(X, n_features=self.n_features, dtype=self.dtype, xp=self.xp,
                           device=self.device)
        n_out = self.n_outputs
        if n_out is None:
            raise ValueError("the model declares no output width (no Dense layer)")
        y = loss.check_targets(y, n_out, xp=self.xp, device=self.device, n_samples=X.shape[0])
        return X, y

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        loss: str | Loss | None = None,
        optimizer: Optimizer | None = None,
        epochs: int = 10,
        batch_size: int | None = 32,
        shuffle: bool = True,
        verbose: int = 1,
        validation_split: float = 0.0,
        validation_data: tuple[Any, Any] | None = None,
        metrics: Any = None,
        callbacks: Iterable[Any] | None = None,
        diagnostics: bool = False,
        check_finite_every: int | None = None,
        keep_finite_weights: bool = True,
        resume_from: Any = None,
        sample_weight: Any = None,
    ) -> History:
        """Train by backpropagation: full-batch, mini-batch or stochastic gradient descent.

        Every epoch reshuffles the training samples (from the model's seed), runs one optimizer
        step per batch, evaluates the validation data, and moves every logged number to the
        host in a single transfer.

        Parameters
        ----------
        X : (n_samples, n_features) array-like
        y : targets; for classification losses, integer labels of shape (n_samples,)
        loss : a name from ``nnxp.losses.LOSSES`` or a loss object; ``None`` keeps the model's
            (set by the constructor or an earlier fit; softmax cross-entropy by default)
        optimizer : an ``nnxp.optim`` optimizer. ``None`` reuses the model's optimizer from an
            earlier ``fit``/``partial_fit``/load, or creates ``SGD(lr=0.01)``. An optimizer is
            bound to the model's parameters once; fitting again with the same optimizer
            continues its state (momentum, moments, step count).
        epochs : passes over the data (>= 1)
        batch_size : samples per step; ``None`` is the whole set (batch gradient descent), 1 is
            stochastic gradient descent; the last batch of an epoch may be smaller
        shuffle : reshuffle the training samples every epoch
        verbose : 0 silent, 1 a progress bar per epoch with the loss and metrics
        validation_split : fraction in [0, 1) of the samples held out for validation, taken
            from the END of ``X``/``y`` before any shuffling (as Keras does); shuffle data
            that is ordered (e.g. by class) first
        validation_data : ``(X_val, y_val)``, evaluated after every epoch; not together with
            ``validation_split``
        metrics : names from :data:`nnxp.metrics.METRICS` (``"accuracy"``,
            ``"top_k_accuracy"``, ``"top_3_accuracy"``, ``"mse"``, ``"mae"``, ``"r2"``) or
            metric objects; ``None`` means ``["accuracy"]`` for classification losses and no
            extra metric for regression
        callbacks : :class:`nnxp.callbacks.Callback` objects (early stopping, schedules, ...)
        diagnostics : record per-layer gradient norms, dead ReLU and saturated sigmoid/tanh
            fractions every epoch in ``history.diagnostics`` (see :mod:`nnxp.diagnostics`)
        check_finite_every : the divergence check interval in optimizer steps; ``None`` (the
            default) checks once per epoch, at no extra cost (see below)
        keep_finite_weights : keep a device copy of the weights at every passing check point,
            so that divergence restores the last finite ones (the default). ``False`` saves
            that copy — one set of parameters and buffers, the largest part of what ``fit``
            holds beyond a bare training step — at the price of leaving a diverged model with
            the weights of the failing step (the error still names it)
        resume_from : path of a checkpoint written by :meth:`save` (or
            :class:`~nnxp.callbacks.ModelCheckpoint`) during an earlier run of the same
            architecture: its weights, buffers, optimizer state, shuffling generator and epoch
            count are restored, and training continues with the next epoch up to ``epochs``
            (the total, as in the interrupted run), bit-identical to a run that was never
            interrupted on the same backend. With ``optimizer=None`` the checkpoint's optimizer
            is rebuilt; a given optimizer must be of the same class and receives the state.
        sample_weight : optional non-negative weights of shape ``(n_samples,)``: each batch
            minimises ``(1/N_b) Σ_i w_i l_i`` (Keras' convention, see :mod:`nnxp.losses`), and
            the logged training loss is the same weighted mean over the epoch. They follow
            their samples through shuffling; with ``validation_split`` the held-out part's
            weights are dropped (validation losses are unweighted).

        Returns
        -------
        History
            per epoch: ``loss``, the metrics, ``val_loss`` and ``val_<metric>``, ``lr`` and
            ``epoch_time``.

        Raises
        ------
        TrainingDivergedError
            when a training loss or a parameter becomes NaN or infinite (unless a
            :class:`~nnxp.callbacks.TerminateOnNaN` callback asks for a quiet stop).

        Notes
        -----
        Divergence policy. Every batch loss stays on the device; at each check point (the end
        of every epoch, or every ``check_finite_every`` steps) one flag — "every loss since the
        last check point and every parameter is finite" — comes to the host (at the end of an
        epoch inside the transfer that fetches the logs anyway). While it holds, a device copy
        of the parameters and buffers is kept as the new snapshot. When it fails, the model
        gets back the snapshot of the last check point that passed — finite weights, from the
        end of the previous epoch by default — and the error names the epoch and the step
        of the first non-finite loss. The optimizer's state is not rolled back: continue
        with a fresh optimizer. Smaller ``check_finite_every`` loses fewer steps at the cost
        of one synchronisation and one parameter copy per check.
        """
        check_positive(epochs, argument="epochs", integer=True)
        _check_loop_options(shuffle=shuffle, diagnostics=diagnostics, verbose=verbose,
                            keep_finite_weights=keep_finite_weights)
        if loss is not None:
            self.loss = get_loss(loss)
        X, y = self._prepare(X, y, self.loss)
        w = self._sample_weight(sample_weight, X.shape[0])
        X, y, val = self._validation_sets(X, y, validation_split, validation_data)
        if w is not None and w.shape[0] != X.shape[0]:
            w = w[:X.shape[0]]  # validation_split held out the last samples
        self.metrics = get_metrics(metrics, is_classifier=self.loss.is_classifier,
                                   loss=self.loss)
        if resume_from is not None and optimizer is None:
            optimizer = _io.checkpoint_optimizer(resume_from)
        opt = self._use_optimizer(optimizer)
        first_epoch = 1
        if resume_from is not None:
            first_epoch = _io.restore_checkpoint(self, resume_from, opt) + 1
            if first_epoch > epochs:
                raise ValueError(f"the checkpoint {resume_from} has completed "
                                 f"{first_epoch - 1} epochs already; epochs={epochs} is the "
                                 "total to reach, so nothing is left to train")
        return self._train(X, y, val, optimizer=opt, epochs=epochs - first_epoch + 1,
                           first_epoch=first_epoch,
                           batch_size=batch_size, shuffle=shuffle, verbose=verbose,
                           callbacks=callbacks, diagnostics=diagnostics,
                           check_finite_every=check_finite_every, sample_weight=w,
                           keep_finite_weights=keep_finite_weights)

    def _sample_weight(self, sample_weight: Any, n_samples: int) -> Array | None:
        """Checked per-sample weights in the model's dtype, or None."""
        if sample_weight is None:
            return None
        return check_sample_weight(sample_weight, n_samples, dtype=self.dtype, xp=self.xp,
                                   device=self.device)

    def partial_fit(
        self,
        X: Any,
        y: Any,
        *,
        loss: str | Loss | None = None,
        optimizer: Optimizer | None = None,
        batch_size: int | None = 32,
        shuffle: bool = True,
        verbose: int = 0,
        validation_data: tuple[Any, Any] | None = None,
        metrics: Any = None,
        callbacks: Iterable[Any] | None = None,
        diagnostics: bool = False,
        check_finite_every: int | None = None,
        keep_finite_weights: bool = True,
        sample_weight: Any = None,
    ) -> History:
        """One epoch over ``(X, y)``, continuing the model's optimizer and shuffling stream.

        For incremental (out-of-core, streaming) training: ``loss``, ``optimizer`` and
        ``metrics`` default to the ones in use (from an earlier ``fit`` or ``partial_fit``),
        and the optimizer is bound only once, so its state carries over from call to call.
        On the same data and seed, two ``partial_fit`` calls give exactly the weights of
        ``fit(epochs=2)`` with the same optimizer and batch size. The other arguments are those
        of :meth:`fit`.

        Returns
        -------
        History
            one entry, numbered by the model's cumulative epoch count ``epochs_trained``.
        """
        _check_loop_options(shuffle=shuffle, diagnostics=diagnostics, verbose=verbose,
                            keep_finite_weights=keep_finite_weights)
        if loss is not None:
            self.loss = get_loss(loss)
        X, y = self._prepare(X, y, self.loss)
        w = self._sample_weight(sample_weight, X.shape[0])
        X, y, val = self._validation_sets(X, y, 0.0, validation_data)
        if metrics is not None or self.metrics is None or loss is not None:
            self.metrics = get_metrics(metrics, is_classifier=self.loss.is_classifier,
                                       loss=self.loss)
        opt = self._use_optimizer(optimizer)
        return self._train(X, y, val, optimizer=opt, epochs=1,
                           first_epoch=self.epochs_trained + 1, batch_size=batch_size,
                           shuffle=shuffle, verbose=verbose, callbacks=callbacks,
                           diagnostics=diagnostics, check_finite_every=check_finite_every,
                           keep_finite_weights=keep_finite_weights,
                           sample_weight=w)

    def train_on_batch(self, X: Any, y: Any, *, loss: str | Loss | None = None,
                       optimizer: Optimizer | None = None) -> float:
        """One optimizer step on the batch ``(X, y)``; returns its loss (before the update).

        ``loss`` and ``optimizer`` default to the ones in use, and the optimizer state carries
        over between calls (it is bound once). The loss is read on the host (one
        synchronisation per call) before the update is applied: when it is NaN or infinite
        the update is skipped, the weights stay as they were, and
        :class:`TrainingDivergedError` is raised. (A closure optimizer such as LBFGS steps
        first; its update is then undone from a copy of the weights.)
        """
        if loss is not None:
            self.loss = get_loss(loss)
        X, y = self._prepare(X, y, self.loss)
        opt = self._use_optimizer(optimizer)
        closure_based = getattr(opt, "requires_closure", False)
        saved = self.snapshot_weights() if closure_based else None
        result = math.nan

        def check(value: Array) -> None:
            nonlocal result
            result = backend.to_float(value)
            if not math.isfinite(result) and not closure_based:
                raise TrainingDivergedError(
                    f"train_on_batch: the loss is {result}; the update was skipped and the "
                    f"weights are unchanged. {_ADVICE.format(opt=opt)}")

        with _silence_fp_warnings():
            self._step(X, y, opt, before_update=check)
        if not math.isfinite(result):
            if saved is not None:
                self.restore_weights(saved)
            raise TrainingDivergedError(
                f"train_on_batch: the loss is {result}; the weights were restored to those "
                f"before the step. {_ADVICE.format(opt=opt)}")
        return result

    # --- the training engine ----------------------------------------------------------------

    def _use_optimizer(self, optimizer: Optimizer | None) -> Optimizer:
        """The optimizer for this call, bound to the parameters only if it is not already."""
        if optimizer is None:
            optimizer = self.optimizer if self.optimizer is not None else SGD(lr=0.01)
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be an nnxp.optim optimizer, got {optimizer!r}")
        refs = self.parameters()
        bound = getattr(optimizer, "_refs", None)
        same = isinstance(bound, list) and len(bound) == len(refs) and all(
            a[0] is b[0] and a[1] == b[1] for a, b in zip(bound, refs))
        if not same:
            optimizer.bind(refs)
        self.optimizer = optimizer
        return optimizer

    def _validation_sets(self, X: Array, y: Array, validation_split: float,
                         validation_data: Any) -> tuple[Array, Array, Any]:
        """Split off or check the validation data: ``(X_train, y_train, (X_val, y_val) | None)``."""
        if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) \
                or not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be a float in [0, 1), got "
                             f"{validation_split!r}")
        if validation_data is not None and validation_split:
            raise ValueError("give validation_split or validation_data, not both (got "
                             f"validation_split={validation_split})")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise TypeError("validation_data must be a pair (X_val, y_val), got "
                                f"{type(validation_data).__name__}"
                                + (f" of length {len(validation_data)}"
                                   if isinstance(validation_data, (tuple, list)) else ""))
            Xv = check_features(validation_data[0], n_features=self.n_features,
                                dtype=self.dtype, xp=self.xp, device=self.device,
                                argument="validation_data[0]")
            try:
                yv = self.loss.check_targets(validation_data[1], self.n_outputs or 1,
                                             xp=self.xp, device=self.device,
                                             n_samples=Xv.shape[0])
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"validation_data[1]: {exc}") from None
            return X, y, (Xv, yv)
        if validation_split:
            n = X.shape[0]
            n_train = int(math.floor(n * (1.0 - validation_split)))
            if n_train < 1 or n_train >= n:
                raise ValueError(f"validation_split={validation_split} of {n} samples leaves "
                                 f"{n_train} for training and {n - n_train} for validation; "
                                 "both need at least one")
            return (X[:n_train, ...], y[:n_train, ...],
                    (X[n_train:n, ...], y[n_train:n, ...]))
        return X, y, None

    def _step(self, xb: Array, yb: Array, optimizer: Optimizer,
              before_update: Callable[[Array], None] | None = None,
              wb: Array | None = None) -> tuple[Array, Array]:
        """One optimizer step on a batch; returns ``(0-d loss before the update, outputs)``.

        ``before_update(loss)`` runs after the backward pass, before ``optimizer.step()`` (for
        a closure optimizer: after its step, with the gradients of its last evaluation).
        """
        xp = self.xp

        def loss_and_backward() -> tuple[Array, Array]:
            out = self.forward(xb, training=True)
            if wb is None:
                value, cache = self.loss.forward(out, yb, xp=xp)
            else:  # checked once in fit: no per-batch validation
                value, cache = self.loss.forward(out, yb, xp=xp, sample_weight=wb,
                                                 validate_sample_weight=False)
            if self._regularized():  # weight penalties, at the weights of this forward
                value = value + self.penalty()
            self.backward(self.loss.backward(cache, xp=xp), need_input_grad=False)
            return value, out

        if getattr(optimizer, "requires_closure", False):
            first: list[tuple[Array, Array]] = []

            def closure() -> float:
                """Recompute the loss and gradients on this batch; return the loss."""
                value, out = loss_and_backward()
                if not first:
                    first.append((value, out))
                return backend.to_float(value)

            optimizer.step(closure)
            if not first:  # an optimizer that never evaluated: log the current loss
                closure()
            if before_update is not None:
                before_update(first[0][0])
            self.apply_constraints()
            return first[0]
        value, out = loss_and_backward()
        if before_update is not None:
            before_update(value)
        optimizer.step()
        self.apply_constraints()
        return value, out

    def _evaluate_arrays(self, X: Array, y: Array, metrics: list[Metric], batch_size: int,
                         prefix: str = "") -> tuple[list[str], list[Array]]:
        """Loss (penalties included) and metrics on prepared arrays, as 0-d float64 device
        arrays (no host transfer), evaluated in chunks of ``batch_size`` samples."""
        xp, n = self.xp, X.shape[0]
        total: Array = None
        states: list[Any] = [None] * len(metrics)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            xb, yb = X[start:stop, ...], y[start:stop, ...]
            out = self.forward(xb, training=False)
            value, _ = self.loss.forward(out, yb, xp=xp)
            part = xp.astype(value, xp.float64) * (stop - start)
            total = part if total is None else total + part
            for i, metric in enumerate(metrics):
                states[i] = metric.update(states[i], out, yb, xp=xp)
        loss = total / n
        if self._regularized():
            loss = loss + xp.astype(self.penalty(), xp.float64)
        names = [prefix + "loss"] + [prefix + m.name for m in metrics]
        values = [loss] + [m.result(s, xp=xp) for m, s in zip(metrics, states)]
        return names, values

    def _train(self, X: Array, y: Array, val: Any, *, optimizer: Optimizer, epochs: int,
               first_epoch: int, batch_size: int | None, shuffle: bool, verbose: int,
               callbacks: Iterable[Any] | None, diagnostics: bool,
               check_finite_every: int | None, sample_weight: Array | None = None,
               keep_finite_weights: bool = True) -> History:
        """The loop shared by ``fit`` and ``partial_fit`` (arrays already checked)."""
        if batch_size is not None:
            check_positive(batch_size, argument="batch_size", integer=True)
        if check_finite_every is not None:
            check_positive(check_finite_every, argument="check_finite_every", integer=True)
        xp, n = self.xp, X.shape[0]
        bs = n if batch_size is None else min(batch_size, n)
        n_batches = math.ceil(n / bs)
        metrics = self.metrics or []
        cbs = callbacks if isinstance(callbacks, CallbackList) else CallbackList(callbacks)
        quiet = any(getattr(cb, "handles_divergence", False) for cb in cbs)
        batch_hooks = cbs.has_batch_hooks
        recorder = (diag.DiagnosticsRecorder(self, X[:min(n, diag.PROBE_SIZE), ...])
                    if diagnostics else None)
        history = History()
        self.history = history
        self.stop_training = False
        guard = _FiniteGuard(self, check_finite_every, keep=keep_finite_weights)
        last_epoch = first_epoch + epochs - 1
        progress = EpochProgress(epochs=last_epoch, n_batches=n_batches, verbose=verbose)
        before_update = None if recorder is None else recorder.before_update
        cbs.set_model(self)
        cbs.on_train_begin({})
        step = 0
        quiet_fp = _silence_fp_warnings()
        quiet_fp.__enter__()
        try:
            for epoch in range(first_epoch, last_epoch + 1):
                cbs.on_epoch_begin(epoch, {})
                lr = get_lr(optimizer)
                started = time.perf_counter()
                progress.start_epoch(epoch)
                order = (self._data_rng.permutation(n, xp=xp, device=self.device)
                         if shuffle else None)
                loss_sum = xp.zeros((), dtype=xp.float64, device=self.device)
                states: list[Any] = [None] * len(metrics)
                for batch, (xb, yb, wb) in enumerate(
                        _batches(X, y, bs, sample_weight, order, xp=xp)):
                    value, out = self._step(xb, yb, optimizer, before_update=before_update,
                                            wb=wb)
                    step += 1
                    loss_sum = loss_sum + xp.astype(value, xp.float64) * xb.shape[0]
                    for i, metric in enumerate(metrics):
                        states[i] = metric.update(states[i], out, yb, xp=xp)
                    guard.record(value, epoch, batch, step)
                    if guard.due(step):
                        guard.check(f"after step {step} (epoch {epoch})")
                    if batch_hooks:
                        cbs.on_batch_end(batch, {"loss": value, "size": xb.shape[0]})
                    progress.advance()
                names = ["loss"] + [m.name for m in metrics]
                arrays = [loss_sum / n] + [m.result(s, xp=xp) for m, s in zip(metrics, states)]
                if val is not None:
                    v_names, v_arrays = self._evaluate_arrays(
                        val[0], val[1], metrics, max(bs, 4096), prefix="val_")
                    names, arrays = names + v_names, arrays + v_arrays
                diag_arrays = recorder.epoch_arrays() if recorder is not None else []
                flag = guard.flag()
                host = backend.to_numpy(xp.stack(arrays + diag_arrays + [flag]))  # one transfer
                values = [float(v) for v in host.tolist()]
                if values[-1] != 1.0:
                    raise guard.diverged()
                guard.commit(f"at the end of epoch {epoch} (after step {step})")
                logs: dict[str, Any] = dict(zip(names, values[:len(names)]))
                if lr is not None:
                    logs["lr"] = lr
                logs["epoch_time"] = time.perf_counter() - started
                if recorder is not None:
                    recorder.record(epoch, values[len(names):-1], history.diagnostics)
                self.epochs_trained += 1
                progress.end_epoch(epoch, logs)
                cbs.on_epoch_end(epoch, logs)
                history.append(epoch, logs)
                if self.stop_training:
                    break
        except _Diverged as event:
            if guard.snapshot is not None:
                self.restore_weights(guard.snapshot)
            message = event.describe(guard, n_batches, optimizer)
            if not quiet:
                raise TrainingDivergedError(message, epoch=event.epoch, step=event.step) \
                    from None
            history.diverged = message
            for cb in cbs:
                hook = getattr(cb, "on_divergence", None)
                if hook is not None:
                    hook(message)
            self.stop_training = True
        finally:
            quiet_fp.__exit__(None, None, None)
            progress.close()
        cbs.on_train_end({})
        return history

    # --- inference ------------------------------------------------------------------------

    def _outputs(self, X: Any, batch_size: int) -> Array:
        X = check_features(X, n_features=self.n_features, dtype=self.dtype, xp=self.xp,
                           device=self.device)
        check_positive(batch_size, argument="batch_size", integer=True)
        if X.shape[0] <= batch_size:
            return self.forward(X, training=False)
        n = X.shape[0]
        parts = [self.forward(X[i:min(i + batch_size, n), ...], training=False)
                 for i in range(0, n, batch_size)]
        return self.xp.concat(parts, axis=0)

    def predict_proba(self, X: Any, *, batch_size: int = 4096) -> Array:
        """Class probabilities ``(n_samples, n_classes)`` on the model's backend."""
        if not hasattr(self.loss, "predict_proba"):
            raise TypeError(f"predict_proba needs a classification loss; this model was trained "
                            f"with {self.loss.name!r}")
        return self.loss.predict_proba(self._outputs(X, batch_size), xp=self.xp)

    def predict(self, X: Any, *, batch_size: int = 4096) -> Array:
        """Class labels (int64) for classifiers; the raw outputs for regression losses."""
        return self.loss.predict(self._outputs(X, batch_size), xp=self.xp)

    def evaluate(self, X: Any, y: Any, *, batch_size: int = 4096,
                 metrics: Any = None) -> dict[str, float]:
        """Mean loss (weight penalties included) and metrics on ``(X, y)``, without training.

        ``metrics`` (names or objects, see :mod:`nnxp.metrics`) defaults to the metrics of the
        last ``fit``, else accuracy for classifiers and none for regression. Computed on the
        device in chunks of ``batch_size`` samples, with one transfer to the host.
        """
        check_positive(batch_size, argument="batch_size", integer=True)
        X, y = self._prepare(X, y, self.loss)
        if metrics is not None:
            chosen = get_metrics(metrics, is_classifier=self.loss.is_classifier, loss=self.loss)
        elif self.metrics is not None:
            chosen = self.metrics
        else:
            chosen = get_metrics(None, is_classifier=self.loss.is_classifier, loss=self.loss)
        names, arrays = self._evaluate_arrays(X, y, chosen, batch_size)
        host = backend.to_numpy(self.xp.stack(arrays))
        return {name: float(v) for name, v in zip(names, host.tolist())}

    # --- weight snapshots (early stopping, divergence) ----------------------------------------

    def snapshot_weights(self) -> Snapshot:
        """A copy, on the device, of every layer's parameters and buffers.

        What :meth:`restore_weights` puts back; the training loop keeps one as the last finite
        weights, and :class:`~nnxp.callbacks.EarlyStopping` one of the best epoch. The copies
        are independent of the model: training on does not change them.

        Returns
        -------
        list of (dict, dict)
            Per layer, in order, ``(params, buffers)`` mapping each key to a copied array.
        """
        xp = self.xp
        return [({k: xp.asarray(v, copy=True) for k, v in layer.params.items()},
                 {k: xp.asarray(v, copy=True)
                  for k, v in (getattr(layer, "buffers", None) or {}).items()})
                for layer in self.layers]

    def restore_weights(self, snapshot: Snapshot) -> None:
        """Put back the parameters and buffers of a :meth:`snapshot_weights` of this model.

        They are copied in again, so the same snapshot can be restored more than once.

        Parameters
        ----------
        snapshot
            What :meth:`snapshot_weights` returned for this model (or one of the same
            architecture).
        """
        xp = self.xp
        for layer, (params, buffers) in zip(self.layers, snapshot):
            for k, v in params.items():
                layer.params[k] = xp.asarray(v, copy=True)
            for k, v in buffers.items():
                layer.buffers[k] = xp.asarray(v, copy=True)

    # --- persistence, devices, summary (implemented in nnxp.io) ---------------------------

    def save(self, path: Any, *, include_optimizer: bool = True, overwrite: bool = True) -> None:
        """Write the model (and, by default, its optimizer state and counters) to ``path``.

        An NPZ archive with a JSON record, read back by :func:`nnxp.load`; written atomically.
        See :func:`nnxp.io.save` and ``docs/persistence.md``.
        """
        _io.save(self, path, include_optimizer=include_optimizer, overwrite=overwrite)

    def to(self, backend: str | Any, device: Any = None) -> Sequential:
        """Move the parameters, buffers and optimizer state to another backend/device, in place.

        ``model.to("torch", "cuda")``, ``model.to("array_api_strict:device1")``; returns the
        model. See :func:`nnxp.io.move`.
        """
        return _io.move(self, backend, device)

    def summary(self, batch_size: int = 32, *, print_summary: bool = True) -> str:
        """The layers, their output shapes and parameter counts, and a memory estimate for a
        training step with ``batch_size`` samples; printed unless ``print_summary=False``, and
        returned as a string. See :func:`nnxp.io.summary`."""
        text = _io.summary(self, batch_size)
        if print_summary:
            print(text)
        return text


def _check_loop_options(*, shuffle: Any, diagnostics: Any, verbose: Any,
                        keep_finite_weights: Any = True) -> None:
    """The flags of ``fit``/``partial_fit``: a truthy string such as ``"no"`` must not
    silently switch an option on."""
    check_flag(shuffle, argument="shuffle")
    check_flag(diagnostics, argument="diagnostics")
    check_flag(keep_finite_weights, argument="keep_finite_weights")
    if not isinstance(verbose, bool):  # verbose=True reads as 1
        check_positive(verbose, argument="verbose", integer=True, allow_zero=True)


def _batches(X: Array, y: Array, batch_size: int, w: Array | None, order: Array | None, *,
             xp: Any) -> Iterator[tuple[Array, Array, Array | None]]:
    """The epoch's batches: slices in order, or gathered batch by batch along ``order``.

    Gathering each batch from the permutation (rather than taking a shuffled copy of the
    whole data set up front) keeps the extra memory of shuffling at one batch.
    y: (n,) labels or (n, k) targets; w: (n,) sample weights or None.
    """
    n = X.shape[0]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)  # the standard leaves out-of-bounds stops unspecified
        if order is None:
            yield X[start:stop, ...], y[start:stop, ...], None if w is None else w[start:stop]
        else:
            idx = order[start:stop]
            yield (xp.take(X, idx, axis=0), xp.take(y, idx, axis=0),
                   None if w is None else xp.take(w, idx, axis=0))


@contextlib.contextmanager
def _silence_fp_warnings() -> Iterator[None]:
    """Ignore NumPy's "overflow / invalid value / divide by zero encountered" RuntimeWarnings:
    the training loop detects non-finite values itself and reports them with the epoch and
    step (under ``-W error`` such a warning would otherwise escape as an exception before the
    last finite weights are restored)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*(overflow|invalid value|divide by zero) encountered",
            category=RuntimeWarning)
        yield


_ADVICE = ("Lower the learning rate (optimizer={opt!r}), clip the gradients (the optimizers' "
           "clip_norm= or clip_value= option), or standardise the inputs.")


class _Diverged(Exception):
    """Internal: raised inside the training loop when a check point finds a non-finite value."""

    def __init__(self, epoch: int | None, step: int | None, batch: int | None,
                 value: float | None, last_step: int | None = None) -> None:
        super().__init__()
        self.epoch, self.step, self.batch, self.value = epoch, step, batch, value
        self.last_step = last_step

    def describe(self, guard: _FiniteGuard, n_batches: int, optimizer: Any) -> str:
        if guard.snapshot is not None:
            restored = (f"The weights were restored to those {guard.snapshot_where}, the last "
                        "check point at which every loss and parameter was finite.")
        else:
            restored = ("The weights are left as the failing step made them "
                        "(keep_finite_weights=False kept no copy of the last finite ones).")
        if self.value is not None:
            head = (f"Training diverged: the loss became {self.value} in epoch {self.epoch}, "
                    f"step {self.step} (batch {(self.batch or 0) + 1} of {n_batches}).")
        else:
            head = (f"Training diverged: a parameter became NaN or infinite by step "
                    f"{self.last_step} (epoch {self.epoch}), although every loss up to it was "
                    "finite: an update overflowed.")
        return f"{head} {restored} {_ADVICE.format(opt=optimizer)}"


class _FiniteGuard:
    """The divergence policy of ``fit`` (see its Notes): losses stay on the device until a
    check point, where one flag says whether they and the parameters are all finite; a
    passing check point refreshes the weight snapshot, a failing one restores it."""

    def __init__(self, model: Sequential, every: int | None, *, keep: bool = True) -> None:
        self.model = model
        self.every = every
        self.keep = keep  # keep_finite_weights: hold a copy of the last finite weights
        self.snapshot = model.snapshot_weights() if keep else None
        self.snapshot_where = "at the start of this call"
        self.window: list[Array] = []  # 0-d losses since the last check point
        self.where: list[tuple[int, int, int]] = []  # (epoch, batch, step) of each

    def record(self, value: Array, epoch: int, batch: int, step: int) -> None:
        self.window.append(value)
        self.where.append((epoch, batch, step))

    def due(self, step: int) -> bool:
        return self.every is not None and step % self.every == 0

    def flag(self) -> Array:
        """0-d float64: 1.0 when every recorded loss and every parameter is finite, else 0.0."""
        xp = self.model.xp
        ok = xp.ones((), dtype=xp.bool, device=self.model.device)
        if self.window:
            ok = ok & xp.all(xp.isfinite(xp.stack(self.window)))
        for layer in self.model.layers:
            for p in layer.params.values():
                ok = ok & xp.all(xp.isfinite(p))
        return xp.astype(ok, xp.float64)

    def check(self, where: str) -> None:
        """A check point inside an epoch (one synchronisation)."""
        if backend.to_float(self.flag()) != 1.0:
            raise self.diverged()
        self.commit(where)

    def commit(self, where: str) -> None:
        """Everything so far is finite: keep a copy of the weights and start a new window."""
        if self.keep:
            self.snapshot = None  # obsolete now: release it before copying, not after
            self.snapshot = self.model.snapshot_weights()
        self.snapshot_where = where
        self.window.clear()
        self.where.clear()

    def diverged(self) -> _Diverged:
        """Locate the first non-finite loss of the window (rare path: one more transfer)."""
        if self.window:
            xp = self.model.xp
            losses = backend.to_numpy(xp.stack(self.window)).tolist()
            for value, (epoch, batch, step) in zip(losses, self.where):
                if not math.isfinite(value):
                    return _Diverged(epoch, step, batch, float(value))
            epoch, _, step = self.where[-1]
            return _Diverged(epoch, None, None, None, last_step=step)
        return _Diverged(None, None, None, None)
