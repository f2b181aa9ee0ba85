"""Every argument check of nnxp, with messages that name the argument, the expected and the
received value.

This is the one home of the rules: layers, initialisers, losses, metrics, schedules, optimizers,
the estimators and the command line call these functions instead of keeping their own. Two
families:

* data checks (:func:`check_features`, :func:`check_class_labels`, :func:`check_float_targets`,
  :func:`check_sample_weight`) run through the array namespace, on the array's own device, and
  cost one small device-to-host transfer each; they run once per ``fit``/``predict`` call, never
  per batch;
* option checks (counts, flags, real numbers and their ranges, choices, shapes) look at Python
  values only. Each returns the value in canonical form (a Python ``int`` or ``float``) or raises
  a ``TypeError`` / ``ValueError`` whose wording callers and tests rely on: the wording of each
  function is part of its contract, which is why some checks differ only in their messages.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

from . import backend
from .typing import Array


def describe(x: Any) -> str:
    """``"numpy float64 array of shape (3, 4)"`` for messages."""
    if backend.is_array(x):
        return (f"{backend.backend_name_of(x)} {backend.dtype_name(x.dtype)} array of shape "
                f"{tuple(x.shape)}")
    return type(x).__name__


def to_backend(x: Any, *, argument: str, xp: Any, device: Any, dtype: Any = None) -> Array:
    """Bring user data onto ``xp``/``device`` or raise a TypeError naming ``argument``.

    With ``dtype``, host data of real numbers or booleans (NumPy arrays, nested lists, tables)
    is cast to ``dtype`` on the host first (:func:`nnxp.backend.cast_host_data`), so a float64
    array reaches a float32 model in one transfer of float32 data; the result may still have
    another dtype (arrays of other libraries, data the caller's checks reject).
    """
    if x is None:
        raise TypeError(f"{argument} is required, got None")
    if type(x).__name__ == "MaskedArray" and hasattr(x, "mask") and hasattr(x, "filled"):
        # np.ma arrays: converting drops the mask and trains on whatever the masked slots hold
        raise TypeError(f"{argument} is a masked array, which nnxp does not support: the masked "
                        f"entries would be used as data. Drop them ({argument}[~{argument}.mask]"
                        f", with the matching rows of the other arrays) or fill them "
                        f"({argument}.filled(value)) first")
    try:
        if dtype is not None:
            x = backend.cast_host_data(x, dtype)
        return backend.asarray(x, xp=xp, device=device)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{argument} must be an array or nested list of numbers, got "
                        f"{describe(x)}: {exc}") from None


def check_features(
    X: Any, *, n_features: int | None, dtype: Any, xp: Any, device: Any, argument: str = "X"
) -> Array:
    """A finite ``(n_samples, n_features)`` float array of ``dtype`` on the backend (host data
    is cast on the host, before its one transfer)."""
    X = to_backend(X, argument=argument, xp=xp, device=device, dtype=dtype)
    if X.ndim != 2:
        hint = " (reshape a single sample with x[None, :])" if X.ndim == 1 else ""
        raise ValueError(f"{argument} must be 2-D (n_samples, n_features), got shape "
                         f"{tuple(X.shape)}{hint}")
    if X.shape[0] == 0:
        raise ValueError(f"{argument} has no samples (shape {tuple(X.shape)})")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{argument} has {X.shape[1]} features per sample but the model expects "
                         f"{n_features} (shape {tuple(X.shape)})")
    if not (xp.isdtype(X.dtype, "real floating") or xp.isdtype(X.dtype, "integral")
            or xp.isdtype(X.dtype, "bool")):
        raise TypeError(f"{argument} must be numeric, got dtype {backend.dtype_name(X.dtype)}")
    if X.dtype != dtype:
        with warnings.catch_warnings():  # an overflow to inf is reported just below
            warnings.filterwarnings("ignore", message=r".*overflow", category=RuntimeWarning)
            X = xp.astype(X, dtype)
    if not backend.isfinite_all(X, xp):
        n_bad = int(backend.to_float(xp.sum(xp.astype(~xp.isfinite(X), xp.int64))))
        raise ValueError(f"{argument} contains {n_bad} NaN or infinite value(s) (after casting "
                         f"to {backend.dtype_name(dtype)}); clean or impute them first")
    return X


def check_class_labels(
    y: Any, n_classes: int, *, xp: Any, device: Any, n_samples: int | None = None,
    argument: str = "y",
) -> Array:
    """Integer class labels of shape ``(n_samples,)`` in ``[0, n_classes)``, as int64.

    Float arrays are accepted when every value is integral (as scikit-learn does); anything
    else gets an error that says what was expected and what arrived.
    """
    y = to_backend(y, argument=argument, xp=xp, device=device)
    if y.ndim != 1:
        raise ValueError(f"{argument} must be 1-D integer class labels of shape (n_samples,), "
                         f"got shape {tuple(y.shape)}")
    if n_samples is not None and y.shape[0] != n_samples:
        raise ValueError(f"{argument} has {y.shape[0]} labels but X has {n_samples} samples")
    if xp.isdtype(y.dtype, "real floating"):
        if not backend.isfinite_all(y, xp):
            raise ValueError(f"{argument} contains NaN or inf; class labels must be integers")
        if not backend.to_float(xp.all(y == xp.round(y))):
            bad = backend.to_numpy(y)[backend.to_numpy(y != xp.round(y))][0]
            raise ValueError(f"{argument} must hold integer class labels, got the non-integer "
                             f"value {float(bad)!r} (dtype {backend.dtype_name(y.dtype)})")
    elif not (xp.isdtype(y.dtype, "integral") or xp.isdtype(y.dtype, "bool")):
        raise TypeError(f"{argument} must hold integer class labels, got dtype "
                        f"{backend.dtype_name(y.dtype)}")
    # the range is read before the cast to int64: a float label of 1e20 does not fit in int64
    # and would be reported as -9223372036854775808
    ranged = y if xp.isdtype(y.dtype, "real floating") else xp.astype(y, xp.int64)
    lo, hi = backend.to_float(xp.min(ranged)), backend.to_float(xp.max(ranged))
    if lo < 0 or hi >= n_classes:
        def show(v: float) -> str:
            return str(int(v)) if abs(v) < 2**53 else f"{v:g}"

        raise ValueError(
            f"{argument} has labels in [{show(lo)}, {show(hi)}], but the model has {n_classes} "
            f"outputs, so labels must lie in [0, {n_classes}); widen the last layer or "
            "re-encode the labels"
        )
    return xp.astype(y, xp.int64)


def check_count(value: Any, *, argument: str) -> int:
    """A positive int (a width, a count; NumPy integers too, as read back from a file),
    returned as a Python int: a ValueError naming ``argument`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{argument} must be a positive int, got {value!r}")
    return int(value)


# Real-valued hyperparameters (optimizers, schedules): NumPy scalars are accepted, since options
# read back from a checkpoint arrive as such; bools are refused (``lr=True`` is a mistake).


def check_real(value: Any, *, argument: str) -> float:
    """A real number that is not NaN, as a Python float; TypeError / ValueError otherwise."""
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_") \
            or not isinstance(value, numbers.Real):
        raise TypeError(f"{argument} must be a real number, got {value!r}")
    if value != value:
        raise ValueError(f"{argument} must be a real number, got nan")
    return float(value)


def check_nonneg(value: Any, *, argument: str) -> float:
    """A finite real number >= 0."""
    v = check_real(value, argument=argument)
    if v < 0 or math.isinf(v):
        raise ValueError(f"{argument} must be a finite number >= 0, got {value!r}")
    return v


def check_above_zero(value: Any, *, argument: str) -> float:
    """A real number > 0 (infinity allowed: a bound that never binds)."""
    v = check_real(value, argument=argument)
    if not v > 0:
        raise ValueError(f"{argument} must be > 0, got {value!r}")
    return v


def check_unit_interval(value: Any, *, argument: str, closed: bool = False) -> float:
    """A real number in ``[0, 1)`` (a decay rate), or in ``[0, 1]`` with ``closed``."""
    v = check_real(value, argument=argument)
    if not (0 <= v <= 1 if closed else 0 <= v < 1):
        bound = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{argument} must be in {bound}, got {value!r}")
    return v


def check_betas(value: Any, *, argument: str = "betas") -> tuple[float, float]:
    """A pair ``(β₁, β₂)`` of decay rates, each in ``[0, 1)``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{argument} must be a pair (beta1, beta2), got {value!r}")
    return (check_unit_interval(value[0], argument=f"{argument}[0]"),
            check_unit_interval(value[1], argument=f"{argument}[1]"))


def check_positive(value: Any, *, argument: str, integer: bool = False,
                   allow_zero: bool = False, finite: bool = False) -> Any:
    """A positive (or non-negative) Python number, returned as it is.

    Parameters
    ----------
    value
        The option; an ``int`` or ``float`` (with ``integer``, an ``int``), never a bool.
    argument
        Its name, for the messages.
    integer
        Require an ``int``.
    allow_zero
        Accept 0 (``>= 0`` rather than ``> 0``).
    finite
        Refuse infinity as well (a weight penalty, where ``inf`` would make every loss inf).

    Raises
    ------
    TypeError
        ``"{argument} must be a number, got ..."`` (``"an int"`` with ``integer``).
    ValueError
        ``"{argument} must be > 0, got ..."`` (``">= 0"`` with ``allow_zero``; NaN fails too);
        with ``finite``, ``"{argument} must be a finite number > 0, got inf"``.
    """
    ok_type = (isinstance(value, int) if integer else isinstance(value, (int, float)))
    if isinstance(value, bool) or not ok_type:
        kind = "an int" if integer else "a number"
        raise TypeError(f"{argument} must be {kind}, got {value!r}")
    bound = ">= 0" if allow_zero else "> 0"
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        raise ValueError(f"{argument} must be {bound}, got {value!r}")
    if finite and math.isinf(value):
        raise ValueError(f"{argument} must be a finite number {bound}, got {float(value)!r}")
    return value


def _is_real(value: Any) -> bool:
    """A real number other than a bool: Python or NumPy ints and floats, fractions."""
    return (not isinstance(value, bool) and type(value).__name__ not in ("bool", "bool_")
            and isinstance(value, numbers.Real))


def check_finite(value: Any, *, argument: str, what: str = "a finite number",
                 positive: bool = False) -> float:
    """A finite real number (a NumPy scalar too), returned as a Python float.

    The check of the real-valued options of initialisers (``mean``, ``std``, ``gain``) and of
    activation layers (``negative_slope``, ``alpha``, ...), which raise ValueError whatever is
    wrong.

    Parameters
    ----------
    value
        The option.
    argument
        Its name, for the messages.
    what
        What was expected, as the message says it: ``"a finite number"`` (initialisers) or
        ``"a finite real number"`` (activation layers).
    positive
        Also require ``value > 0`` (a standard deviation, an ELU's ``alpha``).

    Raises
    ------
    ValueError
        ``"{argument} must be {what}, got ..."`` for a bool, a non-number, NaN or ±inf;
        ``"{argument} must be > 0, got ..."`` when ``positive`` and ``value <= 0``.
    """
    if not _is_real(value) or not math.isfinite(value):
        raise ValueError(f"{argument} must be {what}, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{argument} must be > 0, got {value!r}")
    return float(value)


def check_interval(value: Any, *, argument: str, low: float, high: float,
                   open_interval: bool = False) -> float:
    """A real number in ``[low, high]`` (``(low, high)`` with ``open_interval``), as a float.

    The check of the losses' options (``label_smoothing`` in ``[0, 1]``, a clipping ``eps`` in
    ``(0, 0.5)``).

    Raises
    ------
    TypeError
        ``"{argument} must be a number, got ..."`` for a bool or a non-number.
    ValueError
        ``"{argument} must lie in [0, 1], got ..."`` (the bounds written with ``:g``) outside
        the interval, NaN included.
    """
    if not _is_real(value):
        raise TypeError(f"{argument} must be a number, got {value!r}")
    v = float(value)
    inside = (low < v < high) if open_interval else (low <= v <= high)
    if not inside:
        interval = f"({low:g}, {high:g})" if open_interval else f"[{low:g}, {high:g}]"
        raise ValueError(f"{argument} must lie in {interval}, got {v!r}")
    return v


def check_real_range(value: Any, *, argument: str, low: float = 0.0, high: float = math.inf,
                     low_open: bool = False, high_open: bool = False) -> float:
    """A real number between ``low`` and ``high``, each end closed or open, as a float.

    The check of the schedules' options (``gamma`` in ``(0.0, inf]``, ``factor`` in
    ``[0.0, 1.0)``), which name their class in ``argument`` (``"StepLR: gamma"``) and raise a
    ValueError whatever is wrong.

    Raises
    ------
    ValueError
        ``"{argument} must be a real number, got ..."`` for a bool, a non-number or NaN;
        ``"{argument} must be in (0.0, inf], got ..."`` (the bounds as given) outside the range.
    """
    if not _is_real(value) or value != value:
        raise ValueError(f"{argument} must be a real number, got {value!r}")
    v = float(value)
    if (v <= low if low_open else v < low) or (v >= high if high_open else v > high):
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        raise ValueError(f"{argument} must be in {lb}{low}, {high}{hb}, got {value!r}")
    return v


def check_int(value: Any, *, argument: str, low: int | None = None) -> int:
    """An int (a NumPy integer too, never a bool), at least ``low`` when given, as a Python int.

    For integers that are not widths or counts (those are :func:`check_count`'s): an axis
    (``Softmax(dim=-1)``), a patience or an epoch number (``low=0``), a step size (``low=1``).

    Raises
    ------
    ValueError
        ``"{argument} must be an int, got ..."``, or ``"{argument} must be an int >= {low},
        got ..."`` when ``low`` is given.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
            low is not None and value < low):
        bound = "" if low is None else f" >= {low}"
        raise ValueError(f"{argument} must be an int{bound}, got {value!r}")
    return int(value)


def check_choice(value: Any, choices: tuple[Any, ...], *, argument: str) -> Any:
    """One of ``choices``, returned as it is.

    Raises
    ------
    ValueError
        ``"{argument} must be 'none' or 'tanh', got ..."`` (the choices written with ``repr``,
        the last one after ``or``).
    """
    if value not in choices:
        named = [repr(c) for c in choices]
        expected = named[0] if len(named) == 1 else f"{', '.join(named[:-1])} or {named[-1]}"
        raise ValueError(f"{argument} must be {expected}, got {value!r}")
    return value


def check_dropout_rate(p: Any, *, argument: str = "p") -> float:
    """A dropout probability in ``[0, 1)``, as a float.

    ``p = 1`` is refused: it would drop every unit and the scale ``1/(1 − p)`` is infinite.

    Raises
    ------
    TypeError
        ``"{argument} must be a number in [0, 1), got float32 ..."`` (the type named) for a bool
        or a non-number.
    ValueError
        ``"{argument} must be a dropout rate in [0, 1), got ..."`` outside it, NaN included.
    """
    if not _is_real(p):
        raise TypeError(f"{argument} must be a number in [0, 1), got {type(p).__name__} {p!r}")
    if not 0.0 <= p < 1.0:  # also false for NaN
        raise ValueError(f"{argument} must be a dropout rate in [0, 1), got {p!r}")
    return float(p)


def check_shape(shape: Any, *, argument: str = "shape") -> tuple[int, ...]:
    """A shape given as a tuple or list of non-negative Python ints, returned as a tuple.

    Raises
    ------
    TypeError
        when ``shape`` is not a tuple or a list;
    ValueError
        when an entry is not a non-negative int. Both say ``"{argument} must be a tuple of
        non-negative ints such as (in_features, out_features), got ..."``.
    """
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise (ValueError if isinstance(shape, (tuple, list)) else TypeError)(
            f"{argument} must be a tuple of non-negative ints such as (in_features, "
            f"out_features), got {shape!r}")
    return tuple(shape)


def check_layer_input(x: Any, width: int, *, layer: str) -> None:
    """``x`` is a 2-D array ``(batch, width)``: the input check of a layer that cannot let its
    kernel find out (a normalisation layer would broadcast a wrong width silently).

    Costs no device work (it reads ``ndim`` and ``shape``), so a layer may run it on every
    forward pass.

    Raises
    ------
    TypeError
        ``"{layer} expects an array of shape (batch, {width}), got list; ..."`` for a non-array.
    ValueError
        ``"{layer} expects input of shape (batch, {width}), got shape ..."``.
    """
    if not hasattr(x, "ndim"):
        raise TypeError(f"{layer} expects an array of shape (batch, {width}), got "
                        f"{type(x).__name__}; convert it with nnxp.asarray")
    if x.ndim != 2 or x.shape[1] != width:
        raise ValueError(f"{layer} expects input of shape (batch, {width}), got shape "
                         f"{tuple(x.shape)}")


def check_float_targets(
    y: Any, n_outputs: int, *, xp: Any, device: Any, n_samples: int | None = None,
    dtype: Any = None, probabilities: bool = False, argument: str = "y", hint: str = "",
) -> Array:
    """Float targets of shape ``(n_samples, n_outputs)`` (regression or binary losses).

    A 1-D ``y`` of shape ``(n_samples,)`` is accepted for a 1-output model and returned as
    ``(n_samples, 1)``. Integers and booleans become floats: ``dtype`` when given, else float32;
    float targets keep their dtype unless ``dtype`` is given (host data is then cast on the
    host, before its one transfer). With ``probabilities``, every value
    must lie in ``[0, 1]``. ``hint`` is appended to the shape errors.
    """
    y = to_backend(y, argument=argument, xp=xp, device=device, dtype=dtype)
    if not (xp.isdtype(y.dtype, "real floating") or xp.isdtype(y.dtype, "integral")
            or xp.isdtype(y.dtype, "bool")):
        raise TypeError(f"{argument} must hold numbers, got dtype {backend.dtype_name(y.dtype)}")
    expected = f"(n_samples, {n_outputs})" + (" or (n_samples,)" if n_outputs == 1 else "")
    if y.ndim == 1 and n_outputs == 1:
        y = xp.reshape(y, (y.shape[0], 1))
    if y.ndim != 2 or y.shape[1] != n_outputs:
        raise ValueError(f"{argument} must have shape {expected} for a model with {n_outputs} "
                         f"output(s), got shape {tuple(y.shape)}{hint}")
    if n_samples is not None and y.shape[0] != n_samples:
        raise ValueError(f"{argument} has {y.shape[0]} rows but X has {n_samples} samples")
    if y.shape[0] == 0:
        raise ValueError(f"{argument} has no samples (shape {tuple(y.shape)})")
    if dtype is not None:
        target = backend.resolve_dtype(dtype, xp)
    else:
        target = y.dtype if xp.isdtype(y.dtype, "real floating") else xp.float32
    if y.dtype != target:
        y = xp.astype(y, target)
    if not backend.isfinite_all(y, xp):
        n_bad = int(backend.to_float(xp.sum(xp.astype(~xp.isfinite(y), xp.int64))))
        raise ValueError(f"{argument} contains {n_bad} NaN or infinite value(s); targets must "
                         "be finite")
    if probabilities:
        lo, hi = backend.to_float(xp.min(y)), backend.to_float(xp.max(y))
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{argument} must hold probabilities in [0, 1], got values in "
                             f"[{lo:g}, {hi:g}]")
    return y


def check_sample_weight(
    sample_weight: Any, n_samples: int, *, dtype: Any, xp: Any, device: Any,
    argument: str = "sample_weight",
) -> Array:
    """Finite, non-negative per-sample weights of shape ``(n_samples,)`` in ``dtype`` (host data
    is cast on the host, before its one transfer)."""
    w = to_backend(sample_weight, argument=argument, xp=xp, device=device, dtype=dtype)
    if not (xp.isdtype(w.dtype, "real floating") or xp.isdtype(w.dtype, "integral")
            or xp.isdtype(w.dtype, "bool")):
        raise TypeError(f"{argument} must hold numbers, got dtype {backend.dtype_name(w.dtype)}")
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(f"{argument} must have shape ({n_samples},), one weight per sample, "
                         f"got shape {tuple(w.shape)}")
    if w.dtype != dtype:
        w = xp.astype(w, dtype)
    if not backend.isfinite_all(w, xp):
        raise ValueError(f"{argument} contains NaN or infinite values; weights must be finite")
    lowest = backend.to_float(xp.min(w)) if n_samples else 0.0
    if lowest < 0.0:
        raise ValueError(f"{argument} must be >= 0, got a minimum of {lowest:g}")
    if n_samples and backend.to_float(xp.max(w)) == 0.0:
        raise ValueError(f"{argument} is zero for all {n_samples} samples: nothing would be "
                         "learned; give at least one sample a positive weight")
    return w


def check_flag(value: Any, *, argument: str) -> bool:
    """``True`` or ``False`` (a NumPy bool too), else a TypeError naming ``argument``.

    A string such as ``"no"`` is truthy in Python, so accepting any object would silently turn
    an option on; integers other than bools are refused for the same reason.
    """
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):
        return bool(value)
    raise TypeError(f"{argument} must be True or False, got {type(value).__name__} {value!r}")


def check_float_dtype(dtype: Any, xp: Any, *, argument: str = "dtype") -> Any:
    """The backend's real floating dtype for ``dtype``; integer, bool or complex dtypes (which
    would give integer weights or complex gradients) raise a ValueError naming ``argument``."""
    resolved = backend.resolve_dtype(dtype, xp)
    if not xp.isdtype(resolved, "real floating"):
        raise ValueError(f"{argument} must be a real floating dtype such as 'float32' or "
                         f"'float64', got {backend.dtype_name(resolved)}")
    return resolved
