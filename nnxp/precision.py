"""Mixed-precision training: the precision policy of ``fit(precision=...)`` and the loss scaler.

``precision="float32"`` (the default) trains as nnxp always has: nothing here runs. With
``"float16"`` or ``"bfloat16"`` a step of :func:`nnxp.training._step` goes through
:meth:`Policy.loss_and_backward`:

1. :meth:`Policy.compute_weights` swaps every layer's float32 parameters (the *master weights*,
   which the optimizer updates and whose state stays float32) for copies cast to the compute
   dtype: one cast per parameter and step. Layers read ``layer.params`` as always, so no kernel
   knows about precision; the batch is cast too.
2. The forward and backward passes run in the compute dtype. The model's output is cast to
   float32 before the loss (as torch's autocast does for losses), so the loss, its softmax and
   its reductions are float32; batch normalisation accumulates its statistics in float32 (the
   ``accumulate_dtype`` keyword of its kernels) and keeps its running statistics in float32.
3. The loss gradient is multiplied by the loss scale before it is cast down (so that small
   gradients do not flush to zero in float16), and each layer's gradients come back cast to
   float32 and multiplied by ``1/scale`` in the same pass, into ``layer.grads``; the masters go
   back into ``layer.params`` before the optimizer steps.

:class:`LossScaler` follows ``torch.amp.GradScaler``: initial scale 2¹⁶, ×2 after 2,000
consecutive steps with finite gradients, ×0.5 and the optimizer step skipped on inf/NaN. It is
on by default for float16 and off for bfloat16 (whose exponent range is float32's). Skipping a
step needs the host to know whether the gradients were finite, so a step with a loss scaler reads
one flag back (as ``GradScaler.step`` does with its ``.item()``); that is the only host read per
step that nnxp allows, and only with a loss scaler (``tests/test_sync.py`` budgets it).

This module knows the model only through ``layers``, ``xp``, ``dtype``, ``loss``, ``forward``,
``backward``, ``penalty`` and ``has_penalty``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from . import backend
from .typing import Array

__all__ = ["PRECISIONS", "LossScaler", "Policy", "resolve"]

PRECISIONS = ("float32", "float16", "bfloat16")
"""The values of ``fit(precision=...)``."""


class LossScaler:
    """Dynamic loss scaling with the semantics of ``torch.amp.GradScaler``.

    Parameters
    ----------
    init_scale
        The first scale (2¹⁶).
    growth_factor, backoff_factor
        The scale is multiplied by ``growth_factor`` (2) after ``growth_interval`` (2,000)
        consecutive steps with finite gradients, and by ``backoff_factor`` (0.5) after a step
        whose gradients held an inf or NaN (that step is skipped: the optimizer does not run,
        its step count does not advance).
    growth_interval
        See above.

    Attributes
    ----------
    scale : float
        The current scale (a power of two with the defaults).
    growth_tracker : int
        Consecutive finite steps since the scale last changed.
    skipped : int
        Steps skipped so far (not part of torch's state; for reports).

    The scale and the growth tracker are saved in checkpoints and restored by
    ``fit(resume_from=...)``, so that a resumed run scales exactly as an uninterrupted one.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000) -> None:
        for name, value in (("init_scale", init_scale), ("growth_factor", growth_factor),
                            ("backoff_factor", backoff_factor)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ValueError(f"LossScaler: {name} must be a finite number > 0, got "
                                 f"{value!r}")
        if growth_factor <= 1.0:
            raise ValueError(f"LossScaler: growth_factor must be > 1, got {growth_factor!r}")
        if backoff_factor >= 1.0:
            raise ValueError(f"LossScaler: backoff_factor must be < 1, got {backoff_factor!r}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) \
                or growth_interval < 1:
            raise ValueError(f"LossScaler: growth_interval must be an integer >= 1, got "
                             f"{growth_interval!r}")
        self.scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.growth_tracker = 0
        self.skipped = 0

    def update(self, found_inf: bool) -> None:
        """After a step: back off (and count the skip) on inf/NaN, else grow on schedule.

        As ``torch._amp_update_scale_``: a grown scale that would overflow (not finite in
        float32) is not taken, and the tracker restarts either way.
        """
        if found_inf:
            self.scale *= self.backoff_factor
            self.growth_tracker = 0
            self.skipped += 1
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            grown = self.scale * self.growth_factor
            if grown < 3.4028234663852886e38:  # float32's largest finite value, as torch keeps it
                self.scale = grown
            self.growth_tracker = 0

    def state_dict(self) -> dict[str, Any]:
        """JSON numbers: the keys of ``GradScaler.state_dict`` (tracker without the underscore)."""
        return {"scale": self.scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "growth_tracker": self.growth_tracker}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a value that is not a valid option raises ValueError."""
        if not isinstance(state, dict):
            raise ValueError(f"a loss scaler state must be a dict, got {type(state).__name__}")
        try:
            fresh = LossScaler(state["scale"], state["growth_factor"], state["backoff_factor"],
                               state["growth_interval"])
            tracker = state["growth_tracker"]
        except KeyError as exc:
            raise ValueError(f"the loss scaler state lacks {exc.args[0]!r}") from None
        if isinstance(tracker, bool) or not isinstance(tracker, int) or not \
                0 <= tracker < fresh.growth_interval:
            raise ValueError(f"the loss scaler's growth_tracker must be an integer in [0, "
                             f"{fresh.growth_interval}), got {tracker!r}")
        self.scale, self.growth_factor = fresh.scale, fresh.growth_factor
        self.backoff_factor, self.growth_interval = fresh.backoff_factor, fresh.growth_interval
        self.growth_tracker = tracker

    def __repr__(self) -> str:
        return (f"LossScaler(scale={self.scale:g}, growth_tracker={self.growth_tracker}, "
                f"growth_interval={self.growth_interval})")


def check_precision(precision: Any, xp: Any, model_dtype: Any) -> Any:
    """The compute dtype of ``precision`` in namespace ``xp`` (None for float32), or a clear
    error naming the argument, the expected and the received value."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(repr(p) for p in PRECISIONS)}, "
                         f"got {precision!r}")
    if precision == "float32":
        return None
    dtype = getattr(xp, precision, None)
    if dtype is None:
        label = getattr(xp, "__name__", "this backend")
        raise ValueError(f"precision={precision!r}: the backend's namespace ({label}) has no "
                         f"{precision} dtype; expected one of the precisions it offers: "
                         f"{', '.join(repr(p) for p in available(xp))}")
    if backend.dtype_name(model_dtype) != "float32":
        raise ValueError(f"precision={precision!r} keeps float32 master weights: the model's "
                         f"dtype must be float32, got {backend.dtype_name(model_dtype)}")
    return dtype


def available(xp: Any) -> list[str]:
    """The precisions namespace ``xp`` offers (float32 always)."""
    return [p for p in PRECISIONS if p == "float32" or getattr(xp, p, None) is not None]


class Policy:
    """The mixed-precision policy of one ``fit`` call (see the module docstring)."""

    def __init__(self, name: str, dtype: Any, scaler: LossScaler | None, xp: Any) -> None:
        self.name = name
        self.dtype = dtype
        self.scaler = scaler
        self.xp = xp
        self.master = xp.float32
        self.inplace = backend.supports_inplace(xp)

    @contextlib.contextmanager
    def compute_weights(self, model: Any) -> Iterator[None]:
        """Inside: every floating-point parameter is a compute-dtype copy; on the way out the
        float32 masters are put back (also when the step fails)."""
        xp, dtype = self.xp, self.dtype
        saved: list[tuple[Any, dict[str, Array]]] = []
        for layer in model.layers:
            if layer.params:
                masters = dict(layer.params)
                saved.append((layer, masters))
                for key, p in masters.items():
                    if xp.isdtype(p.dtype, "real floating"):
                        layer.params[key] = xp.astype(p, dtype)
        try:
            yield
        finally:
            for layer, masters in saved:
                layer.params.update(masters)

    def loss_and_backward(self, model: Any, xb: Array, yb: Array,
                          wb: Array | None) -> tuple[Array, Array]:
        """Forward and backward in the compute dtype: returns the float32 0-d loss and the
        model's output cast to float32 (what the metrics see); ``layer.grads`` hold float32,
        unscaled gradients."""
        xp = self.xp
        scale = 1.0 if self.scaler is None else self.scaler.scale
        with self.compute_weights(model):
            out = model.forward(xp.astype(xb, self.dtype), training=True)
            out32 = xp.astype(out, self.master)  # the loss and its reductions in float32
            value, cache = model.loss.forward(  # weights checked once in fit
                out32, yb, xp=xp, sample_weight=wb, validate_sample_weight=False)
            if model.has_penalty:
                value = value + xp.astype(model.penalty(), self.master)
            dout = model.loss.backward(cache, xp=xp)
            if scale != 1.0:
                dout = dout * scale
            with _scaled_penalties(model, scale):
                model.backward(xp.astype(dout, self.dtype), need_input_grad=False)
        inverse = 1.0 / scale
        for layer in model.layers:
            views = getattr(layer, "grad_views", None) or {}
            for key, g in layer.grads.items():
                view = views.get(key) if self.inplace else None
                if view is not None and view.dtype == self.master and view.shape == g.shape:
                    view[...] = g  # into the optimizer's flat buffer (nnxp.optim.flat): no
                    g32 = view     # second float32 copy of the gradients beside it
                else:
                    g32 = xp.astype(g, self.master)
                if inverse != 1.0:
                    if self.inplace:
                        g32 *= inverse
                    else:
                        g32 = g32 * inverse
                layer.grads[key] = g32
        return value, out32


@contextlib.contextmanager
def _scaled_penalties(model: Any, scale: float) -> Iterator[None]:
    """Layers add their weight penalty's gradient in ``backward``; with a loss scale it must be
    scaled like the rest of the gradient, so ``l1`` and ``l2`` are multiplied by the scale (a
    power of two: exact) for the backward pass."""
    layers = [layer for layer in model.layers if getattr(layer, "has_penalty", False)]
    if scale == 1.0 or not layers:
        yield
        return
    saved = [(layer, layer.l1, layer.l2) for layer in layers]
    for layer, l1, l2 in saved:
        layer.l1, layer.l2 = l1 * scale, l2 * scale
    try:
        yield
    finally:
        for layer, l1, l2 in saved:
            layer.l1, layer.l2 = l1, l2


def resolve(precision: Any, loss_scale: Any, model: Any) -> Policy | None:
    """The policy for ``fit(precision=, loss_scale=)``: None for float32 (today's path).

    ``loss_scale``: None (the default: a :class:`LossScaler` for float16 — the model's own
    ``loss_scaler`` when a checkpoint restored one or an earlier ``fit`` made one — and none
    for bfloat16), True / False (on with the defaults / off), or a :class:`LossScaler`.
    """
    dtype = check_precision(precision, model.xp, model.dtype)
    check_loss_scale(loss_scale)
    if dtype is None:
        if loss_scale not in (None, False):
            raise ValueError(f"loss_scale={loss_scale!r} needs a low precision: "
                             "precision='float16' or 'bfloat16' (got precision='float32')")
        return None
    scaler: LossScaler | None
    if isinstance(loss_scale, LossScaler):
        scaler = loss_scale
    elif loss_scale is False or (loss_scale is None and precision == "bfloat16"):
        scaler = None
    else:
        existing = getattr(model, "loss_scaler", None)
        scaler = existing if isinstance(existing, LossScaler) else LossScaler()
    model.loss_scaler = scaler
    return Policy(precision, dtype, scaler, model.xp)


def check_loss_scale(loss_scale: Any) -> None:
    """``loss_scale`` must be None, a bool or a :class:`LossScaler`."""
    if loss_scale is not None and not isinstance(loss_scale, (bool, LossScaler)):
        raise TypeError(f"loss_scale must be None, True, False or an nnxp.precision.LossScaler, "
                        f"got {loss_scale!r}")
