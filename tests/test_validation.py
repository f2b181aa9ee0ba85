"""Every check of nnxp.validation: what it accepts (NumPy scalars where documented), what it
returns, and the exact message and exception type of each refusal.

The wording is part of each check's contract: layers, initialisers, losses, schedules, the
estimators and the command line pass these errors on to users unchanged, and their own tests
match on them.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nnxp
from nnxp import validation as v


def raises(exc: type[Exception], message: str) -> Any:
    """``pytest.raises`` matching the whole message, taken literally."""
    return pytest.raises(exc, match=f"^{re.escape(message)}$")


@pytest.fixture
def np_backend() -> Any:
    with nnxp.use_backend("numpy") as info:
        yield info


# ----------------------------------------------------------------------------------------------
# Counts, integers, flags, choices, shapes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int32(1), np.uint8(5)])
def test_check_count_accepts_positive_ints_numpy_too(value: Any) -> None:
    out = v.check_count(value, argument="n")
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value", [0, -2, 1.0, 2.5, "3", None, True, np.int64(0), np.float32(2)])
def test_check_count_refuses(value: Any) -> None:
    with raises(ValueError, f"n must be a positive int, got {value!r}"):
        v.check_count(value, argument="n")


@pytest.mark.parametrize(("value", "low"), [(-1, None), (0, None), (np.int64(-3), None), (0, 0),
                                            (5, 1), (np.int16(2), 2)])
def test_check_int_accepts_ints_at_least_low(value: Any, low: int | None) -> None:
    out = v.check_int(value, argument="dim", low=low)
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize(("value", "low", "message"), [
    (1.0, None, "dim must be an int, got 1.0"),
    (True, None, "dim must be an int, got True"),
    ("1", None, "dim must be an int, got '1'"),
    (-1, 0, "dim must be an int >= 0, got -1"),
    (0, 1, "dim must be an int >= 1, got 0"),
    (np.int64(0), 1, f"dim must be an int >= 1, got {np.int64(0)!r}"),
])
def test_check_int_refuses(value: Any, low: int | None, message: str) -> None:
    with raises(ValueError, message):
        v.check_int(value, argument="dim", low=low)


@pytest.mark.parametrize("value", [True, False, np.True_, np.False_])
def test_check_flag_accepts_bools_numpy_too(value: Any) -> None:
    out = v.check_flag(value, argument="bias")
    assert out is bool(value)


@pytest.mark.parametrize("value", [1, 0, "no", None, 1.0])
def test_check_flag_refuses(value: Any) -> None:
    with raises(TypeError, f"bias must be True or False, got {type(value).__name__} {value!r}"):
        v.check_flag(value, argument="bias")


def test_check_choice() -> None:
    assert v.check_choice("tanh", ("none", "tanh"), argument="approximate") == "tanh"
    with raises(ValueError, "approximate must be 'none' or 'tanh', got 'erf'"):
        v.check_choice("erf", ("none", "tanh"), argument="approximate")
    with raises(ValueError, "mode must be 'a', 'b' or 'c', got None"):
        v.check_choice(None, ("a", "b", "c"), argument="mode")
    with raises(ValueError, "mode must be 'a', got 'b'"):
        v.check_choice("b", ("a",), argument="mode")


@pytest.mark.parametrize("shape", [(), (3,), [2, 4], (0, 5, 1)])
def test_check_shape_accepts_tuples_and_lists_of_non_negative_ints(shape: Any) -> None:
    assert v.check_shape(shape) == tuple(shape)


@pytest.mark.parametrize(("shape", "exc"), [(3, TypeError), ("3, 4", TypeError), (None, TypeError),
                                            ((3, -1), ValueError), ((2.0, 3), ValueError),
                                            ((True, 3), ValueError)])
def test_check_shape_refuses(shape: Any, exc: type[Exception]) -> None:
    with raises(exc, "shape must be a tuple of non-negative ints such as (in_features, "
                     f"out_features), got {shape!r}"):
        v.check_shape(shape)
    with pytest.raises(exc, match=r"^size must be a tuple"):
        v.check_shape(shape, argument="size")


# ----------------------------------------------------------------------------------------------
# Real numbers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -3, 2.5, math.inf, -math.inf, np.float32(0.5),
                                   np.float64(-1e300), np.int64(4), Fraction(1, 3)])
def test_check_real_accepts_reals_numpy_too_and_infinity(value: Any) -> None:
    out = v.check_real(value, argument="lr")
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize("value", [True, np.True_, "1", None, 1j, [1.0]])
def test_check_real_refuses_non_reals_with_a_type_error(value: Any) -> None:
    with raises(TypeError, f"lr must be a real number, got {value!r}"):
        v.check_real(value, argument="lr")


@pytest.mark.parametrize("value", [math.nan, np.float32("nan")])
def test_check_real_refuses_nan(value: Any) -> None:
    with raises(ValueError, "lr must be a real number, got nan"):
        v.check_real(value, argument="lr")


def test_check_nonneg() -> None:
    assert v.check_nonneg(0, argument="weight_decay") == 0.0
    assert v.check_nonneg(np.float32(0.25), argument="weight_decay") == 0.25
    for bad in (-1e-9, math.inf):
        with raises(ValueError, f"weight_decay must be a finite number >= 0, got {bad!r}"):
            v.check_nonneg(bad, argument="weight_decay")
    with raises(TypeError, "weight_decay must be a real number, got '0'"):
        v.check_nonneg("0", argument="weight_decay")


def test_check_above_zero() -> None:
    assert v.check_above_zero(1e-12, argument="lr") == 1e-12
    assert v.check_above_zero(math.inf, argument="max_norm") == math.inf  # a bound that never binds
    assert v.check_above_zero(np.int64(2), argument="lr") == 2.0
    for bad in (0, -0.5, -math.inf):
        with raises(ValueError, f"lr must be > 0, got {bad!r}"):
            v.check_above_zero(bad, argument="lr")
    with raises(ValueError, "lr must be a real number, got nan"):
        v.check_above_zero(math.nan, argument="lr")
    with raises(TypeError, "lr must be a real number, got False"):
        v.check_above_zero(False, argument="lr")


def test_check_unit_interval() -> None:
    assert v.check_unit_interval(0, argument="momentum") == 0.0
    assert v.check_unit_interval(np.float64(0.999), argument="momentum") == 0.999
    with raises(ValueError, "momentum must be in [0, 1), got 1"):
        v.check_unit_interval(1, argument="momentum")
    assert v.check_unit_interval(1, argument="dampening", closed=True) == 1.0
    with raises(ValueError, "dampening must be in [0, 1], got 1.5"):
        v.check_unit_interval(1.5, argument="dampening", closed=True)
    with raises(ValueError, "momentum must be in [0, 1), got -0.1"):
        v.check_unit_interval(-0.1, argument="momentum")


def test_check_betas() -> None:
    assert v.check_betas((0.9, np.float32(0.5))) == (0.9, 0.5)
    assert v.check_betas([0, 0]) == (0.0, 0.0)
    for bad in ((0.9,), 0.9, (0.9, 0.99, 0.999), "ab"):
        with raises(ValueError, f"betas must be a pair (beta1, beta2), got {bad!r}"):
            v.check_betas(bad)
    with raises(ValueError, "betas[1] must be in [0, 1), got 1.0"):
        v.check_betas((0.9, 1.0))
    with raises(TypeError, "rho[0] must be a real number, got None"):
        v.check_betas((None, 0.9), argument="rho")


@pytest.mark.parametrize(("kwargs", "value", "out"), [
    ({}, 3, 3), ({}, 0.5, 0.5), ({"allow_zero": True}, 0, 0), ({"integer": True}, 4, 4),
    ({}, math.inf, math.inf), ({"finite": True}, 2.0, 2.0),
    ({"allow_zero": True, "finite": True}, 0.0, 0.0),
])
def test_check_positive_accepts(kwargs: dict[str, Any], value: Any, out: Any) -> None:
    assert v.check_positive(value, argument="eps", **kwargs) == out


@pytest.mark.parametrize(("kwargs", "value", "exc", "message"), [
    ({}, 0, ValueError, "eps must be > 0, got 0"),
    ({}, -1.5, ValueError, "eps must be > 0, got -1.5"),
    ({}, math.nan, ValueError, "eps must be > 0, got nan"),
    ({"allow_zero": True}, -1, ValueError, "eps must be >= 0, got -1"),
    ({}, "a", TypeError, "eps must be a number, got 'a'"),
    ({}, True, TypeError, "eps must be a number, got True"),
    ({"integer": True}, 2.0, TypeError, "eps must be an int, got 2.0"),
    ({"finite": True}, math.inf, ValueError, "eps must be a finite number > 0, got inf"),
    ({"allow_zero": True, "finite": True}, math.inf, ValueError,
     "eps must be a finite number >= 0, got inf"),
])
def test_check_positive_refuses(kwargs: dict[str, Any], value: Any, exc: type[Exception],
                                message: str) -> None:
    with raises(exc, message):
        v.check_positive(value, argument="eps", **kwargs)


@pytest.mark.parametrize("value", [0, -2.5, 1e300, np.float32(0.125), np.int64(-3),
                                   Fraction(1, 4)])
def test_check_finite_accepts_finite_reals_numpy_too(value: Any) -> None:
    out = v.check_finite(value, argument="mean")
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, np.float64("nan"), True, "1",
                                   None])
def test_check_finite_refuses_with_its_wording(value: Any) -> None:
    with raises(ValueError, f"mean must be a finite number, got {value!r}"):
        v.check_finite(value, argument="mean")
    with raises(ValueError, f"alpha must be a finite real number, got {value!r}"):
        v.check_finite(value, argument="alpha", what="a finite real number", positive=True)


def test_check_finite_positive() -> None:
    assert v.check_finite(0.5, argument="std", positive=True) == 0.5
    for bad in (0, 0.0, -1e-9):
        with raises(ValueError, f"std must be > 0, got {bad!r}"):
            v.check_finite(bad, argument="std", positive=True)


def test_check_interval() -> None:
    assert v.check_interval(0, argument="label_smoothing", low=0.0, high=1.0) == 0.0
    assert v.check_interval(1, argument="label_smoothing", low=0.0, high=1.0) == 1.0
    assert v.check_interval(np.float32(0.25), argument="eps", low=0.0, high=0.5,
                            open_interval=True) == 0.25
    with raises(ValueError, "label_smoothing must lie in [0, 1], got 1.5"):
        v.check_interval(1.5, argument="label_smoothing", low=0.0, high=1.0)
    with raises(ValueError, "label_smoothing must lie in [0, 1], got nan"):
        v.check_interval(math.nan, argument="label_smoothing", low=0.0, high=1.0)
    with raises(ValueError, "eps must lie in (0, 0.5), got 0.5"):
        v.check_interval(0.5, argument="eps", low=0.0, high=0.5, open_interval=True)
    with raises(ValueError, "eps must lie in (0, 0.5), got 0.0"):
        v.check_interval(0, argument="eps", low=0.0, high=0.5, open_interval=True)
    for bad in ("0.1", True, None):
        with raises(TypeError, f"eps must be a number, got {bad!r}"):
            v.check_interval(bad, argument="eps", low=0.0, high=0.5)


def test_check_real_range() -> None:
    arg = "StepLR: gamma"
    assert v.check_real_range(0, argument=arg) == 0.0
    assert v.check_real_range(math.inf, argument=arg) == math.inf
    assert v.check_real_range(np.float32(0.5), argument=arg, low=0.0, low_open=True) == 0.5
    assert v.check_real_range(0.999, argument=arg, high=1.0, high_open=True) == 0.999
    with raises(ValueError, "StepLR: gamma must be in (0.0, inf], got 0"):
        v.check_real_range(0, argument=arg, low=0.0, low_open=True)
    with raises(ValueError, "StepLR: gamma must be in [0.0, inf], got -1"):
        v.check_real_range(-1, argument=arg)
    with raises(ValueError, "StepLR: gamma must be in [0.0, 1.0), got 1.0"):
        v.check_real_range(1.0, argument=arg, high=1.0, high_open=True)
    for bad in (math.nan, "0.5", True, None):
        with raises(ValueError, f"StepLR: gamma must be a real number, got {bad!r}"):
            v.check_real_range(bad, argument=arg)


@pytest.mark.parametrize("p", [0, 0.0, 0.5, 0.999, np.float32(0.25), np.float64(0.1)])
def test_check_dropout_rate_accepts_probabilities_below_one(p: Any) -> None:
    out = v.check_dropout_rate(p)
    assert out == float(p) and type(out) is float


def test_check_dropout_rate_refuses() -> None:
    for bad in (1, 1.0, -0.1, math.nan, math.inf):
        with raises(ValueError, f"p must be a dropout rate in [0, 1), got {bad!r}"):
            v.check_dropout_rate(bad)
    for bad in ("0.5", None, True):
        with raises(TypeError, f"rate must be a number in [0, 1), got {type(bad).__name__} "
                               f"{bad!r}"):
            v.check_dropout_rate(bad, argument="rate")


# ----------------------------------------------------------------------------------------------
# Arrays
# ----------------------------------------------------------------------------------------------


def test_describe(np_backend: Any) -> None:
    x = nnxp.asarray(np.zeros((3, 4)), dtype="float64")
    assert v.describe(x) == "numpy float64 array of shape (3, 4)"
    assert v.describe([1, 2]) == "list"


def test_to_backend(np_backend: Any) -> None:
    x = v.to_backend([[1.0, 2.0]], argument="X", xp=np_backend.xp, device=np_backend.device)
    assert tuple(x.shape) == (1, 2)
    with raises(TypeError, "X is required, got None"):
        v.to_backend(None, argument="X", xp=np_backend.xp, device=np_backend.device)
    with pytest.raises(TypeError, match=r"^X must be an array or nested list of numbers, got "
                                        r"dict: "):
        v.to_backend({"a": 1}, argument="X", xp=np_backend.xp, device=np_backend.device)


def test_check_layer_input(np_backend: Any) -> None:
    v.check_layer_input(nnxp.asarray(np.zeros((2, 3))), 3, layer="LayerNorm")
    with raises(TypeError, "LayerNorm expects an array of shape (batch, 3), got list; convert it "
                           "with nnxp.asarray"):
        v.check_layer_input([[0.0, 0.0, 0.0]], 3, layer="LayerNorm")
    for shape in ((2, 4), (3,), (1, 3, 1)):
        with raises(ValueError, f"BatchNorm1d expects input of shape (batch, 3), got shape "
                                f"{shape}"):
            v.check_layer_input(nnxp.asarray(np.zeros(shape)), 3, layer="BatchNorm1d")


def test_check_float_dtype(np_backend: Any) -> None:
    xp = np_backend.xp
    assert v.check_float_dtype("float64", xp) == xp.float64
    assert v.check_float_dtype(xp.float32, xp) == xp.float32
    with raises(ValueError, "dtype must be a real floating dtype such as 'float32' or 'float64', "
                            "got int32"):
        v.check_float_dtype("int32", xp)


def test_check_features(np_backend: Any) -> None:
    kw = {"dtype": np_backend.xp.float32, "xp": np_backend.xp, "device": np_backend.device}
    X = v.check_features([[1, 2], [3, 4]], n_features=2, **kw)
    assert X.dtype == np_backend.xp.float32 and tuple(X.shape) == (2, 2)
    with raises(ValueError, "X must be 2-D (n_samples, n_features), got shape (2,) (reshape a "
                            "single sample with x[None, :])"):
        v.check_features([1.0, 2.0], n_features=2, **kw)
    with raises(ValueError, "X has 3 features per sample but the model expects 2 (shape (1, 3))"):
        v.check_features([[1.0, 2.0, 3.0]], n_features=2, **kw)
    with raises(ValueError, "X has no samples (shape (0, 2))"):
        v.check_features(np.zeros((0, 2)), n_features=2, **kw)
    with pytest.raises(ValueError, match=r"^X contains 1 NaN or infinite value\(s\)"):
        v.check_features([[1.0, np.nan]], n_features=None, **kw)


def test_check_class_labels(np_backend: Any) -> None:
    kw = {"xp": np_backend.xp, "device": np_backend.device}
    y = v.check_class_labels([0.0, 2.0, 1.0], 3, **kw)
    assert y.dtype == np_backend.xp.int64
    with raises(ValueError, "y must hold integer class labels, got the non-integer value 0.5 "
                            "(dtype float64)"):
        v.check_class_labels([0.0, 0.5], 3, **kw)
    with pytest.raises(ValueError, match=r"^y has labels in \[0, 3\], but the model has 3 "
                                         r"outputs"):
        v.check_class_labels([0, 3], 3, **kw)
    with raises(ValueError, "y has 2 labels but X has 3 samples"):
        v.check_class_labels([0, 1], 3, n_samples=3, **kw)


def test_check_float_targets(np_backend: Any) -> None:
    kw = {"xp": np_backend.xp, "device": np_backend.device}
    y = v.check_float_targets([1, 0, 1], 1, **kw)
    assert tuple(y.shape) == (3, 1) and y.dtype == np_backend.xp.float32
    with raises(ValueError, "y must hold probabilities in [0, 1], got values in [0, 2]"):
        v.check_float_targets([0.0, 2.0], 1, probabilities=True, **kw)
    with raises(ValueError, "y must have shape (n_samples, 2) for a model with 2 output(s), got "
                            "shape (3,)"):
        v.check_float_targets([0.0, 1.0, 0.0], 2, **kw)


def test_check_sample_weight(np_backend: Any) -> None:
    kw = {"dtype": np_backend.xp.float32, "xp": np_backend.xp, "device": np_backend.device}
    w = v.check_sample_weight([1, 0, 2], 3, **kw)
    assert w.dtype == np_backend.xp.float32
    with raises(ValueError, "sample_weight must be >= 0, got a minimum of -1"):
        v.check_sample_weight([1.0, -1.0], 2, **kw)
    with pytest.raises(ValueError, match=r"^sample_weight is zero for all 2 samples"):
        v.check_sample_weight([0.0, 0.0], 2, **kw)
    with raises(ValueError, "sample_weight must have shape (2,), one weight per sample, got shape "
                            "(3,)"):
        v.check_sample_weight([1.0, 1.0, 1.0], 2, **kw)


# ----------------------------------------------------------------------------------------------
# The one home: every public check is tested here; the CLI converters wrap them
# ----------------------------------------------------------------------------------------------


def test_every_public_check_has_a_test_here() -> None:
    source = Path(__file__).read_text(encoding="utf-8")
    checks = [name for name in vars(v) if name.startswith("check_") or name in ("describe",
                                                                              "to_backend")]
    untested = [name for name in checks if f"v.{name}(" not in source]
    assert not untested


def test_cli_converters_follow_the_validation_rules() -> None:
    import argparse

    from nnxp import cli

    assert cli._positive_int("12") == 12
    assert cli._positive_float("inf") == math.inf  # as check_above_zero: a bound never binding
    for convert, text, message in [
        (cli._positive_int, "0", "must be a positive integer, got 0"),
        (cli._positive_int, "x", "must be a positive integer, got 'x'"),
        (cli._positive_int, "1.5", "must be a positive integer, got '1.5'"),
        (cli._positive_float, "-1", "must be > 0, got -1"),
        (cli._positive_float, "nan", "must be > 0, got nan"),
        (cli._positive_float, "fast", "must be a number > 0, got 'fast'"),
    ]:
        with raises(argparse.ArgumentTypeError, message):
            convert(text)
