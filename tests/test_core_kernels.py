"""The foundation kernels (dense, ReLU, fused softmax-cross-entropy, SGD), three oracles each,
on every available backend."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from reference import core as ref

import nnxp
from nnxp.kernels import activations, dense, losses, optimizers

DTYPES = ["float32", "float64"]
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-12)}


def _data(rng: np.random.Generator, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    return [rng.standard_normal(s) for s in shapes]


# --- dense ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_matches_reference_and_keeps_dtype_and_device(bk, rng, dtype) -> None:
    x, W, b, dy = _data(rng, (5, 4), (4, 3), (3,), (5, 3))
    xa, Wa, ba, dya = (bk.asarray(a, dtype) for a in (x, W, b, dy))
    y, cache = dense.dense_forward(xa, Wa, ba)
    dx, dW, db = dense.dense_backward(dya, cache, xp=bk.xp)
    for out in (y, dx, dW, db):
        assert out.dtype == bk.xp.asarray(xa).dtype
        assert str(nnxp.backend.device_of(out)) == str(bk.device)
    np.testing.assert_allclose(bk.to_numpy(y), ref.dense_forward(x, W, b), **TOL[dtype])
    for got, want in zip((dx, dW, db), ref.dense_backward(dy, x, W)):
        np.testing.assert_allclose(bk.to_numpy(got), want, **TOL[dtype])


def test_dense_backward_can_skip_dx(bk, rng) -> None:
    x, W, b, dy = (bk.asarray(a) for a in _data(rng, (3, 2), (2, 4), (4,), (3, 4)))
    _, cache = dense.dense_forward(x, W, b)
    dx, dW, _ = dense.dense_backward(dy, cache, xp=bk.xp, need_dx=False)
    assert dx is None and tuple(dW.shape) == (2, 4)


def test_dense_gradcheck(bk, rng) -> None:
    x, W, b = (bk.asarray(a) for a in _data(rng, (4, 3), (3, 2), (2,)))
    result = nnxp.gradcheck((dense.dense_forward, partial(dense.dense_backward, xp=bk.xp)),
                            x, W, b, raise_on_failure=True)
    assert result.passed and result.n_checked == 4 * 3 + 3 * 2 + 2


def test_dense_against_torch(bk, rng) -> None:
    torch = pytest.importorskip("torch")
    x, W, b, dy = _data(rng, (6, 5), (5, 3), (3,), (6, 3))
    tx, tW, tb = (torch.tensor(a, requires_grad=True) for a in (x, W, b))
    ty = torch.nn.functional.linear(tx, tW.T, tb)  # torch stores (out, in): our W is its weight.T
    ty.backward(torch.tensor(dy))
    y, cache = dense.dense_forward(*(bk.asarray(a) for a in (x, W, b)))
    grads = dense.dense_backward(bk.asarray(dy), cache, xp=bk.xp)
    np.testing.assert_allclose(bk.to_numpy(y), ty.detach().numpy(), rtol=1e-12)
    for got, t in zip(grads, (tx, tW, tb)):
        np.testing.assert_allclose(bk.to_numpy(got), t.grad.numpy(), rtol=1e-12, atol=1e-14)


# --- ReLU ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_reference(bk, rng, dtype) -> None:
    x, dy = _data(rng, (7, 5), (7, 5))
    xa = bk.asarray(x, dtype)
    y = activations.relu(xa, xp=bk.xp)
    dx = activations.relu_backward(bk.asarray(dy, dtype), y, xp=bk.xp)
    assert y.dtype == xa.dtype and dx.dtype == xa.dtype
    assert str(nnxp.backend.device_of(y)) == str(bk.device)
    np.testing.assert_allclose(bk.to_numpy(y), ref.relu(x), **TOL[dtype])
    np.testing.assert_allclose(bk.to_numpy(dx), ref.relu_backward(dy, x), **TOL[dtype])


def test_relu_derivative_at_zero_is_zero(bk) -> None:
    x = bk.asarray([-1.0, 0.0, 2.0])
    y = activations.relu(x, xp=bk.xp)
    dx = activations.relu_backward(bk.asarray([1.0, 1.0, 1.0]), y, xp=bk.xp)
    np.testing.assert_array_equal(bk.to_numpy(dx), [0.0, 0.0, 1.0])


def test_relu_gradcheck(bk, rng) -> None:
    x = rng.standard_normal((5, 4))
    x[np.abs(x) < 0.05] = 0.5  # keep away from the kink
    pair = (partial(activations.relu, xp=bk.xp), partial(activations.relu_backward, xp=bk.xp))
    assert nnxp.gradcheck(pair, bk.asarray(x), raise_on_failure=True).passed


def test_relu_against_torch(bk, rng) -> None:
    torch = pytest.importorskip("torch")
    x, dy = _data(rng, (4, 6), (4, 6))
    tx = torch.tensor(x, requires_grad=True)
    torch.relu(tx).backward(torch.tensor(dy))
    y = activations.relu(bk.asarray(x), xp=bk.xp)
    dx = activations.relu_backward(bk.asarray(dy), y, xp=bk.xp)
    np.testing.assert_allclose(bk.to_numpy(dx), tx.grad.numpy())


# --- fused softmax cross-entropy ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_matches_reference(bk, rng, dtype) -> None:
    z = rng.standard_normal((8, 5)) * 3
    labels = rng.integers(0, 5, size=8)
    loss, cache = losses.softmax_cross_entropy(bk.asarray(z, dtype), bk.asarray(labels), xp=bk.xp)
    grad = losses.softmax_cross_entropy_backward(cache, xp=bk.xp)
    want_loss, want_grad = ref.softmax_cross_entropy(z, labels)
    assert loss.ndim == 0 and loss.dtype == grad.dtype == bk.asarray(z, dtype).dtype
    assert str(nnxp.backend.device_of(grad)) == str(bk.device)
    np.testing.assert_allclose(nnxp.backend.to_float(loss), want_loss, **TOL[dtype])
    np.testing.assert_allclose(bk.to_numpy(grad), want_grad, **TOL[dtype])


def test_softmax_cross_entropy_is_stable_for_huge_logits(bk) -> None:
    z = bk.asarray([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], "float32")
    loss, cache = losses.softmax_cross_entropy(z, bk.asarray([1, 2]), xp=bk.xp)
    grad = bk.to_numpy(losses.softmax_cross_entropy_backward(cache, xp=bk.xp))
    assert np.isfinite(nnxp.backend.to_float(loss)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(nnxp.backend.to_float(loss), 1e4, rtol=1e-6)  # (2e4 + 0) / 2


def test_softmax_cross_entropy_gradcheck(bk, rng) -> None:
    z = bk.asarray(rng.standard_normal((6, 4)))
    labels = bk.asarray(rng.integers(0, 4, size=6))

    def backward(dy, cache):
        return dy * losses.softmax_cross_entropy_backward(cache, xp=bk.xp)

    pair = (partial(losses.softmax_cross_entropy, xp=bk.xp), backward)
    assert nnxp.gradcheck(pair, z, labels, raise_on_failure=True).passed


def test_softmax_cross_entropy_against_torch(bk, rng) -> None:
    torch = pytest.importorskip("torch")
    z = rng.standard_normal((10, 7))
    labels = rng.integers(0, 7, size=10)
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(labels))
    tl.backward()
    loss, cache = losses.softmax_cross_entropy(bk.asarray(z), bk.asarray(labels), xp=bk.xp)
    grad = losses.softmax_cross_entropy_backward(cache, xp=bk.xp)
    np.testing.assert_allclose(nnxp.backend.to_float(loss), tl.item(), rtol=1e-12)
    np.testing.assert_allclose(bk.to_numpy(grad), tz.grad.numpy(), rtol=1e-10, atol=1e-15)


# --- SGD -------------------------------------------------------------------------------------


@pytest.mark.parametrize("inplace", [False, True])
def test_sgd_update_matches_reference(bk, rng, inplace) -> None:
    p0 = rng.standard_normal((3, 4))
    grads = _data(rng, *[(3, 4)] * 5)
    p = bk.asarray(p0, "float64")
    for g, want in zip(grads, ref.sgd_trajectory(p0, grads, lr=0.1)):
        p = optimizers.sgd_update(p, bk.asarray(g, "float64"), lr=0.1, inplace=inplace)
        np.testing.assert_allclose(bk.to_numpy(p), want, rtol=1e-14)


def test_sgd_update_out_of_place_leaves_param_untouched(bk) -> None:
    p = bk.asarray([1.0, 2.0])
    new = optimizers.sgd_update(p, bk.asarray([1.0, 1.0]), lr=0.5)
    np.testing.assert_array_equal(bk.to_numpy(p), [1.0, 2.0])
    np.testing.assert_array_equal(bk.to_numpy(new), [0.5, 1.5])


def test_sgd_matches_torch_optim(bk, rng) -> None:
    torch = pytest.importorskip("torch")
    p0 = rng.standard_normal((4, 3))
    grads = _data(rng, *[(4, 3)] * 20)
    tp = torch.tensor(p0, requires_grad=True)
    opt = torch.optim.SGD([tp], lr=0.05)
    layer = nnxp.layers.Dense(4, 3, dtype="float64")
    layer.params = {"W": bk.asarray(p0, "float64")}
    ours = nnxp.optim.SGD(lr=0.05)
    ours.bind([(layer, "W")])
    for g in grads:
        tp.grad = torch.tensor(g)
        opt.step()
        layer.grads["W"] = bk.asarray(g, "float64")
        ours.step()
        np.testing.assert_allclose(bk.to_numpy(layer.params["W"]), tp.detach().numpy(),
                                   rtol=1e-12, atol=1e-14)
