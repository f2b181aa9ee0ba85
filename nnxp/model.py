"""``Sequential``: a stack of layers with forward, backward, loss and gradients, predict and
evaluate; ``fit``, ``partial_fit`` and ``train_on_batch`` run the loop of :mod:`nnxp.training`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from . import archive as _archive
from . import backend
from . import data as _data
from . import devices as _devices
from . import summary as _summary
from . import training as _training
from .layers import Layer, Softmax
from .losses import Loss, get_loss
from .metrics import Metric, get_metrics
from .optim import Optimizer, ParamRef
from .random import Generator
from .training import History, TrainingDivergedError
from .typing import Array
from .validation import check_features, check_positive

__all__ = ["History", "Sequential", "TrainingDivergedError"]

Snapshot = list[tuple[dict[str, Array], dict[str, Array]]]
"""What :meth:`Sequential.snapshot_weights` returns: per layer, copies of its parameters and
buffers."""


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
        first_at: dict[int, int] = {}  # id -> first position: linear in the number of layers
        for i, layer in enumerate(self.layers):
            if not all(hasattr(layer, a) for a in ("params", "grads", "forward", "backward")):
                raise TypeError(f"layers[{i}] ({type(layer).__name__}) does not follow the layer "
                                "protocol: it needs params, grads, forward and backward")
            if isinstance(layer, Softmax) and layer.dim not in (1, -1):
                raise ValueError(f"layers[{i}] is Softmax(dim={layer.dim}), but a model's "
                                 "activations have shape (batch, features): use dim=-1 (the "
                                 "features); any other axis mixes samples or does not exist")
            first = first_at.setdefault(id(layer), i)
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
        self.loss_scaler: Any = None  # a LossScaler, made by fit(precision="float16")
        self.metrics: list[Metric] | None = None  # resolved by fit (None: the default)
        self.epochs_trained = 0  # epochs completed over every fit/partial_fit call
        self.stop_training = False  # a callback sets it to end fit after the current epoch
        self.active_callbacks: Any = None  # the CallbackList of the running fit (checkpoints)
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

    def backward(self, dy: Array, *, need_input_grad: bool = True,
                 on_layer_grads: Callable[[Any], None] | None = None) -> Array | None:
        """Backpropagate ``dy = ∂L/∂outputs`` through every layer; fills each ``layer.grads``.

        Returns ``∂L/∂inputs``. With ``need_input_grad=False`` (what training uses) it returns
        None and stops at the first layer that has parameters: that layer is asked not to
        compute its input gradient (``layer.needs_input_grad``), and the parameter-free layers
        before it (e.g. a ``Standardize`` first layer) are not differentiated at all.

        ``on_layer_grads(layer)``, when given, is called after each layer's backward, as soon
        as its ``grads`` are final (:mod:`nnxp.distributed` starts its all-reduces there).
        """
        if on_layer_grads is not None:
            return self._backward_notifying(dy, need_input_grad, on_layer_grads)
        layers = self.layers
        if need_input_grad:
            for layer in reversed(layers):
                dy = layer.backward(dy)
            return dy
        first = len(layers)
        for i, layer in enumerate(layers):  # the first layer with parameters
            if layer.params:
                first = i
                break
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

    def _backward_notifying(self, dy: Array, need_input_grad: bool,
                            notify: Callable[[Any], None]) -> Array | None:
        """:meth:`backward` calling ``notify(layer)`` after each layer (kept apart so that the
        single-process path stays as it was)."""
        layers = self.layers
        first = 0 if need_input_grad else next(
            (i for i, layer in enumerate(layers) if layer.params), len(layers))
        for i in range(len(layers) - 1, first, -1):
            dy = layers[i].backward(dy)
            notify(layers[i])
        if first < len(layers):
            layer = layers[first]
            previous = getattr(layer, "needs_input_grad", True)
            layer.needs_input_grad = need_input_grad and previous
            try:
                dy = layer.backward(dy)
            finally:
                layer.needs_input_grad = previous
            notify(layer)
        return dy if need_input_grad else None

    def loss_and_grads(self, x: Array, y: Array, loss: Loss | None = None) -> Array:
        """One forward and backward pass on a batch; returns the 0-d loss (weight penalties
        included), fills the grads."""
        loss = self.loss if loss is None else loss
        value, cache = loss.forward(self.forward(x, training=True), y, xp=self.xp)
        self.backward(loss.backward(cache, xp=self.xp), need_input_grad=False)
        return value + self.penalty() if self.has_penalty else value

    # --- weight penalties and constraints ---------------------------------------------------

    @property
    def has_penalty(self) -> bool:
        """Whether any layer adds a weight penalty to the loss (``Dense(l1=, l2=)``)."""
        for layer in self.layers:  # a loop, not any(generator): asked on every step
            if getattr(layer, "has_penalty", False):
                return True
        return False

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

    # --- training (the loop itself is nnxp.training) ------------------------------------------

    def check_data(self, X: Any, y: Any, loss: Loss | None = None) -> tuple[Array, Array]:
        """``(X, y)`` checked against the model's widths and ``loss`` (the model's by default)
        and brought onto its backend, device and dtype (float targets in the model's dtype; host
        data is cast on the host, before its one transfer); errors name the argument."""
        loss = self.loss if loss is None else loss
        X = check_features(X, n_features=self.n_features, dtype=self.dtype, xp=self.xp,
                           device=self.device)
        n_out = self.n_outputs
        if n_out is None:
            raise ValueError("the model declares no output width (no Dense layer)")
        y = loss.check_targets(y, n_out, xp=self.xp, device=self.device, n_samples=X.shape[0],
                               dtype=self.dtype)
        return X, y

    def fit(
        self,
        X: Any,
        y: Any = None,
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
        distributed: Any = False,
        accumulate: int = 1,
        capture: bool = False,
        memory_budget: int | str | None = None,
        precision: str = "float32",
        loss_scale: Any = None,
    ) -> History:
        """Train by backpropagation: full-batch, mini-batch or stochastic gradient descent.

        Every epoch reshuffles the training samples (from the model's seed), runs one optimizer
        step per batch, evaluates the validation data, and moves every logged number to the
        host in a single transfer.

        Parameters
        ----------
        X : (n_samples, n_features) array-like, a memory-mapped ``.npy``
            (``np.load(path, mmap_mode="r")``) or an :class:`nnxp.data.Chunks` (then
            ``y=None``: the targets are in its parts); data that does not fit the device memory
            budget is streamed chunk by chunk (see :mod:`nnxp.data` and ``docs/streaming.md``)
        y : targets; for classification losses, integer labels of shape (n_samples,); may be
            a memory map beside a memory-mapped ``X``; omitted for an ``nnxp.data.Chunks``
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
        keep_finite_weights : never apply a step whose loss, gradients or replaced buffers are
            not finite (the default; no copy of the weights, no host read: see the Notes).
            ``False`` skips that gate (a few elementwise passes per step) and leaves a
            diverged model with the weights of the failing step (the error still names it)
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
        distributed : ``True`` or an :class:`nnxp.distributed.DataParallel` to train data
            parallel across the ranks of ``mpiexec -n N`` (needs the ``mpi`` extra):
            ``batch_size`` is per rank, gradients are averaged across ranks before every
            step, only rank 0 shows progress and writes checkpoints; see
            ``docs/distributed.md``
        accumulate : gradient accumulation: every optimizer step is made from ``accumulate``
            consecutive batches of ``batch_size`` samples (micro-batches), and equals one step
            on the ``accumulate``-times larger batch (to floating-point rounding), sample
            weights, weight penalties (added once) and clipping (of the summed gradient)
            included; the last step of an epoch takes the micro-batches left, weighted by their
            sizes. Batch norm normalises each micro-batch by its own statistics and updates its
            running statistics once per micro-batch; dropout draws a mask per micro-batch.
            Callbacks' ``on_batch_end``, the progress bar and ``check_finite_every`` count
            optimizer steps. Not with L-BFGS; with ``distributed``, gradients are all-reduced once
            per step; see ``docs/training.md``
        capture : run every step from static input buffers and, on a GPU backend that can
            record device work (CuPy, torch CUDA), record the step once per batch shape as a
            CUDA graph and replay it (off by default: not yet verified on a GPU); elsewhere
            the static-buffer path runs without recording and gives bit-identical results.
            SGD, RMSprop, Adadelta and Adagrad (``lr_decay=0``) steps record, with
            BatchNorm1d (not ``momentum=None``); the Adam family is refused with a
            RuntimeWarning (its bias corrections read the host step count). See
            ``docs/training.md`` for what a recorded step may contain
        memory_budget : bytes (or a string such as ``"6GiB"``) a training step may use; by
            default the budget of :func:`nnxp.set_memory_budget` / ``NNXP_MEMORY_BUDGET``.
            Before the first step, ``fit`` compares the memory plan of :meth:`summary` (at
            this ``precision``, plus the gradient sum of ``accumulate``) with the smaller of
            this budget and the device's free memory (cupy, torch CUDA) and raises
            :class:`~nnxp.training.MemoryPlanError` (a ``MemoryError``) naming both numbers
            and the largest batch size that fits. CPU backends without a budget are not
            checked. See ``docs/training.md``
        precision : ``"float32"`` (the default, unchanged), ``"float16"`` or ``"bfloat16"``:
            mixed precision — forward and backward passes in that dtype, float32 master
            weights, optimizer state, loss and batch-norm statistics (a float32 model on a
            backend that has the dtype; see :mod:`nnxp.precision` and ``docs/training.md``).
            ``predict``/``evaluate`` and validation run in the model's dtype (float32)
        loss_scale : dynamic loss scaling (``torch.amp.GradScaler``'s rules): ``None`` (on for
            float16, off for bfloat16), ``True``/``False``, or an
            :class:`nnxp.precision.LossScaler`. Its scale is saved in checkpoints. A step with
            a loss scaler reads one flag back to the host (to skip an overflowed step)

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
        Divergence policy. Every batch loss stays on the device. Every update is gated on the
        device by a 0-d flag — "this step's loss, gradients and replaced buffers (BatchNorm's
        running statistics), and those of every step since the last check point, are
        finite" — that makes the optimizer step a no-op when it is false, without a host
        read and without a copy of the weights. At each check point (the end of every epoch,
        or every ``check_finite_every`` steps) one flag — that gate, every loss and every
        parameter finite — comes to the host (at the end of an epoch inside the transfer that
        fetches the logs anyway). When it fails, the error names the epoch and step of the
        first non-finite loss or gradient, and the model holds **the weights, buffers and
        optimizer state of the step before it** (the optimizer's step counts are rewound), so
        training can continue with a smaller learning rate. The one case the gate cannot undo
        is an update that overflows from finite gradients (e.g. a learning rate near 1e38);
        the message then says so. Data-parallel ``fit`` still keeps a copy of the weights
        at every passing check point and restores it.
        """
        with self.on_device():
            return _training.fit(
                self, X, y, incremental=False, loss=loss, optimizer=optimizer, epochs=epochs,
                batch_size=batch_size, shuffle=shuffle, verbose=verbose,
                validation_split=validation_split, validation_data=validation_data,
                metrics=metrics, callbacks=callbacks, diagnostics=diagnostics,
                check_finite_every=check_finite_every, keep_finite_weights=keep_finite_weights,
                resume_from=resume_from, sample_weight=sample_weight,
                distributed=distributed, accumulate=accumulate, capture=capture,
                memory_budget=memory_budget, precision=precision, loss_scale=loss_scale)

    def partial_fit(
        self,
        X: Any,
        y: Any = None,
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
        accumulate: int = 1,
        capture: bool = False,
        precision: str = "float32",
        loss_scale: Any = None,
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
        with self.on_device():
            return _training.fit(
                self, X, y, incremental=True, loss=loss, optimizer=optimizer,
                batch_size=batch_size, shuffle=shuffle, verbose=verbose,
                validation_data=validation_data, metrics=metrics, callbacks=callbacks,
                diagnostics=diagnostics, check_finite_every=check_finite_every,
                keep_finite_weights=keep_finite_weights, sample_weight=sample_weight,
                accumulate=accumulate, capture=capture, precision=precision,
                loss_scale=loss_scale)

    def train_on_batch(self, X: Any, y: Any, *, loss: str | Loss | None = None,
                       optimizer: Optimizer | None = None, accumulate: int = 1,
                       precision: str = "float32", loss_scale: Any = None) -> float:
        """One optimizer step on the batch ``(X, y)``; returns its loss (before the update).

        ``loss`` and ``optimizer`` default to the ones in use, and the optimizer state carries
        over between calls (it is bound once). The update is gated on the device (loss,
        gradients and buffers finite) and the loss and the gate are read on the host in one
        transfer: when either is not finite the update was not applied, the weights, buffers
        and optimizer state stay as they were, and :class:`TrainingDivergedError` is raised.
        (A closure optimizer such as LBFGS steps first; its update is then undone from a copy
        of the weights.) ``precision`` and ``loss_scale`` are those of :meth:`fit`; a step
        whose gradients overflow under a loss scaler is skipped quietly (its scale backs off).

        ``accumulate=k`` computes the step's gradient from ``k`` contiguous micro-batches of
        ``(X, y)`` (sizes differing by at most one), one at a time, combined exactly as
        ``fit(accumulate=k)`` does: the same step, with less memory for activations.
        """
        with self.on_device():
            return _training.train_on_batch(self, X, y, loss=loss, optimizer=optimizer,
                                            accumulate=accumulate, precision=precision,
                                            loss_scale=loss_scale)

    # --- inference and evaluation ---------------------------------------------------------

    def _outputs(self, X: Any, batch_size: int) -> Array:
        check_positive(batch_size, argument="batch_size", integer=True)
        if _data.is_streamable(X):  # a memory map or Chunks: streamed when it does not fit
            X, _, _ = _data.prepare(self, X, targets=False, batch_size=batch_size)
            if isinstance(X, _data.Stream):
                parts = [self.forward(xb, training=False) for xb, _, _ in X.batches(batch_size)]
                return parts[0] if len(parts) == 1 else self.xp.concat(parts, axis=0)
        X = check_features(X, n_features=self.n_features, dtype=self.dtype, xp=self.xp,
                           device=self.device)
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
        with self.on_device():
            return self.loss.predict_proba(self._outputs(X, batch_size), xp=self.xp)

    def predict(self, X: Any, *, batch_size: int = 4096) -> Array:
        """Class labels (int64) for classifiers; the raw outputs for regression losses.

        ``X`` may be a memory map or an :class:`nnxp.data.Chunks`, streamed when it does not
        fit the device (the outputs, on the device, are gathered whole)."""
        with self.on_device():
            return self.loss.predict(self._outputs(X, batch_size), xp=self.xp)

    def evaluate(self, X: Any, y: Any = None, *, batch_size: int = 4096,
                 metrics: Any = None) -> dict[str, float]:
        """Mean loss (weight penalties included) and metrics on ``(X, y)``, without training.

        ``metrics`` (names or objects, see :mod:`nnxp.metrics`) defaults to the metrics of the
        last ``fit``, else accuracy for classifiers and none for regression. Computed on the
        device in chunks of ``batch_size`` samples, with one transfer to the host.
        """
        check_positive(batch_size, argument="batch_size", integer=True)
        with self.on_device():
            return self._evaluate(X, y, batch_size, metrics)

    def _evaluate(self, X: Any, y: Any, batch_size: int, metrics: Any) -> dict[str, float]:
        if _data.is_streamable(X):  # a memory map or Chunks: streamed when it does not fit
            X, y, _ = _data.prepare(self, X, y, batch_size=batch_size)
        if not isinstance(X, _data.Stream):
            X, y = self.check_data(X, y)
        if metrics is not None:
            chosen = get_metrics(metrics, is_classifier=self.loss.is_classifier, loss=self.loss)
        elif self.metrics is not None:
            chosen = self.metrics
        else:
            chosen = get_metrics(None, is_classifier=self.loss.is_classifier, loss=self.loss)
        names, arrays = self.evaluate_arrays(X, y, chosen, batch_size)
        host = backend.to_numpy(self.xp.stack(arrays))
        return {name: float(v) for name, v in zip(names, host.tolist())}

    def evaluate_arrays(self, X: Array, y: Array, metrics: list[Metric], batch_size: int,
                        prefix: str = "") -> tuple[list[str], list[Array]]:
        """Loss (penalties included) and metrics on checked arrays (:meth:`check_data`), as
        ``(names, 0-d float64 device arrays)``: no host transfer, so a caller can fetch them
        together with other numbers in one (what :meth:`evaluate` and the training loop do).
        Evaluated in chunks of ``batch_size`` samples; names get ``prefix`` (``"val_"``).
        ``X`` may be an :class:`nnxp.data.Stream` (with ``y=None``: its targets travel with it),
        evaluated chunk by chunk on the same batches."""
        xp, n = self.xp, X.shape[0]
        total: Array = None
        states: list[Any] = [None] * len(metrics)
        batches = (X.batches(batch_size) if isinstance(X, _data.Stream) else
                   ((X[i:min(i + batch_size, n), ...], y[i:min(i + batch_size, n), ...], None)
                    for i in range(0, n, batch_size)))
        for xb, yb, _ in batches:
            out = self.forward(xb, training=False)
            value, _ = self.loss.forward(out, yb, xp=xp)
            part = xp.astype(value, xp.float64) * xb.shape[0]
            total = part if total is None else total + part
            for i, metric in enumerate(metrics):
                states[i] = metric.update(states[i], out, yb, xp=xp)
        loss = total / n
        if self.has_penalty:
            loss = loss + xp.astype(self.penalty(), xp.float64)
        names = [prefix + "loss"] + [prefix + m.name for m in metrics]
        values = [loss] + [m.result(s, xp=xp) for m, s in zip(metrics, states)]
        return names, values

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
        with self.on_device():
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
        with self.on_device():
            for layer, (params, buffers) in zip(self.layers, snapshot):
                for k, v in params.items():
                    layer.params[k] = xp.asarray(v, copy=True)
                for k, v in buffers.items():
                    layer.buffers[k] = xp.asarray(v, copy=True)

    # --- persistence, devices, summary (nnxp.archive, nnxp.devices, nnxp.summary) -------

    def on_device(self) -> Any:
        """A context in which array work runs on the model's device.

        ``fit``, ``partial_fit``, ``train_on_batch``, ``predict``, ``predict_proba``,
        ``evaluate``, the weight snapshots and ``to`` enter it themselves. It matters on CuPy
        with a device other than the current GPU (``set_backend("cupy", device=1)``), where
        every kernel runs on the current GPU: wrap raw ``model.forward`` / ``backward`` /
        ``optimizer.step`` calls in ``with model.on_device():``. A no-op on other backends.
        See :func:`nnxp.backend.device_scope`.
        """
        return backend.device_scope(self.xp, self.device)

    @property
    def data_rng(self) -> Generator:
        """The host generator that draws each epoch's shuffling order.

        Spawned from ``seed`` at construction; checkpoints store its ``state`` and resuming
        sets it back, so a resumed run shuffles as the uninterrupted one would have.
        """
        return self._data_rng

    def save(self, path: Any, *, include_optimizer: bool = True, overwrite: bool = True) -> None:
        """Write the model (and, by default, its optimizer state and counters) to ``path``.

        An NPZ archive with a JSON record, read back by :func:`nnxp.load`; written atomically.
        See :func:`nnxp.archive.save` and ``docs/persistence.md``.
        """
        _archive.save(self, path, include_optimizer=include_optimizer, overwrite=overwrite)

    def to(self, backend: str | Any, device: Any = None) -> Sequential:
        """Move the parameters, buffers and optimizer state to another backend/device, in place.

        ``model.to("torch", "cuda")``, ``model.to("array_api_strict:device1")``; returns the
        model. See :func:`nnxp.devices.move`.
        """
        return _devices.move(self, backend, device)

    def summary(self, batch_size: int = 32, *, precision: str | None = None,
                optimizer: Any = None, print_summary: bool = True) -> str:
        """The layers, their output shapes and parameter counts, and the memory plan of a
        training step with ``batch_size`` samples: per layer the bytes of parameters,
        gradients, optimizer state and cached activations, then the totals.

        ``precision`` (``"float32"``, ``"float16"``, ``"bfloat16"``) plans for mixed precision;
        ``optimizer`` plans for that optimizer (by default the model's, or ``fit``'s default
        SGD). Printed unless ``print_summary=False``, and returned as a string. The numbers:
        :func:`nnxp.summary.memory_plan`."""
        text = _summary.summary(self, batch_size, precision=precision, optimizer=optimizer)
        if print_summary:
            print(text)
        return text
