"""``Sequential``: a stack of layers with forward, backward, fit, predict and evaluate."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from . import backend
from .layers import Layer
from .losses import Loss, get_loss
from .optim import SGD, Optimizer, ParamRef
from .progress import EpochProgress
from .random import Generator
from .validation import check_features, check_positive

Array = Any


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


class History:
    """Per-epoch training record returned by :meth:`Sequential.fit`.

    ``history.history`` maps ``"loss"``, ``"accuracy"``, ... to one float per epoch;
    ``history.epoch`` lists the epoch numbers (from 1).
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __repr__(self) -> str:
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"


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

    The model works on the backend that was active when it was created; inputs from any other
    library (NumPy, CuPy, torch, nested lists) are moved there.
    """

    def __init__(self, layers: Iterable[Layer], *, seed: int | None = None) -> None:
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("layers must hold at least one layer, got an empty list")
        for i, layer in enumerate(self.layers):
            if not all(hasattr(layer, a) for a in ("params", "grads", "forward", "backward")):
                raise TypeError(f"layers[{i}] ({type(layer).__name__}) does not follow the layer "
                                "protocol: it needs params, grads, forward and backward")
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
        self.loss: Loss = get_loss("softmax_cross_entropy")

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

    def backward(self, dy: Array) -> Array:
        """Backpropagate ``dy = ∂L/∂outputs`` through every layer; fills each ``layer.grads``."""
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def loss_and_grads(self, x: Array, y: Array, loss: Loss | None = None) -> Array:
        """One forward and backward pass on a batch; returns the 0-d loss, fills the grads."""
        loss = self.loss if loss is None else loss
        value, cache = loss.forward(self.forward(x, training=True), y, xp=self.xp)
        self.backward(loss.backward(cache, xp=self.xp))
        return value

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
        loss: str | Loss = "softmax_cross_entropy",
        optimizer: Optimizer | None = None,
        epochs: int = 10,
        batch_size: int | None = 32,
        shuffle: bool = True,
        verbose: int = 1,
    ) -> History:
        """Train by mini-batch backpropagation.

        Parameters
        ----------
        X : (n_samples, n_features) array-like
        y : targets; for classification losses, integer labels of shape (n_samples,)
        loss : a name from ``nnxp.losses.LOSSES`` or a loss object
        optimizer : defaults to ``SGD(lr=0.01)``
        epochs : passes over the data
        batch_size : samples per update; ``None`` means the whole set (batch gradient descent),
            1 means stochastic gradient descent
        shuffle : reshuffle the samples every epoch (the order comes from the model's seed)
        verbose : 0 silent, 1 a progress bar per epoch

        Returns
        -------
        History
            training loss (and accuracy for classifiers) per epoch.

        Raises
        ------
        TrainingDivergedError
            when the loss becomes NaN or infinite; the message names the epoch.
        """
        check_positive(epochs, argument="epochs", integer=True)
        if batch_size is not None:
            check_positive(batch_size, argument="batch_size", integer=True)
        self.loss = get_loss(loss)
        X, y = self._prepare(X, y, self.loss)
        optimizer = SGD() if optimizer is None else optimizer
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be an nnxp.optim optimizer, got {optimizer!r}")
        optimizer.bind(self.parameters())

        xp, n = self.xp, X.shape[0]
        bs = n if batch_size is None else min(batch_size, n)
        n_batches = math.ceil(n / bs)
        history = History()
        progress = EpochProgress(epochs=epochs, n_batches=n_batches, verbose=verbose)
        try:
            for epoch in range(1, epochs + 1):
                progress.start_epoch(epoch)
                Xe, ye = X, y
                if shuffle:
                    order = self._data_rng.permutation(n, xp=xp, device=self.device)
                    Xe, ye = xp.take(X, order, axis=0), xp.take(y, order, axis=0)
                loss_sum = xp.zeros((), dtype=self.dtype, device=self.device)
                correct = xp.zeros((), dtype=xp.int64, device=self.device)
                for xb, yb in _batches(Xe, ye, bs):
                    out = self.forward(xb, training=True)
                    value, cache = self.loss.forward(out, yb, xp=xp)
                    self.backward(self.loss.backward(cache, xp=xp))
                    optimizer.step()
                    loss_sum += value * xb.shape[0]
                    if self.loss.is_classifier:
                        correct += xp.sum(xp.astype(xp.argmax(out, axis=1) == yb, xp.int64))
                    progress.advance()
                logs = {"loss": backend.to_float(loss_sum) / n}
                if self.loss.is_classifier:
                    logs["accuracy"] = backend.to_float(correct) / n
                if not math.isfinite(logs["loss"]):
                    raise TrainingDivergedError(
                        f"the training loss became {logs['loss']} in epoch {epoch}; lower the "
                        f"learning rate (optimizer={optimizer!r}) or standardise the inputs"
                    )
                history.append(epoch, logs)
                progress.end_epoch(epoch, logs)
        finally:
            progress.close()
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
        out = self._outputs(X, batch_size)
        if self.loss.is_classifier:
            return self.xp.argmax(out, axis=1)
        return out

    def evaluate(self, X: Any, y: Any, *, batch_size: int = 4096) -> dict[str, float]:
        """Mean loss (and accuracy for classifiers) on ``(X, y)``, without training."""
        n_out = self.n_outputs
        out = self._outputs(X, batch_size)
        y = self.loss.check_targets(y, n_out if n_out is not None else out.shape[1],
                                    xp=self.xp, device=self.device, n_samples=out.shape[0])
        value, _ = self.loss.forward(out, y, xp=self.xp)
        result = {"loss": backend.to_float(value)}
        if self.loss.is_classifier:
            hits = self.xp.astype(self.xp.argmax(out, axis=1) == y, self.xp.float64)
            result["accuracy"] = backend.to_float(self.xp.mean(hits))
        return result


def _batches(X: Array, y: Array, batch_size: int) -> Iterator[tuple[Array, Array]]:
    n = X.shape[0]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)  # the standard leaves out-of-bounds stops unspecified
        yield X[start:stop, ...], y[start:stop]
