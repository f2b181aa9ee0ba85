"""Activations: every entry of ``ACTIVATIONS`` checked three ways on every available backend.

The contract tests are driven by the registry, so a new entry is covered as soon as it is
registered — and fails until it has a NumPy reference and a torch counterpart below. Maxout (an
affine layer, not in the registry), erf and the Dense ``activation=`` argument have tests of
their own.
"""

from __future__ import annotations

import inspect
import math
import warnings
from functools import partial
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from reference import activations as ref

import nnxp
from nnxp.kernels import activations as K
from nnxp.layers import (
    ACTIVATIONS,
    ELU,
    GELU,
    Dense,
    Maxout,
    PReLU,
    RReLU,
    Sigmoid,
    Softmax,
    Softplus,
    get_activation,
)
from nnxp.random import BackendGenerator

DTYPES = ["float32", "float64"]
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-10, atol=1e-12)}
SEED = 7
KINKS = (-0.5, 0.0, 0.5)  # every non-differentiable point of the registered activations
HYPOTHESIS = settings(max_examples=25, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


def build(name: str, dtype: str = "float32", **kwargs: Any) -> Any:
    """A layer from the registry, in ``dtype`` if it has parameters, seeded if it is random."""
    factory = ACTIVATIONS[name]
    accepted = inspect.signature(factory).parameters
    if "dtype" in accepted:
        kwargs.setdefault("dtype", dtype)
    if "seed" in accepted:
        kwargs.setdefault("seed", SEED)
    layer = factory(**kwargs)
    layer.test_dtype = dtype  # what rrelu_slopes draws in
    return layer


def smooth_sample(rng: np.random.Generator, shape: tuple[int, ...] = (6, 5)) -> np.ndarray:
    """Uniform on [−3, 3], every entry at least 0.05 away from a kink."""
    x = rng.uniform(-3.0, 3.0, size=shape)
    for k in KINKS:
        near = np.abs(x - k) < 0.05
        x[near] = k + np.where(x[near] >= k, 0.1, -0.1)
    return x


def rrelu_slopes(layer: RReLU, shape: tuple[int, ...]) -> np.ndarray:
    """The slopes of a fresh ``RReLU(seed=SEED)``'s first training forward: the documented
    device draw, ``lower + (upper − lower) u`` with ``u`` the first uniforms of a
    ``BackendGenerator`` seeded with the layer's seed, in the dtype of the input (``build``
    records it)."""
    u = BackendGenerator(SEED, layer.xp, layer.device).uniform(shape, layer.test_dtype)
    return layer.lower + (layer.upper - layer.lower) * nnxp.to_numpy(u).astype(np.float64)


def _alpha(layer: Any) -> np.ndarray:
    return nnxp.to_numpy(layer.params["alpha"]).astype(np.float64)


# name -> (forward reference (x, layer), gradient reference (x, dy, layer)), for a fresh layer
# in training mode
REFERENCES: dict[str, tuple[Any, Any]] = {
    "identity": (lambda x, _: ref.identity(x), lambda x, dy, _: ref.identity_grad(x, dy)),
    "step": (lambda x, _: ref.step(x), lambda x, dy, _: ref.zero_grad(x, dy)),
    "sign": (lambda x, _: ref.sign(x), lambda x, dy, _: ref.zero_grad(x, dy)),
    "piecewise_linear": (lambda x, _: ref.piecewise_linear(x),
                         lambda x, dy, _: ref.piecewise_linear_grad(x, dy)),
    "sigmoid": (lambda x, _: ref.sigmoid(x), lambda x, dy, _: ref.sigmoid_grad(x, dy)),
    "tanh": (lambda x, _: ref.tanh(x), lambda x, dy, _: ref.tanh_grad(x, dy)),
    "relu": (lambda x, _: ref.relu(x), lambda x, dy, _: ref.relu_grad(x, dy)),
    "leaky_relu": (lambda x, la: ref.leaky_relu(x, la.negative_slope),
                   lambda x, dy, la: ref.leaky_relu_grad(x, dy, la.negative_slope)),
    "prelu": (lambda x, la: ref.leaky_relu(x, _alpha(la)),
              lambda x, dy, la: ref.leaky_relu_grad(x, dy, _alpha(la))),
    "rrelu": (lambda x, la: ref.leaky_relu(x, rrelu_slopes(la, x.shape)),
              lambda x, dy, la: ref.leaky_relu_grad(x, dy, rrelu_slopes(la, x.shape))),
    "elu": (lambda x, la: ref.elu(x, la.alpha), lambda x, dy, la: ref.elu_grad(x, dy, la.alpha)),
    "selu": (lambda x, _: ref.selu(x), lambda x, dy, _: ref.selu_grad(x, dy)),
    "softplus": (lambda x, la: ref.softplus(x, la.beta),
                 lambda x, dy, la: ref.softplus_grad(x, dy, la.beta)),
    "gelu": (lambda x, _: ref.gelu_exact(x), lambda x, dy, _: ref.gelu_exact_grad(x, dy)),
    "gelu_exact": (lambda x, _: ref.gelu_exact(x), lambda x, dy, _: ref.gelu_exact_grad(x, dy)),
    "gelu_tanh": (lambda x, _: ref.gelu_tanh(x), lambda x, dy, _: ref.gelu_tanh_grad(x, dy)),
    "silu": (lambda x, _: ref.silu(x), lambda x, dy, _: ref.silu_grad(x, dy)),
    "swish": (lambda x, _: ref.silu(x), lambda x, dy, _: ref.silu_grad(x, dy)),
    "softmax": (lambda x, _: ref.softmax(x), lambda x, dy, _: ref.softmax_grad(x, dy)),
}
REFERENCES["linear"] = REFERENCES["identity"]


def _torch_counterparts(torch: Any) -> dict[str, tuple[Any, bool, bool]]:
    """name -> (torch function of (tensor, layer), compare gradients?, our layer in training?).

    RReLU is compared in evaluation mode (torch's training slopes are its own random draws); the
    Heaviside step has no autograd formula in torch, so only its values are compared.
    """
    F = torch.nn.functional

    def prelu(t: Any, layer: Any) -> Any:
        return F.prelu(t, torch.tensor(_alpha(layer)))

    return {
        "identity": (lambda t, _: torch.nn.Identity()(t), True, True),
        "linear": (lambda t, _: torch.nn.Identity()(t), True, True),
        "step": (lambda t, _: torch.heaviside(t, torch.tensor(0.5, dtype=t.dtype)), False, True),
        "sign": (lambda t, _: torch.sign(t), True, True),
        "piecewise_linear": (lambda t, _: F.hardtanh(t, -0.5, 0.5) + 0.5, True, True),
        "sigmoid": (lambda t, _: torch.sigmoid(t), True, True),
        "tanh": (lambda t, _: torch.tanh(t), True, True),
        "relu": (lambda t, _: F.relu(t), True, True),
        "leaky_relu": (lambda t, la: F.leaky_relu(t, la.negative_slope), True, True),
        "prelu": (prelu, True, True),
        "rrelu": (lambda t, la: F.rrelu(t, la.lower, la.upper, training=False), False, False),
        "elu": (lambda t, la: F.elu(t, la.alpha), True, True),
        "selu": (lambda t, _: F.selu(t), True, True),
        "softplus": (lambda t, la: F.softplus(t, beta=la.beta), True, True),
        "gelu": (lambda t, _: F.gelu(t, approximate="none"), True, True),
        "gelu_exact": (lambda t, _: F.gelu(t, approximate="none"), True, True),
        "gelu_tanh": (lambda t, _: F.gelu(t, approximate="tanh"), True, True),
        "silu": (lambda t, _: F.silu(t), True, True),
        "swish": (lambda t, _: F.silu(t), True, True),
        "softmax": (lambda t, _: F.softmax(t, dim=-1), True, True),
    }


NAMES = sorted(ACTIVATIONS)


def _same_device(bk: Any, arr: Any) -> bool:
    return str(nnxp.backend.device_of(arr)) == str(bk.device)


class _Reseeded:
    """A random layer whose generator restarts from the same seed before every forward pass, so
    that the finite differences of ``gradcheck`` see the same slopes as the analytic pass."""

    def __init__(self, layer: Any) -> None:
        self.layer, self.params, self.grads, self.buffers = (layer, layer.params, layer.grads,
                                                             layer.buffers)

    def forward(self, x: Any, *, training: bool = True) -> Any:
        self.layer.generator = BackendGenerator(SEED, self.layer.xp, self.layer.device)
        return self.layer.forward(x, training=training)

    def backward(self, dy: Any) -> Any:
        return self.layer.backward(dy)


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------


def test_registry_lists_every_activation_of_the_issue() -> None:
    wanted = {"identity", "linear", "step", "sign", "piecewise_linear", "sigmoid", "tanh", "relu",
              "leaky_relu", "prelu", "rrelu", "elu", "selu", "softplus", "gelu", "gelu_exact",
              "gelu_tanh", "silu", "swish", "softmax"}
    assert wanted <= set(ACTIVATIONS)
    assert set(ACTIVATIONS) <= set(REFERENCES), "every entry needs a NumPy reference here"


def test_registry_entries_have_torch_counterparts() -> None:
    torch = pytest.importorskip("torch")
    assert set(ACTIVATIONS) <= set(_torch_counterparts(torch))


def test_gelu_defaults_follow_torch() -> None:
    assert GELU().approximate == "none"
    assert build("gelu").approximate == "none" and build("gelu_tanh").approximate == "tanh"


def test_get_activation_resolves_names_instances_and_none() -> None:
    assert get_activation(None) is None
    layer = ELU(alpha=0.5)
    assert get_activation(layer) is layer
    assert type(get_activation("Leaky-ReLU")).__name__ == "LeakyReLU"
    assert type(get_activation("swish")).__name__ == "SiLU"
    with pytest.raises(ValueError, match=r"activation='relux'.*valid names are.*leaky_relu"):
        get_activation("relux")
    with pytest.raises(TypeError, match="activation must be a name"):
        get_activation(3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# Contract tests over the registry
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_contract_dtype_device_and_reference(bk, rng, name, dtype) -> None:
    layer = build(name, dtype)
    x, dy = smooth_sample(rng), rng.standard_normal((6, 5))
    xa = bk.asarray(x, dtype)
    y = layer.forward(xa, training=True)
    dx = layer.backward(bk.asarray(dy, dtype))
    for out in (y, dx):
        assert out.dtype == xa.dtype
        assert _same_device(bk, out)
        assert tuple(out.shape) == x.shape
        assert np.all(np.isfinite(bk.to_numpy(out)))
    forward_ref, grad_ref = REFERENCES[name]
    np.testing.assert_allclose(bk.to_numpy(y), forward_ref(x, layer), **TOL[dtype])
    np.testing.assert_allclose(bk.to_numpy(dx), grad_ref(x, dy, layer), **TOL[dtype])


@pytest.mark.parametrize("name", NAMES)
def test_contract_gradcheck(bk, rng, name) -> None:
    layer = build(name, "float64")
    target = _Reseeded(layer) if hasattr(layer, "generator") else layer
    result = nnxp.gradcheck(target, bk.asarray(smooth_sample(rng), "float64"),
                            raise_on_failure=True)
    assert result.passed and result.n_checked >= 30


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_contract_extreme_inputs_stay_finite_without_warnings(bk, name, dtype) -> None:
    layer = build(name, dtype)
    x = bk.asarray([[-1e4, -60.0, -1.0, 0.0, 1.0, 60.0, 1e4]], dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        y = layer.forward(x, training=True)
        dx = layer.backward(bk.asarray(np.ones((1, 7)), dtype))
    assert np.all(np.isfinite(bk.to_numpy(y))) and np.all(np.isfinite(bk.to_numpy(dx)))


@pytest.mark.parametrize("name", NAMES)
def test_contract_against_torch(bk, rng, name) -> None:
    torch = pytest.importorskip("torch")
    fn, compare_grad, training = _torch_counterparts(torch)[name]
    layer = build(name, "float64")
    x, dy = smooth_sample(rng), rng.standard_normal((6, 5))
    y = layer.forward(bk.asarray(x, "float64"), training=training)
    tx = torch.tensor(x, requires_grad=True)
    ty = fn(tx, layer)
    np.testing.assert_allclose(bk.to_numpy(y), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    if compare_grad:
        ty.backward(torch.tensor(dy))
        dx = layer.backward(bk.asarray(dy, "float64"))
        np.testing.assert_allclose(bk.to_numpy(dx), tx.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", [*NAMES, "maxout"])
def test_backward_without_training_forward_raises(bk, name) -> None:
    layer = Maxout(5, 3, seed=0) if name == "maxout" else build(name)
    with pytest.raises(nnxp.BackwardError, match="backward"):
        layer.backward(bk.asarray(np.ones((2, 3 if name == "maxout" else 5)), "float32"))
    x = bk.asarray(np.ones((2, 5)), "float32")
    y = layer.forward(x, training=False)
    with pytest.raises(nnxp.BackwardError):
        layer.backward(y)
    layer.forward(x, training=True)
    layer.backward(y)
    with pytest.raises(nnxp.BackwardError):  # each backward consumes its forward
        layer.backward(y)


@pytest.mark.parametrize("name", ["step", "sign"])
def test_step_and_sign_backward_returns_zeros(bk, rng, name) -> None:
    layer = build(name)
    layer.forward(bk.asarray(rng.standard_normal((3, 4)), "float32"), training=True)
    dx = layer.backward(bk.asarray(rng.standard_normal((3, 4)), "float32"))
    assert not np.any(bk.to_numpy(dx))


def test_step_is_one_half_at_zero_and_sign_is_zero(bk) -> None:
    x = bk.asarray([-2.0, 0.0, 3.0], "float32")
    np.testing.assert_array_equal(bk.to_numpy(build("step")(x)), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(bk.to_numpy(build("sign")(x)), [-1.0, 0.0, 1.0])


def test_piecewise_linear_values(bk) -> None:
    x = bk.asarray([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 2.0], "float64")
    np.testing.assert_allclose(bk.to_numpy(build("piecewise_linear")(x)),
                               [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------

_rows = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
                   elements=st.floats(-1e4, 1e4, allow_nan=False))


@HYPOTHESIS
@given(x=_rows, dtype=st.sampled_from(DTYPES))
def test_softmax_rows_sum_to_one(bk, x, dtype) -> None:
    s = bk.to_numpy(Softmax()(bk.asarray(x, dtype)))
    assert np.all(s >= 0) and np.all(np.isfinite(s))
    np.testing.assert_allclose(s.sum(axis=-1), 1.0, rtol=0, atol=1e-5 if dtype == "float32"
                               else 1e-12)


@HYPOTHESIS
@given(x=_rows, shift=st.floats(-100.0, 100.0), data=st.data())
def test_softmax_ignores_a_row_shift(bk, x, shift, data) -> None:
    shifts = data.draw(hnp.arrays(np.float64, (x.shape[0], 1), elements=st.floats(-100, 100)))
    layer = Softmax()
    a = bk.to_numpy(layer(bk.asarray(x, "float64")))
    b = bk.to_numpy(layer(bk.asarray(x + shifts + shift, "float64")))
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@HYPOTHESIS
@given(t=st.floats(800.0, 1e4), dtype=st.sampled_from(DTYPES))
def test_sigmoid_saturates_exactly_without_warnings(bk, t, dtype) -> None:
    x = bk.asarray([t, -t, 1e4, -1e4], dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        y = bk.to_numpy(Sigmoid()(x))
    np.testing.assert_array_equal(y, [1.0, 0.0, 1.0, 0.0])


def test_sigmoid_keeps_relative_precision_in_the_left_tail(bk) -> None:
    x = np.array([-30.0, -100.0, -700.0])
    got = bk.to_numpy(Sigmoid()(bk.asarray(x, "float64")))
    np.testing.assert_allclose(got, np.exp(x) / (1 + np.exp(x)), rtol=1e-14)


# ----------------------------------------------------------------------------------------------
# erf and the exact GELU
# ----------------------------------------------------------------------------------------------


def _erf_grid() -> np.ndarray:
    return np.concatenate([np.linspace(-8.0, 8.0, 1601), [0.0, 1e-300, -1e-9, 1.9999999,
                                                           2.0, 2.0000001, 26.0, -26.0, 1e300]])


def test_erf_matches_math_erf(bk) -> None:
    v = _erf_grid()
    got = bk.to_numpy(K.erf(bk.asarray(v, "float64"), xp=bk.xp))
    want = np.array([math.erf(t) for t in v])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)


def test_erfc_keeps_relative_precision_in_the_tail(bk) -> None:
    v = np.concatenate([_erf_grid(), np.linspace(2.0, 26.5, 500)])
    got = bk.to_numpy(K.erfc(bk.asarray(v, "float64"), xp=bk.xp))
    want = np.array([math.erfc(t) for t in v])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)


def test_erf_float32_keeps_dtype_and_accuracy(bk) -> None:
    v = np.linspace(-6.0, 6.0, 241)
    xa = bk.asarray(v, "float32")
    got = K.erf(xa, xp=bk.xp)
    assert got.dtype == xa.dtype and _same_device(bk, got)
    want = np.array([math.erf(float(t)) for t in v.astype(np.float32)])
    np.testing.assert_allclose(bk.to_numpy(got), want, rtol=1e-6, atol=1e-7)


def test_erf_against_torch(bk) -> None:
    torch = pytest.importorskip("torch")
    v = np.linspace(-10.0, 10.0, 2001)
    t = torch.tensor(v)
    np.testing.assert_allclose(bk.to_numpy(K.erf(bk.asarray(v, "float64"), xp=bk.xp)),
                               torch.erf(t).numpy(), rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(bk.to_numpy(K.erfc(bk.asarray(v, "float64"), xp=bk.xp)),
                               torch.erfc(t).numpy(), rtol=1e-12, atol=1e-300)


def test_gelu_tanh_is_close_to_exact(bk) -> None:
    x = bk.asarray(np.linspace(-6, 6, 121), "float64")
    diff = bk.to_numpy(GELU("tanh")(x)) - bk.to_numpy(GELU()(x))
    assert 1e-5 < np.max(np.abs(diff)) < 5e-4  # different functions, within the known bound


# ----------------------------------------------------------------------------------------------
# PReLU, RReLU, the other hyperparameters
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_parameters", [1, 5])
def test_prelu_params_gradcheck_and_torch(bk, rng, num_parameters) -> None:
    torch = pytest.importorskip("torch")
    layer = PReLU(num_parameters, dtype="float64")
    alpha0 = rng.uniform(0.05, 0.5, size=num_parameters)
    layer.params["alpha"] = bk.asarray(alpha0, "float64")
    x, dy = smooth_sample(rng), rng.standard_normal((6, 5))
    assert nnxp.gradcheck(layer, bk.asarray(x, "float64"), raise_on_failure=True).passed
    y = layer.forward(bk.asarray(x, "float64"))
    dx = layer.backward(bk.asarray(dy, "float64"))
    assert tuple(layer.grads["alpha"].shape) == (num_parameters,)
    tx, ta = torch.tensor(x, requires_grad=True), torch.tensor(alpha0, requires_grad=True)
    ty = torch.nn.functional.prelu(tx, ta)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(bk.to_numpy(y), ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(bk.to_numpy(dx), tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(bk.to_numpy(layer.grads["alpha"]), ta.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(bk.to_numpy(layer.grads["alpha"]),
                               ref.prelu_alpha_grad(x, dy, alpha0), rtol=1e-10)


def test_prelu_checks_its_arguments(bk) -> None:
    layer = PReLU(4)
    assert tuple(layer.params["alpha"].shape) == (4,)
    np.testing.assert_allclose(bk.to_numpy(layer.params["alpha"]), 0.25)
    with pytest.raises(ValueError, match=r"x must have 4 features.*\(2, 3\)"):
        layer.forward(bk.asarray(np.ones((2, 3)), "float32"))
    with pytest.raises(ValueError, match="num_parameters must be a positive int, got 0"):
        PReLU(0)


def test_rrelu_training_slopes_are_random_in_range_and_evaluation_uses_their_mean(bk) -> None:
    layer = RReLU(0.1, 0.3, seed=1)
    x = bk.asarray(-np.ones((50, 20)), "float64")
    first = -bk.to_numpy(layer.forward(x, training=True))
    dx = bk.to_numpy(layer.backward(bk.asarray(np.ones((50, 20)), "float64")))
    np.testing.assert_allclose(dx, first, rtol=1e-15)  # the gradient uses the same slopes
    second = -bk.to_numpy(layer.forward(x, training=True))
    assert first.min() >= 0.1 and first.max() <= 0.3
    assert np.std(first) > 0.03 and not np.array_equal(first, second)  # drawn per element, anew
    np.testing.assert_allclose(-bk.to_numpy(layer.forward(x, training=False)), 0.2, rtol=1e-15)
    np.testing.assert_array_equal(bk.to_numpy(layer.forward(-x, training=True)), 1.0)


def test_rrelu_seed_gives_the_same_slopes_on_one_backend_drawn_on_the_device(bk) -> None:
    x = -np.ones((3, 4))
    with nnxp.use_backend(bk.spec):
        first, second = RReLU(0.1, 0.3, seed=11), RReLU(0.1, 0.3, seed=11)
    got = bk.to_numpy(first.forward(bk.asarray(x, "float64"), training=True))
    np.testing.assert_array_equal(
        got, bk.to_numpy(second.forward(bk.asarray(x, "float64"), training=True)))
    u = BackendGenerator(11, bk.xp, bk.device).uniform((3, 4), "float64")
    np.testing.assert_allclose(-got, 0.1 + 0.2 * bk.to_numpy(u), rtol=1e-15)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (partial(RReLU, 0.5, 0.1), "lower must be <= upper"),
        (partial(ELU, alpha=0.0), "alpha must be > 0, got 0.0"),
        (partial(Softplus, beta=-1.0), "beta must be > 0"),
        (partial(GELU, approximate="erf"), "approximate must be 'none' or 'tanh', got 'erf'"),
        (partial(ACTIVATIONS["leaky_relu"], negative_slope="x"), "negative_slope must be a"),
        (partial(Softmax, dim=1.5), "dim must be an int"),
        (partial(Maxout, 3, 2, 0), "k must be a positive int, got 0"),
    ],
)
def test_bad_hyperparameters_are_named(factory, message) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


def test_softplus_beta_and_softmax_dim_against_torch(bk, rng) -> None:
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 3))
    got = bk.to_numpy(Softplus(beta=2.5)(bk.asarray(x, "float64")))
    np.testing.assert_allclose(got, torch.nn.functional.softplus(torch.tensor(x), 2.5).numpy(),
                               rtol=1e-12)
    layer = Softmax(dim=0)
    s = layer.forward(bk.asarray(x, "float64"))
    dy = rng.standard_normal((4, 3))
    dx = layer.backward(bk.asarray(dy, "float64"))
    tx = torch.tensor(x, requires_grad=True)
    ts = torch.softmax(tx, dim=0)
    ts.backward(torch.tensor(dy))
    np.testing.assert_allclose(bk.to_numpy(s), ts.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(bk.to_numpy(dx), tx.grad.numpy(), rtol=1e-10, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# Kernel pairs with extra inputs, checked by gradcheck directly
# ----------------------------------------------------------------------------------------------


def test_kernel_pairs_gradcheck(bk, rng) -> None:
    xp = bk.xp
    x = bk.asarray(smooth_sample(rng), "float64")
    alpha = bk.asarray(rng.uniform(0.1, 0.4, size=5), "float64")
    slopes = bk.asarray(rng.uniform(0.1, 0.3, size=(6, 5)), "float64")
    pairs = [
        ((lambda x, a: (K.prelu(x, a, xp=xp), (x, a)),
          lambda dy, c: K.prelu_backward(dy, c[0], c[1], xp=xp)), (x, alpha)),
        ((lambda x, s: (K.rrelu(x, s, xp=xp), (x, s)),
          lambda dy, c: (K.rrelu_backward(dy, c[0], c[1], xp=xp), None)), (x, slopes)),
        ((lambda x: (K.softmax(x, 0, xp=xp)), lambda dy, y: K.softmax_backward(dy, y, 0, xp=xp)),
         (x,)),
        ((lambda x: (K.elu(x, 0.7, xp=xp)), lambda dy, y: K.elu_backward(dy, y, 0.7, xp=xp)),
         (x,)),
    ]
    for pair, inputs in pairs:
        assert nnxp.gradcheck(pair, *inputs, raise_on_failure=True).passed


# ----------------------------------------------------------------------------------------------
# Maxout
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxout_matches_reference(bk, rng, dtype) -> None:
    layer = Maxout(4, 3, k=3, dtype=dtype, seed=2)
    layer.params["b"] = bk.asarray(rng.standard_normal((3, 3)), dtype)
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    y = layer.forward(bk.asarray(x, dtype))
    dx = layer.backward(bk.asarray(dy, dtype))
    W, b = (bk.to_numpy(layer.params[k]).astype(np.float64) for k in ("W", "b"))
    assert W.shape == (4, 3, 3) and b.shape == (3, 3)
    for out in (y, dx, layer.grads["W"], layer.grads["b"]):
        assert out.dtype == layer.params["W"].dtype and _same_device(bk, out)
    np.testing.assert_allclose(bk.to_numpy(y), ref.maxout(x, W, b), **TOL[dtype])
    for got, want in zip((dx, layer.grads["W"], layer.grads["b"]), ref.maxout_grads(x, W, b, dy)):
        np.testing.assert_allclose(bk.to_numpy(got), want, **TOL[dtype])


def test_maxout_gradcheck(bk, rng) -> None:
    layer = Maxout(4, 3, k=2, seed=3)
    layer.params["b"] = bk.asarray(rng.standard_normal((3, 2)), "float32")
    result = nnxp.gradcheck(layer, bk.asarray(rng.standard_normal((5, 4)), "float64"),
                            raise_on_failure=True)
    assert set(result.errors) == {"x", "W", "b"}


def test_maxout_against_torch(bk, rng) -> None:
    torch = pytest.importorskip("torch")
    layer = Maxout(4, 2, k=3, dtype="float64", seed=4)
    x, dy = rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
    y = layer.forward(bk.asarray(x, "float64"))
    dx = layer.backward(bk.asarray(dy, "float64"))
    tx = torch.tensor(x, requires_grad=True)
    tW = torch.tensor(bk.to_numpy(layer.params["W"]), requires_grad=True)
    tb = torch.tensor(bk.to_numpy(layer.params["b"]), requires_grad=True)
    ty = (torch.einsum("ni,ijp->njp", tx, tW) + tb).amax(dim=-1)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(bk.to_numpy(y), ty.detach().numpy(), rtol=1e-12)
    for got, t in ((dx, tx), (layer.grads["W"], tW), (layer.grads["b"], tb)):
        np.testing.assert_allclose(bk.to_numpy(got), t.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_maxout_init_follows_dense_per_piece() -> None:
    layer = Maxout(400, 50, k=4, seed=0)
    W = nnxp.to_numpy(layer.params["W"])
    np.testing.assert_allclose(W.std(axis=(0, 1)), math.sqrt(2.0 / 400), rtol=0.05)
    assert not np.any(nnxp.to_numpy(layer.params["b"]))
    np.testing.assert_array_equal(W, nnxp.to_numpy(Maxout(400, 50, k=4, seed=0).params["W"]))
    assert Maxout.from_config(layer.get_config()).params["W"].shape == (400, 50, 4)


# ----------------------------------------------------------------------------------------------
# Dense(..., activation=...)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_dense_activation_equals_dense_then_activation(bk, rng, name) -> None:
    fused = Dense(4, 5, activation=name, dtype="float64", seed=3)
    plain = Dense(4, 5, dtype="float64", seed=3)
    act = build(name, "float64")
    if hasattr(act, "generator"):  # the same random slopes on both sides
        act.generator = BackendGenerator(fused.activation.generator.seed, act.xp, act.device)
    x, dy = rng.standard_normal((6, 4)), rng.standard_normal((6, 5))
    y1 = fused.forward(bk.asarray(x, "float64"))
    y2 = act.forward(plain.forward(bk.asarray(x, "float64")))
    np.testing.assert_allclose(bk.to_numpy(y1), bk.to_numpy(y2), rtol=1e-14, atol=1e-15)
    dx1 = fused.backward(bk.asarray(dy, "float64"))
    dx2 = plain.backward(act.backward(bk.asarray(dy, "float64")))
    np.testing.assert_allclose(bk.to_numpy(dx1), bk.to_numpy(dx2), rtol=1e-14, atol=1e-15)
    for key in plain.grads:
        np.testing.assert_allclose(bk.to_numpy(fused.grads[key]), bk.to_numpy(plain.grads[key]),
                                   rtol=1e-14, atol=1e-15)
    for key in act.grads:
        np.testing.assert_allclose(bk.to_numpy(fused.grads[f"activation.{key}"]),
                                   bk.to_numpy(act.grads[key]), rtol=1e-14, atol=1e-15)


def test_dense_activation_params_are_trained_and_saved(bk, rng) -> None:
    layer = Dense(3, 4, activation="prelu", seed=0)
    assert set(layer.params) == {"W", "b", "activation.alpha"}
    assert layer.params["activation.alpha"].dtype == layer.params["W"].dtype
    assert nnxp.gradcheck(layer, bk.asarray(rng.standard_normal((5, 3)), "float64"),
                          raise_on_failure=True).passed
    X = rng.standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(np.int64)
    model = nnxp.Sequential([layer, Dense(4, 2)], seed=1)
    before = nnxp.to_numpy(layer.params["activation.alpha"]).copy()
    model.fit(X, y, epochs=3, batch_size=8, verbose=0)
    assert not np.array_equal(before, nnxp.to_numpy(layer.params["activation.alpha"]))
    rebuilt = Dense.from_config(layer.get_config())
    assert type(rebuilt.activation) is PReLU and repr(rebuilt) == repr(layer)


def test_dense_activation_accepts_an_instance_and_rejects_unknown_names() -> None:
    act = ELU(alpha=0.3)
    assert Dense(2, 3, activation=act).activation is act
    assert Dense(2, 3).activation is None
    with pytest.raises(ValueError, match="activation='nope' is not a known activation"):
        Dense(2, 3, activation="nope")


# ----------------------------------------------------------------------------------------------
# The lean forms (issue 13): equal to the textbook definitions where they claim to be, and the
# float32 erf within its documented ulp bound
# ----------------------------------------------------------------------------------------------

SPECIALS = [-np.inf, -1e30, -1e4, -3.5, -1.0, -1e-30, -1e-42, -0.0, 0.0, 1e-42, 1e-30, 0.75,
            1.0, 3.5, 1e4, 1e30, np.inf]


def _ulp_errors(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got − want| in units of the float32 spacing at ``want``."""
    spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


def test_erf_float32_max_error_in_ulps(bk) -> None:
    """The float32 erf, tanh(x R(x²)), against math.erf over a dense grid: at most 3.5 ulp."""
    v = np.concatenate([np.linspace(-6.0, 6.0, 60001), np.logspace(-30, 0.7, 2000),
                        -np.logspace(-30, 0.7, 2000), [0.0, 4.3, -4.3, 1e4, -1e4]])
    v = v.astype(np.float32)
    got = bk.to_numpy(K.erf(bk.asarray(v, "float32"), xp=bk.xp))
    assert got.dtype == np.float32
    want = np.array([math.erf(float(t)) for t in v])
    assert np.max(_ulp_errors(got, want)) <= 3.5
    assert np.all(np.abs(got[np.abs(v) >= 4.3]) == 1.0)  # saturates exactly


def test_normal_cdf_float32_absolute_error(bk) -> None:
    v = np.linspace(-10.0, 10.0, 40001).astype(np.float32)
    got = bk.to_numpy(K.normal_cdf(bk.asarray(v, "float32"), xp=bk.xp)).astype(np.float64)
    want = np.array([0.5 * math.erfc(-float(t) / math.sqrt(2.0)) for t in v])
    assert np.max(np.abs(got - want)) < 1.3e-7  # 2 ulp of Φ on [½, 1)
    assert got[0] == 0.0 and got[-1] == 1.0


def test_gelu_float32_against_the_float64_definition(bk) -> None:
    """The exact GELU in float32 (Φ of degree (3, 2), the derivative finished in the forward
    pass) against x Φ(x) and Φ(x) + x φ(x) in float64: within 2.5e-7 relative for x > 0 and
    2.5e-7 absolute for the derivative (torch's own float32 GELU: 3.6e-7 and 2.8e-7)."""
    v = np.linspace(-9.0, 9.0, 36001).astype(np.float32)
    x64 = v.astype(np.float64)
    cdf = np.array([0.5 * math.erfc(-t / math.sqrt(2.0)) for t in x64])
    y, grad = K.gelu_forward(bk.asarray(v, "float32"), xp=bk.xp)
    y, grad = bk.to_numpy(y).astype(np.float64), bk.to_numpy(grad).astype(np.float64)
    pos = v > 0
    assert np.max(np.abs(y - x64 * cdf)[pos] / (x64 * cdf)[pos]) < 2.5e-7
    assert np.max(np.abs(y - x64 * cdf)) < 1e-6
    want = cdf + x64 * np.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi)
    assert np.max(np.abs(grad - want)) < 2.5e-7


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_at_the_extremes(bk, dtype, approximate) -> None:
    """Finite inputs of any size: no warning, y = x or −0 and f′ = 1 or ~0 in the tails; at ±inf
    the derivative is 1 and ~0 (torch gives NaN there) and y(+inf) = inf, y(−inf) = NaN
    (−inf · 0, as in torch)."""
    x = np.array([-1e30, -1e4, -60.0, 0.0, 60.0, 1e4, 1e30], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        y, grad = K.gelu_forward(bk.asarray(x, dtype), approximate, xp=bk.xp)
    y, grad = bk.to_numpy(y), bk.to_numpy(grad)
    np.testing.assert_array_equal(y, [0.0, 0.0, 0.0, 0.0, 60.0, 1e4, x[-1]])
    np.testing.assert_allclose(grad, [0, 0, 0, 0.5, 1, 1, 1], atol=3e-8)
    with np.errstate(invalid="ignore"):
        y, grad = K.gelu_forward(bk.asarray([-np.inf, np.inf], dtype), approximate, xp=bk.xp)
    y, grad = bk.to_numpy(y), bk.to_numpy(grad)
    assert np.isnan(y[0]) and y[1] == np.inf
    np.testing.assert_allclose(grad, [0, 1], atol=3e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slope", [0.0, 0.01, 0.5, 1.0, 2.0, -0.5])
def test_leaky_relu_forms_equal_the_two_branch_definition(bk, dtype, slope) -> None:
    """max(x, a·x) (0 < a ≤ 1), min(x, a·x) (a > 1) and ReLU (a = 0) give exactly the values
    of ``x if x > 0 else a·x``, infinities and subnormals included; NaN stays NaN."""
    x = np.array([*SPECIALS, np.nan], dtype=dtype)
    got = bk.to_numpy(K.leaky_relu(bk.asarray(x, dtype), slope, xp=bk.xp))
    want = np.where(x > 0, x, np.zeros_like(x) if slope == 0.0 else slope * x)
    np.testing.assert_array_equal(got[:-1], want[:-1])
    assert np.isnan(got[-1])
    dx = bk.to_numpy(K.leaky_relu_backward(bk.asarray(np.ones_like(x), dtype),
                                           bk.asarray(x, dtype), slope, xp=bk.xp))
    np.testing.assert_array_equal(dx, np.where(x > 0, 1.0, slope).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [1.0, 0.4, 1.7])
def test_elu_forms_match_the_definition_at_the_extremes(bk, dtype, alpha) -> None:
    x = np.array([*SPECIALS, np.nan], dtype=dtype)
    y = K.elu(bk.asarray(x, dtype), alpha, xp=bk.xp)
    got = bk.to_numpy(y)
    want = np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=2e-7 if dtype == "float32" else 1e-15,
                               atol=0)
    assert np.isnan(got[-1])
    dx = bk.to_numpy(K.elu_backward(bk.asarray(np.ones_like(x), dtype), y, alpha, xp=bk.xp))
    want_dx = np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0)))
    np.testing.assert_allclose(dx[:-1], want_dx[:-1], rtol=2e-6 if dtype == "float32" else 1e-14,
                               atol=1e-7 if dtype == "float32" else 1e-16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_without_selection_at_the_extremes(bk, dtype) -> None:
    x = np.array([*SPECIALS, np.nan], dtype=dtype)
    got = bk.to_numpy(K.sigmoid(bk.asarray(x, dtype), xp=bk.xp))
    with np.errstate(over="ignore"):
        want = np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))),
                        np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-6 if dtype == "float32" else 1e-15,
                               atol=0)
    assert got[0] == 0.0 and got[-2] == 1.0 and got[7] == 0.5 and np.isnan(got[-1])


@pytest.mark.parametrize("beta", [1.0, 0.5, 3.0])
def test_softplus_backward_from_output_equals_from_input(bk, rng, beta) -> None:
    x = np.concatenate([rng.uniform(-40, 40, 200), [-1e4, -745.0, -30.0, 0.0, 30.0, 1e4]])
    dy = rng.standard_normal(x.shape)
    xa, dya = bk.asarray(x, "float64"), bk.asarray(dy, "float64")
    y = K.softplus(xa, beta, xp=bk.xp)
    got = bk.to_numpy(K.softplus_backward_from_output(dya, y, beta, xp=bk.xp))
    want = bk.to_numpy(K.softplus_backward(dya, xa, beta, xp=bk.xp))
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-300)


def test_cached_backwards_equal_the_input_forms(bk, rng) -> None:
    x = bk.asarray(np.concatenate([rng.uniform(-8, 8, 300), [-1e4, 0.0, 1e4]]), "float64")
    dy = bk.asarray(rng.standard_normal(303), "float64")
    y, s = K.silu_forward(x, xp=bk.xp)
    np.testing.assert_allclose(bk.to_numpy(K.silu_backward_cached(dy, y, s, xp=bk.xp)),
                               bk.to_numpy(K.silu_backward(dy, x, xp=bk.xp)), rtol=1e-14)
    for approximate in ("none", "tanh"):
        y, aux = K.gelu_forward(x, approximate, xp=bk.xp)
        np.testing.assert_array_equal(bk.to_numpy(y), bk.to_numpy(K.gelu(x, approximate,
                                                                           xp=bk.xp)))
        kept = bk.to_numpy(aux).copy()
        dx = bk.to_numpy(K.gelu_backward_cached(dy, aux, xp=bk.xp))
        np.testing.assert_array_equal(bk.to_numpy(aux), kept)  # not written by default
        np.testing.assert_array_equal(dx, bk.to_numpy(K.gelu_backward(dy, x, approximate,
                                                                      xp=bk.xp)))
        # overwrite=True (what the layer passes: its cache is dropped) gives the same values
        np.testing.assert_array_equal(
            bk.to_numpy(K.gelu_backward_cached(dy, aux, xp=bk.xp, overwrite=True)), dx)
