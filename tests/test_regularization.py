"""L1/L2 weight penalties and the max-norm constraint: kernels, Dense options, the model's loss."""

from __future__ import annotations

import numpy as np
import pytest
from reference import normalization as ref

import nnxp
from nnxp.kernels import dense as dense_k
from nnxp.kernels import regularization as k
from nnxp.layers import Dense, ReLU

DTYPES = ["float32", "float64"]
TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-13)}
COEFS = [(0.01, 0.0), (0.0, 0.05), (0.02, 0.03)]


def _weights(rng: np.random.Generator, shape=(5, 4)) -> np.ndarray:
    """Entries at least 0.05 away from 0, where |w| is differentiable."""
    return rng.uniform(0.05, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


# --- penalty kernels --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("l1", "l2"), COEFS)
def test_penalty_and_its_gradient_match_reference(bk, rng, dtype, l1, l2) -> None:
    W = _weights(rng)
    Wa = bk.asarray(W, dtype)
    value = k.l1_l2_penalty(Wa, l1=l1, l2=l2, xp=bk.xp)
    grad = k.l1_l2_penalty_grad(Wa, l1=l1, l2=l2, xp=bk.xp)
    for arr in (value, grad):
        assert nnxp.backend.dtype_name(arr.dtype) == dtype
        assert str(nnxp.backend.device_of(arr)) == str(bk.device)
    assert value.shape == () and grad.shape == W.shape
    np.testing.assert_allclose(nnxp.backend.to_float(value), ref.l1_l2_penalty(W, l1, l2),
                               **TOL[dtype])
    np.testing.assert_allclose(bk.to_numpy(grad), ref.l1_l2_penalty_grad(W, l1, l2), **TOL[dtype])


def test_l2_multiplies_the_sum_of_squares_not_half_of_it(bk) -> None:
    W = bk.asarray(np.array([[3.0, -4.0]]), "float64")  # Σ W² = 25
    assert nnxp.backend.to_float(k.l1_l2_penalty(W, l1=0.0, l2=0.1, xp=bk.xp)) == pytest.approx(2.5)
    np.testing.assert_allclose(bk.to_numpy(k.l1_l2_penalty_grad(W, l1=0.0, l2=0.1, xp=bk.xp)),
                               [[0.6, -0.8]])
    assert nnxp.backend.to_float(k.l1_l2_penalty(W, l1=0.5, l2=0.0, xp=bk.xp)) == 3.5


def test_no_coefficients_mean_no_penalty_and_l1_subgradient_is_zero_at_zero(bk) -> None:
    W = bk.asarray(np.array([[0.0, 2.0], [-1.0, 0.0]]), "float32")
    assert nnxp.backend.to_float(k.l1_l2_penalty(W, l1=0.0, l2=0.0, xp=bk.xp)) == 0.0
    np.testing.assert_array_equal(bk.to_numpy(k.l1_l2_penalty_grad(W, l1=1.0, l2=0.0, xp=bk.xp)),
                                  [[0.0, 1.0], [-1.0, 0.0]])


@pytest.mark.parametrize(("l1", "l2"), COEFS)
def test_penalty_kernel_pair_passes_gradcheck(bk, rng, l1, l2) -> None:
    pair = (lambda W: k.l1_l2_penalty(W, l1=l1, l2=l2, xp=bk.xp),
            lambda dy, cache: dy * k.l1_l2_penalty_grad(cache_w[0], l1=l1, l2=l2, xp=bk.xp))
    cache_w = [bk.asarray(_weights(rng), "float64")]
    result = nnxp.gradcheck(pair, cache_w[0], tol=1e-7)
    assert result.passed, result.errors


@pytest.mark.parametrize(("l1", "l2"), COEFS)
def test_penalty_value_and_gradient_match_torch_autograd(bk, rng, l1, l2) -> None:
    torch = pytest.importorskip("torch")
    W = _weights(rng)
    Wt = torch.from_numpy(W).requires_grad_(True)
    pen = l1 * Wt.abs().sum() + l2 * (Wt**2).sum()
    pen.backward()
    Wa = bk.asarray(W, "float64")
    np.testing.assert_allclose(nnxp.backend.to_float(k.l1_l2_penalty(Wa, l1=l1, l2=l2, xp=bk.xp)),
                               pen.item(), rtol=1e-12)
    np.testing.assert_allclose(bk.to_numpy(k.l1_l2_penalty_grad(Wa, l1=l1, l2=l2, xp=bk.xp)),
                               Wt.grad.numpy(), rtol=1e-12)


# --- max-norm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_norm_matches_reference_and_leaves_short_columns_alone(bk, rng, dtype) -> None:
    W = rng.standard_normal((6, 5))
    W[:, 1] *= 0.01  # well inside the ball
    W[:, 3] = 0.0  # a zero column: no division by zero
    c = 1.0
    out = k.max_norm(bk.asarray(W, dtype), max_value=c, xp=bk.xp)
    assert nnxp.backend.dtype_name(out.dtype) == dtype
    assert str(nnxp.backend.device_of(out)) == str(bk.device)
    got = bk.to_numpy(out)
    np.testing.assert_allclose(got, ref.max_norm(W.astype(dtype).astype(np.float64), c),
                               **TOL[dtype])
    np.testing.assert_array_equal(got[:, 1], W[:, 1].astype(dtype))
    np.testing.assert_array_equal(got[:, 3], 0.0)
    assert np.all(np.linalg.norm(got.astype(np.float64), axis=0) <= c * (1 + 1e-6))
    assert np.any(np.linalg.norm(W, axis=0) > c)  # the test did project something


def test_max_norm_matches_torch_renorm(bk, rng) -> None:
    torch = pytest.importorskip("torch")
    W = rng.standard_normal((8, 6)) * 2.0
    want = torch.renorm(torch.from_numpy(W), p=2, dim=1, maxnorm=1.5).numpy()  # per column
    got = bk.to_numpy(k.max_norm(bk.asarray(W, "float64"), max_value=1.5, xp=bk.xp))
    np.testing.assert_allclose(got, want, rtol=1e-6)  # torch divides by norm + 1e-7


# --- Dense with penalties and a constraint ----------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_adds_the_penalty_gradient_to_W_only(bk, rng, dtype) -> None:
    layer = Dense(4, 3, l1=0.01, l2=0.02, dtype=dtype, seed=1)
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    W = bk.to_numpy(layer.params["W"]).astype(np.float64)
    assert layer.has_penalty
    np.testing.assert_allclose(nnxp.backend.to_float(layer.penalty()),
                               ref.l1_l2_penalty(W, 0.01, 0.02), **TOL[dtype])
    layer.forward(bk.asarray(x, dtype))
    layer.backward(bk.asarray(dy, dtype))
    np.testing.assert_allclose(bk.to_numpy(layer.grads["W"]),
                               x.T @ dy + ref.l1_l2_penalty_grad(W, 0.01, 0.02),
                               rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-5)
    np.testing.assert_allclose(bk.to_numpy(layer.grads["b"]), dy.sum(axis=0),
                               rtol=1e-5 if dtype == "float32" else 1e-12)


def test_dense_without_options_has_a_zero_penalty_and_no_constraint(bk, rng) -> None:
    layer = Dense(3, 2, seed=0)
    assert not layer.has_penalty
    assert nnxp.backend.to_float(layer.penalty()) == 0.0
    before = bk.to_numpy(layer.params["W"]).copy()
    layer.apply_constraints()
    np.testing.assert_array_equal(bk.to_numpy(layer.params["W"]), before)
    x, dy = bk.asarray(rng.standard_normal((4, 3)), "float32"), bk.asarray(
        rng.standard_normal((4, 2)), "float32")
    layer.forward(x)
    layer.backward(dy)
    _, dW, _ = dense_k.dense_backward(dy, dense_k.DenseCache(x, layer.params["W"]), xp=bk.xp)
    np.testing.assert_array_equal(bk.to_numpy(layer.grads["W"]), bk.to_numpy(dW))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"l1": -0.1}, "l1 must be >= 0"), ({"l2": -1}, "l2 must be >= 0"),
    ({"max_norm": 0.0}, "max_norm must be > 0"), ({"max_norm": -2.0}, "max_norm must be > 0"),
])
def test_dense_rejects_bad_regularisation_arguments(bk, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        Dense(3, 2, **kwargs)
    with pytest.raises(TypeError, match="l2 must be a number"):
        Dense(3, 2, l2="big")  # type: ignore[arg-type]


def test_dense_config_keeps_the_regularisation(bk) -> None:
    layer = Dense(3, 2, l1=0.1, l2=0.2, max_norm=3.0)
    again = Dense.from_config(layer.get_config())
    assert (again.l1, again.l2, again.max_norm) == (0.1, 0.2, 3.0)


# --- through the model ------------------------------------------------------------------------


def _model(dtype: str, seed: int = 0, **kw) -> nnxp.Sequential:
    return nnxp.Sequential([Dense(4, 6, dtype=dtype, **kw), ReLU(),
                            Dense(6, 3, dtype=dtype, l2=kw.get("l2", 0.0))], seed=seed)


@pytest.mark.parametrize(("l1", "l2"), COEFS)
def test_model_gradients_with_penalties_pass_gradcheck(bk, rng, l1, l2) -> None:
    model = _model("float64", l1=l1, l2=l2)
    X, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    result = nnxp.gradcheck(model, X, y=y, tol=1e-6)  # gradcheck includes model.penalty()
    assert result.passed, result.errors


def test_fit_and_evaluate_report_the_penalised_loss(bk, rng) -> None:
    X, y = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    model = _model("float64", seed=2, l1=0.01, l2=0.05)
    plain = _model("float64", seed=2)  # the same weights, no penalty
    data_loss = plain.evaluate(X, y)["loss"]
    penalty = nnxp.backend.to_float(model.penalty())
    w = [bk.to_numpy(layer.params["W"]) for layer in (model.layers[0], model.layers[2])]
    assert penalty == pytest.approx(ref.l1_l2_penalty(w[0], 0.01, 0.05)
                                    + ref.l1_l2_penalty(w[1], 0.0, 0.05), rel=1e-12)
    assert model.evaluate(X, y)["loss"] == pytest.approx(data_loss + penalty, rel=1e-12)
    Xa, ya = bk.asarray(X, "float64"), bk.asarray(y)
    value = nnxp.backend.to_float(model.loss_and_grads(Xa, ya))
    assert value == pytest.approx(data_loss + penalty, rel=1e-12)
    # one full batch: the epoch's loss is measured at the weights before the step
    history = model.fit(X, y, epochs=1, batch_size=None, shuffle=False, verbose=0,
                        optimizer=nnxp.optim.SGD(lr=0.1))
    assert history["loss"][0] == pytest.approx(data_loss + penalty, rel=1e-10)


def test_l2_shrinks_the_weights_that_training_finds(bk, rng) -> None:
    X = rng.standard_normal((60, 4))
    y = (X @ np.array([1.0, -2.0, 0.5, 0.0]) > 0).astype(np.int64)
    norms = {}
    for l2 in (0.0, 0.05):
        model = nnxp.Sequential([Dense(4, 2, l2=l2)], seed=4)
        model.fit(X, y, epochs=30, batch_size=None, verbose=0, optimizer=nnxp.optim.SGD(lr=0.5))
        norms[l2] = float(np.linalg.norm(bk.to_numpy(model.layers[0].params["W"])))
    assert norms[0.05] < 0.7 * norms[0.0]


def test_fit_applies_max_norm_after_every_step(bk, rng) -> None:
    X = rng.standard_normal((40, 4)) * 3.0
    y = (X[:, 0] > 0).astype(np.int64)
    col_norms = {}
    for c in (None, 0.5):
        model = nnxp.Sequential([Dense(4, 8, max_norm=c), ReLU(), Dense(8, 2, max_norm=c)],
                                seed=1)
        model.fit(X, y, epochs=5, batch_size=8, verbose=0, optimizer=nnxp.optim.SGD(lr=0.5))
        col_norms[c] = [np.linalg.norm(bk.to_numpy(layer.params["W"]).astype(np.float64),
                                       axis=0) for layer in (model.layers[0], model.layers[2])]
    for norms in col_norms[0.5]:
        assert np.all(norms <= 0.5 * (1 + 1e-5))
    assert max(n.max() for n in col_norms[None]) > 0.5  # without it, the weights grow past c
