"""``nnxp.gradcheck``: compare hand-written gradients with central differences in float64.

Three targets, one function:

* a kernel pair ``(forward, backward)`` and its inputs — ``forward(*inputs)`` returns ``y`` or
  ``(y, cache)``; ``backward(dy, cache)`` returns the gradient of every input (a tuple, or one
  array for a single input). When ``forward`` returns only ``y``, ``cache`` is ``y`` itself;
* a layer and an input batch — the gradient of ``x`` and of every ``layer.params`` entry;
* a model, a batch and its targets — the gradient of the model's loss with respect to every
  parameter of every layer.

A non-scalar output ``y`` is reduced to the scalar ``L = Σ y · dy`` with a fixed random ``dy``,
so that ``backward(dy)`` is exactly ``∂L/∂(inputs)``. Every float array is cast to float64 on its
own backend (parameters are swapped for float64 copies and restored afterwards) and each entry
``θ_i`` gets ``(L(θ_i + h) − L(θ_i − h)) / 2h``.

The error of an entry is ``|analytic − numeric| / max(|analytic|, |numeric|, floor)``: relative
where the gradient is large, absolute (scaled by ``1/floor``) where it is near zero, so that
float64 round-off on a zero gradient does not read as a failure.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

from . import backend
from .random import Generator
from .typing import Array
from .validation import check_features, check_flag, check_positive, describe, to_backend


class GradcheckError(AssertionError):
    """A gradient differs from its finite-difference estimate by more than the tolerance."""


class GradcheckResult(NamedTuple):
    """Outcome of :func:`gradcheck`."""

    max_rel_error: float  # the largest error over every checked entry
    errors: dict[str, float]  # the largest error per input / parameter
    passed: bool  # max_rel_error <= tol
    tol: float
    n_checked: int  # entries compared


def gradcheck(
    target: Any,
    *inputs: Any,
    y: Any = None,
    loss: Any = None,
    eps: float = 1e-6,
    tol: float = 1e-5,
    floor: float = 1e-3,
    max_entries: int | None = None,
    seed: int = 0,
    raise_on_failure: bool = False,
) -> GradcheckResult:
    """Check analytic gradients against central differences in float64 on any backend.

    Parameters
    ----------
    target
        ``(forward, backward)`` callables, a layer, or a ``Sequential`` model.
    *inputs
        The kernel's inputs, or the input batch of a layer or model. Integer inputs (labels)
        are passed through unchanged and not differentiated.
    y
        Targets, for a model only.
    loss
        Loss for a model (name or object); by default the model's current loss.
    eps
        Finite-difference step ``h``.
    tol
        Largest acceptable error; ``passed`` is ``max_rel_error <= tol``.
    floor
        Denominator floor of the relative error (see the module docstring).
    max_entries
        Check at most this many randomly chosen entries per array (all when None).
    seed
        Seed for ``dy`` and for the sampled entries.
    raise_on_failure
        Raise :class:`GradcheckError` (listing the worst arrays) instead of returning a failed
        result.

    Returns
    -------
    GradcheckResult
    """
    check_positive(eps, argument="eps")
    check_positive(tol, argument="tol", allow_zero=True)
    check_positive(floor, argument="floor")
    if max_entries is not None:
        check_positive(max_entries, argument="max_entries", integer=True)
    check_flag(raise_on_failure, argument="raise_on_failure")
    for i, x in enumerate(inputs):  # NaN would read as a failed check, not as bad input
        if _is_float(x) and not backend.isfinite_all(x, backend.namespace_of(x)):
            raise ValueError(f"inputs[{i}] ({describe(x)}) contains NaN or infinite values; "
                             "finite differences need finite inputs")
    rng = Generator(seed)
    if isinstance(target, tuple) and len(target) == 2 and all(map(callable, target)):
        checks = _kernel_checks(target, inputs, rng)
    elif hasattr(target, "layers") and hasattr(target, "loss_and_grads"):
        if len(inputs) != 1 or y is None:
            raise TypeError("gradcheck(model, X, y=targets) takes one input batch and y=")
        return _with_float64_params(target.layers, lambda: _finish(
            _model_checks(target, inputs[0], y, loss), eps, tol, floor, max_entries, rng,
            raise_on_failure))
    elif hasattr(target, "params") and hasattr(target, "backward"):
        if len(inputs) != 1:
            raise TypeError("gradcheck(layer, x) takes exactly one input batch")
        return _with_float64_params([target], lambda: _finish(
            _layer_checks(target, inputs[0], rng), eps, tol, floor, max_entries, rng,
            raise_on_failure))
    else:
        raise TypeError("gradcheck target must be a (forward, backward) pair of callables, a "
                        f"layer or a Sequential model, got {type(target).__name__}")
    return _finish(checks, eps, tol, floor, max_entries, rng, raise_on_failure)


# A check: a name, the float64 array, the analytic gradient, and a setter that installs a
# perturbed copy and returns the loss as a float.
class _Check(NamedTuple):
    name: str
    value: Array
    grad: Array
    loss_at: Callable[[Array], float]


def _to64(x: Any) -> Any:
    if not backend.is_array(x):
        return x
    xp = backend.namespace_of(x)
    return xp.astype(x, xp.float64) if xp.isdtype(x.dtype, "real floating") else x


def _is_float(x: Any) -> bool:
    return backend.is_array(x) and backend.namespace_of(x).isdtype(x.dtype, "real floating")


def _scalarise(out: Array, rng: Generator) -> tuple[Array, Callable[[Array], float]]:
    """``(dy, L)`` with ``L(y) = Σ y·dy``; a 0-d output is its own scalar (dy = 1)."""
    xp = backend.namespace_of(out)
    if out.ndim == 0:
        return xp.ones((), dtype=out.dtype, device=out.device), backend.to_float
    dy = rng.normal(tuple(out.shape), dtype="float64", xp=xp, device=out.device)
    return dy, lambda o: backend.to_float(xp.sum(o * dy))


def _kernel_checks(pair: tuple[Callable, Callable], inputs: tuple, rng: Generator) -> list[_Check]:
    forward, backward_fn = pair
    args = [_to64(a) for a in inputs]

    def run(a: list) -> tuple[Array, Any]:
        res = forward(*a)
        return (res[0], res[1]) if isinstance(res, tuple) else (res, res)

    out, cache = run(args)
    dy, reduce = _scalarise(out, rng)
    grads = backward_fn(dy, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    float_idx = [i for i, a in enumerate(args) if _is_float(a)]
    if len(grads) < len(float_idx):
        raise ValueError(f"backward returned {len(grads)} gradient(s) for {len(float_idx)} float "
                         "input(s); return one per input, in order")
    checks = []
    for i, g in zip(float_idx, grads):
        if g is None:
            continue

        def loss_at(v: Array, i: int = i) -> float:
            return reduce(run(args[:i] + [v] + args[i + 1:])[0])

        checks.append(_Check(f"input[{i}]", args[i], g, loss_at))
    return checks


def _param_checks(layers: list, loss_fn: Callable[[], float], prefix: Callable[[int], str]
                  ) -> list[_Check]:
    checks = []
    for li, layer in enumerate(layers):
        for key, value in layer.params.items():

            def loss_at(v: Array, layer: Any = layer, key: str = key) -> float:
                old = layer.params[key]
                layer.params[key] = v
                try:
                    return loss_fn()
                finally:
                    layer.params[key] = old

            checks.append(_Check(f"{prefix(li)}{key}", value, layer.grads[key], loss_at))
    return checks


def _layer_checks(layer: Any, x: Any, rng: Generator) -> list[_Check]:
    if hasattr(layer, "xp"):  # a nested list or another library's array: onto the layer's
        x = to_backend(x, argument="x", xp=layer.xp, device=layer.device)  # backend, as models do
    x = _to64(x)
    out = layer.forward(x, training=True)
    dy, reduce = _scalarise(out, rng)
    dx = layer.backward(dy)

    def objective(v: Array) -> float:
        # A weight penalty (Dense(l1=, l2=)) is part of the loss whose gradient backward fills.
        value = reduce(layer.forward(v, training=True))
        if getattr(layer, "has_penalty", False):
            value += backend.to_float(layer.penalty())
        return value

    checks = [_Check("x", x, dx, objective)]
    checks += _param_checks([layer], lambda: objective(x), lambda _: "")
    return checks


def _model_checks(model: Any, X: Any, y: Any, loss: Any) -> list[_Check]:
    from .losses import get_loss  # noqa: PLC0415 - gradcheck sits below the model in the graph

    loss_obj = model.loss if loss is None else get_loss(loss)
    xp = model.xp
    X = check_features(X, n_features=model.n_features, dtype=xp.float64, xp=xp,
                       device=model.device)
    targets = loss_obj.check_targets(y, model.n_outputs, xp=xp, device=model.device,
                                     n_samples=X.shape[0])
    targets = _to64(targets)
    model.loss_and_grads(X, targets, loss_obj)

    def loss_fn() -> float:
        value, _ = loss_obj.forward(model.forward(X, training=True), targets, xp=xp)
        if hasattr(model, "penalty"):
            value = value + model.penalty()
        return backend.to_float(value)

    return _param_checks(model.layers, loss_fn, lambda i: f"layers[{i}].")


def _with_float64_params(layers: list, body: Callable[[], GradcheckResult]) -> GradcheckResult:
    saved = [(dict(layer.params), dict(layer.buffers), dict(layer.grads)) for layer in layers]
    try:
        for layer in layers:
            layer.params.update({k: _to64(v) for k, v in layer.params.items()})
            layer.buffers.update({k: _to64(v) for k, v in layer.buffers.items()})
        return body()
    finally:
        for layer, (params, buffers, grads) in zip(layers, saved):
            layer.params.clear()
            layer.params.update(params)
            layer.buffers.clear()
            layer.buffers.update(buffers)
            layer.grads.clear()
            layer.grads.update(grads)


def _finish(checks: list[_Check], eps: float, tol: float, floor: float, max_entries: int | None,
            rng: Generator, raise_on_failure: bool) -> GradcheckResult:
    errors: dict[str, float] = {}
    n_checked = 0
    for check in checks:
        xp = backend.namespace_of(check.value)
        if tuple(check.grad.shape) != tuple(check.value.shape):
            raise ValueError(f"gradient of {check.name} has shape {tuple(check.grad.shape)}, "
                             f"expected {tuple(check.value.shape)}")
        analytic = backend.to_numpy(check.grad)
        indices = list(itertools.product(*(range(d) for d in check.value.shape)))
        if max_entries is not None and len(indices) > max_entries:
            pick = rng.host_permutation(len(indices))[:max_entries]
            indices = [indices[int(j)] for j in pick]
        worst = 0.0
        for idx in indices:
            numeric = (check.loss_at(_shifted(check.value, idx, eps, xp))
                       - check.loss_at(_shifted(check.value, idx, -eps, xp))) / (2 * eps)
            a = float(analytic[idx])
            err = abs(a - numeric) / max(abs(a), abs(numeric), floor)
            worst = max(worst, err if math.isfinite(err) else math.inf)
        errors[check.name] = worst
        n_checked += len(indices)
    max_err = max(errors.values(), default=0.0)
    result = GradcheckResult(max_err, errors, max_err <= tol, tol, n_checked)
    if raise_on_failure and not result.passed:
        worst_items = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
        listing = ", ".join(f"{k}: {v:.2e}" for k, v in worst_items)
        raise GradcheckError(f"gradient check failed: largest relative error {max_err:.3e} > "
                             f"tol {tol:.1e} ({listing})")
    return result


def _shifted(x: Array, idx: tuple[int, ...], h: float, xp: Any) -> Array:
    y = xp.asarray(x, copy=True)
    y[idx] = y[idx] + h
    return y
