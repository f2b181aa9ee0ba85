"""BatchNorm1d and LayerNorm: kernels and layers, on every backend, three oracles each."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import normalization as ref

import nnxp
from nnxp.kernels import normalization as k
from nnxp.layers import BackwardError, BatchNorm1d, Dense, LayerNorm, ReLU

DTYPES = ["float32", "float64"]
TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-11)}
HYPO = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _same_place(bk, arr, dtype: str) -> None:
    assert nnxp.backend.dtype_name(arr.dtype) == dtype
    assert str(nnxp.backend.device_of(arr)) == str(bk.device)


# --- batch norm: kernels ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_train_forward_and_backward_match_reference(bk, rng, dtype) -> None:
    x = rng.standard_normal((6, 4)) * 3.0 + 2.0
    gamma, beta, dy = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal((6, 4))
    xa, ga, ba, dya = (bk.asarray(a, dtype) for a in (x, gamma, beta, dy))
    y, cache, mean, var = k.batch_norm_forward_train(xa, ga, ba, eps=1e-5, xp=bk.xp)
    y_ref, mu_ref, var_ref = ref.batch_norm_train(x, gamma, beta)
    for got, want in ((y, y_ref), (mean, mu_ref), (var, var_ref)):
        _same_place(bk, got, dtype)
        np.testing.assert_allclose(bk.to_numpy(got), want, **TOL[dtype])
    dx, dgamma, dbeta = k.batch_norm_backward(dya, cache, xp=bk.xp)
    for got, want in zip((dx, dgamma, dbeta), ref.batch_norm_backward(dy, x, gamma)):
        _same_place(bk, got, dtype)
        np.testing.assert_allclose(bk.to_numpy(got), want, **TOL[dtype])


def test_batch_norm_kernel_without_affine_map(bk, rng) -> None:
    x, dy = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    y, cache, _, _ = k.batch_norm_forward_train(bk.asarray(x, "float64"), None, None, eps=1e-5,
                                                xp=bk.xp)
    ones, zeros = np.ones(3), np.zeros(3)
    np.testing.assert_allclose(bk.to_numpy(y), ref.batch_norm_train(x, ones, zeros)[0],
                               rtol=1e-12)
    dx, dgamma, dbeta = k.batch_norm_backward(bk.asarray(dy, "float64"), cache, xp=bk.xp)
    assert dgamma is None
    want = ref.batch_norm_backward(dy, x, ones)
    np.testing.assert_allclose(bk.to_numpy(dx), want[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bk.to_numpy(dbeta), want[2], rtol=1e-12)


def test_batch_norm_kernel_pair_passes_gradcheck(bk, rng) -> None:
    x = rng.standard_normal((5, 3)) * 2.0 + 1.0
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)

    def forward(x, g, b):
        y, cache, _, _ = k.batch_norm_forward_train(x, g, b, eps=1e-5, xp=bk.xp)
        return y, cache

    def backward(dy, cache):
        return k.batch_norm_backward(dy, cache, xp=bk.xp)

    args = (bk.asarray(a, "float64") for a in (x, gamma, beta))
    result = nnxp.gradcheck((forward, backward), *args, tol=1e-6)
    assert result.passed, result.errors


# --- batch norm: the layer --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_layer_running_stats_and_eval_match_reference(bk, rng, dtype) -> None:
    batches = [rng.standard_normal((8, 3)) * (i + 1.0) + 5.0 * i for i in range(4)]
    layer = BatchNorm1d(3, dtype=dtype)
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    layer.params["weight"], layer.params["bias"] = bk.asarray(gamma, dtype), bk.asarray(beta,
                                                                                        dtype)
    for xb in batches:
        y = layer.forward(bk.asarray(xb, dtype), training=True)
        np.testing.assert_allclose(bk.to_numpy(y), ref.batch_norm_train(xb, gamma, beta)[0],
                                   **TOL[dtype])
    rm, rv = ref.running_stats(batches)
    for key, want in (("running_mean", rm), ("running_var", rv)):
        _same_place(bk, layer.buffers[key], dtype)
        np.testing.assert_allclose(bk.to_numpy(layer.buffers[key]), want, **TOL[dtype])
    x_test = rng.standard_normal((1, 3))  # a batch of one is fine in evaluation
    y_eval = layer.forward(bk.asarray(x_test, dtype), training=False)
    np.testing.assert_allclose(bk.to_numpy(y_eval),
                               ref.batch_norm_eval(x_test, gamma, beta, rm, rv), **TOL[dtype])
    with pytest.raises(BackwardError):
        layer.backward(bk.asarray(np.ones((1, 3)), dtype))
    assert layer.num_batches_tracked == 4


def test_batch_norm_layer_gradcheck_x_gamma_beta(bk, rng) -> None:
    layer = BatchNorm1d(3, dtype="float64")
    layer.params["weight"] = bk.asarray(rng.standard_normal(3) + 1.0, "float64")
    layer.params["bias"] = bk.asarray(rng.standard_normal(3), "float64")
    x = bk.asarray(rng.standard_normal((6, 3)) * 2.0 - 1.0, "float64")
    result = nnxp.gradcheck(layer, x, tol=1e-6)
    assert result.passed, result.errors
    assert set(result.errors) == {"x", "weight", "bias"}


def test_batch_norm_inside_a_model_passes_gradcheck(bk, rng) -> None:
    model = nnxp.Sequential([Dense(4, 5, dtype="float64"), BatchNorm1d(5, dtype="float64"),
                             ReLU(), Dense(5, 3, dtype="float64")], seed=3)
    X, y = rng.standard_normal((7, 4)), rng.integers(0, 3, 7)
    result = nnxp.gradcheck(model, X, y=y, tol=1e-6)
    assert result.passed, result.errors


def test_batch_norm_refuses_a_training_batch_of_one_and_bad_shapes(bk) -> None:
    layer = BatchNorm1d(3)
    with pytest.raises(ValueError, match=r"more than 1 sample.*\(1, 3\)"):
        layer.forward(bk.asarray(np.ones((1, 3)), "float32"), training=True)
    with pytest.raises(ValueError, match=r"\(batch, 3\).*\(4, 2\)"):
        layer.forward(bk.asarray(np.ones((4, 2)), "float32"))
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="num_features"):
            BatchNorm1d(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm1d(3, momentum=1.5)


def test_batch_norm_momentum_none_is_the_cumulative_average(bk, rng) -> None:
    batches = [rng.standard_normal((4, 2)) + i for i in range(3)]
    layer = BatchNorm1d(2, momentum=None, dtype="float64")
    for xb in batches:
        layer.forward(bk.asarray(xb, "float64"))
    want_mean = np.mean([xb.mean(axis=0) for xb in batches], axis=0)
    want_var = np.mean([xb.var(axis=0, ddof=1) for xb in batches], axis=0)
    np.testing.assert_allclose(bk.to_numpy(layer.buffers["running_mean"]), want_mean, rtol=1e-12)
    np.testing.assert_allclose(bk.to_numpy(layer.buffers["running_var"]), want_var, rtol=1e-12)


def test_batch_norm_without_running_stats_uses_batch_stats_in_eval(bk, rng) -> None:
    x = rng.standard_normal((5, 2)) * 4.0 + 3.0
    layer = BatchNorm1d(2, track_running_stats=False, affine=False, dtype="float64")
    assert layer.buffers == {} and layer.params == {}
    y = layer.forward(bk.asarray(x, "float64"), training=False)
    np.testing.assert_allclose(bk.to_numpy(y), ref.batch_norm_train(x, 1.0, 0.0)[0], rtol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_matches_torch_over_several_steps(bk, rng, dtype) -> None:
    torch = pytest.importorskip("torch")
    tdtype = getattr(torch, dtype)
    tbn = torch.nn.BatchNorm1d(4, dtype=tdtype)
    layer = BatchNorm1d(4, dtype=dtype)
    with torch.no_grad():
        tbn.weight.copy_(torch.from_numpy(rng.standard_normal(4) + 1.0))
        tbn.bias.copy_(torch.from_numpy(rng.standard_normal(4)))
    layer.params["weight"] = bk.asarray(tbn.weight.detach().numpy(), dtype)
    layer.params["bias"] = bk.asarray(tbn.bias.detach().numpy(), dtype)
    for step in range(3):
        xb = (rng.standard_normal((10, 4)) * 2.0 + step).astype(dtype)
        dy = rng.standard_normal((10, 4)).astype(dtype)
        xt = torch.from_numpy(xb).requires_grad_(True)
        yt = tbn(xt)
        yt.backward(torch.from_numpy(dy))
        y = layer.forward(bk.asarray(xb, dtype), training=True)
        dx = layer.backward(bk.asarray(dy, dtype))
        tol = TOL[dtype] if dtype == "float64" else dict(rtol=5e-4, atol=5e-5)
        np.testing.assert_allclose(bk.to_numpy(y), yt.detach().numpy(), **tol)
        np.testing.assert_allclose(bk.to_numpy(dx), xt.grad.numpy(), **tol)
        np.testing.assert_allclose(bk.to_numpy(layer.grads["weight"]), tbn.weight.grad.numpy(),
                                   **tol)
        np.testing.assert_allclose(bk.to_numpy(layer.grads["bias"]), tbn.bias.grad.numpy(), **tol)
        tbn.weight.grad = tbn.bias.grad = None
    np.testing.assert_allclose(bk.to_numpy(layer.buffers["running_mean"]),
                               tbn.running_mean.numpy(), **TOL[dtype])
    np.testing.assert_allclose(bk.to_numpy(layer.buffers["running_var"]),
                               tbn.running_var.numpy(), **TOL[dtype])
    x_eval = rng.standard_normal((3, 4)).astype(dtype)
    tbn.eval()
    with torch.no_grad():
        want = tbn(torch.from_numpy(x_eval)).numpy()
    np.testing.assert_allclose(bk.to_numpy(layer.forward(bk.asarray(x_eval, dtype),
                                                         training=False)), want, **TOL[dtype])


@HYPO
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(8, 48), c=st.integers(1, 4),
       offset=st.sampled_from([1e4, -1e4, 3e3]), scale=st.floats(0.5, 20.0))
def test_batch_norm_output_is_standardised_even_for_large_means(bk, seed, n, c, offset,
                                                                scale) -> None:
    x = np.random.default_rng(seed).standard_normal((n, c)) * scale + offset
    for dtype, tol in (("float64", 1e-6), ("float32", 2e-2)):
        layer = BatchNorm1d(c, dtype=dtype)
        y = bk.to_numpy(layer.forward(bk.asarray(x, dtype), training=True)).astype(np.float64)
        xr = x.astype(dtype).astype(np.float64)  # what the layer actually saw
        spread = xr.var(axis=0)
        expected_var = spread / (spread + 1e-5)  # the eps inside the square root
        np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=tol)
        np.testing.assert_allclose(y.var(axis=0), expected_var, atol=tol)
        np.testing.assert_allclose(y.var(axis=0), 1.0, atol=max(tol, 2e-3))  # ≈ 1 as such


# --- layer norm -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_matches_reference(bk, rng, dtype) -> None:
    x = rng.standard_normal((4, 6)) * 2.0 + 1.0
    gamma, beta, dy = rng.standard_normal(6), rng.standard_normal(6), rng.standard_normal((4, 6))
    layer = LayerNorm(6, dtype=dtype)
    layer.params["weight"], layer.params["bias"] = bk.asarray(gamma, dtype), bk.asarray(beta,
                                                                                        dtype)
    y = layer.forward(bk.asarray(x, dtype), training=True)
    _same_place(bk, y, dtype)
    np.testing.assert_allclose(bk.to_numpy(y), ref.layer_norm(x, gamma, beta), **TOL[dtype])
    dx = layer.backward(bk.asarray(dy, dtype))
    want = ref.layer_norm_backward(dy, x, gamma)
    for got, w in zip((dx, layer.grads["weight"], layer.grads["bias"]), want):
        _same_place(bk, got, dtype)
        np.testing.assert_allclose(bk.to_numpy(got), w, **TOL[dtype])
    y_eval = layer.forward(bk.asarray(x, dtype), training=False)
    np.testing.assert_allclose(bk.to_numpy(y_eval), bk.to_numpy(y), rtol=0, atol=0)
    with pytest.raises(BackwardError):
        layer.backward(bk.asarray(dy, dtype))


def test_layer_norm_layer_gradcheck_x_gamma_beta(bk, rng) -> None:
    layer = LayerNorm(5, dtype="float64")
    layer.params["weight"] = bk.asarray(rng.standard_normal(5) + 1.0, "float64")
    layer.params["bias"] = bk.asarray(rng.standard_normal(5), "float64")
    x = bk.asarray(rng.standard_normal((3, 5)) * 2.0, "float64")
    result = nnxp.gradcheck(layer, x, tol=1e-6)
    assert result.passed, result.errors
    assert set(result.errors) == {"x", "weight", "bias"}


def test_layer_norm_without_affine_map(bk, rng) -> None:
    x, dy = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    layer = LayerNorm(4, elementwise_affine=False, dtype="float64")
    assert layer.params == {}
    y = layer.forward(bk.asarray(x, "float64"))
    np.testing.assert_allclose(bk.to_numpy(y), ref.layer_norm(x, 1.0, 0.0), rtol=1e-10)
    dx = layer.backward(bk.asarray(dy, "float64"))
    np.testing.assert_allclose(bk.to_numpy(dx), ref.layer_norm_backward(dy, x, np.ones(4))[0],
                               rtol=1e-9, atol=1e-12)
    assert layer.grads == {}
    with pytest.raises(ValueError, match=r"\(batch, 4\)"):
        layer.forward(bk.asarray(np.ones((3, 5)), "float64"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_matches_torch(bk, rng, dtype) -> None:
    torch = pytest.importorskip("torch")
    tln = torch.nn.LayerNorm(5, dtype=getattr(torch, dtype))
    with torch.no_grad():
        tln.weight.copy_(torch.from_numpy(rng.standard_normal(5)))
        tln.bias.copy_(torch.from_numpy(rng.standard_normal(5)))
    layer = LayerNorm(5, dtype=dtype)
    layer.params["weight"] = bk.asarray(tln.weight.detach().numpy(), dtype)
    layer.params["bias"] = bk.asarray(tln.bias.detach().numpy(), dtype)
    x = (rng.standard_normal((4, 5)) * 3.0 + 100.0).astype(dtype)
    dy = rng.standard_normal((4, 5)).astype(dtype)
    xt = torch.from_numpy(x).requires_grad_(True)
    tln(xt).backward(torch.from_numpy(dy))
    with torch.no_grad():
        want_y = tln(torch.from_numpy(x)).numpy()
    y = layer.forward(bk.asarray(x, dtype))
    dx = layer.backward(bk.asarray(dy, dtype))
    tol = TOL[dtype] if dtype == "float64" else dict(rtol=5e-4, atol=5e-5)
    np.testing.assert_allclose(bk.to_numpy(y), want_y, **tol)
    np.testing.assert_allclose(bk.to_numpy(dx), xt.grad.numpy(), **tol)
    np.testing.assert_allclose(bk.to_numpy(layer.grads["weight"]), tln.weight.grad.numpy(), **tol)
    np.testing.assert_allclose(bk.to_numpy(layer.grads["bias"]), tln.bias.grad.numpy(), **tol)


def test_normalisation_layers_in_a_trained_model(bk, rng) -> None:
    X = rng.standard_normal((64, 3)) * 50.0 + 1e3  # badly scaled inputs: what BN is for
    y = (X[:, 0] - 1e3 > 0).astype(np.int64)
    model = nnxp.Sequential([BatchNorm1d(3), Dense(3, 8), LayerNorm(8), ReLU(), Dense(8, 2)],
                            seed=0)
    history = model.fit(X, y, epochs=30, batch_size=16, optimizer=nnxp.optim.SGD(lr=0.1),
                        verbose=0)
    assert history["loss"][-1] < history["loss"][0]
    assert model.evaluate(X, y)["accuracy"] > 0.9
    rm = bk.to_numpy(model.layers[0].buffers["running_mean"])
    np.testing.assert_allclose(rm, X.mean(axis=0), rtol=2e-3)


def test_layer_config_round_trip(bk) -> None:
    bn = BatchNorm1d(3, eps=1e-3, momentum=0.2, affine=False, dtype="float64")
    again = BatchNorm1d.from_config(bn.get_config())
    assert (again.eps, again.momentum, again.affine, again.dtype) == (1e-3, 0.2, False,
                                                                      bn.dtype)
    ln = LayerNorm(4, eps=1e-6, bias=False)
    again_ln = LayerNorm.from_config(ln.get_config())
    assert (again_ln.eps, set(again_ln.params)) == (1e-6, {"weight"})
