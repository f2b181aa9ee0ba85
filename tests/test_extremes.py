"""Kernels at the extremes (issue 16): softmax cross-entropy at the edge of float32 and
float16, batch norm on features with a large mean."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nnxp
from nnxp.backend import to_numpy
from nnxp.kernels.losses import softmax_cross_entropy, softmax_cross_entropy_backward
from nnxp.kernels.normalization import batch_norm_forward_train, layer_norm_forward

xp = nnxp.get_backend().xp


def test_softmax_cross_entropy_at_the_float32_range_is_zero_not_nan() -> None:
    z = xp.asarray(np.array([[3e38, -3e38], [-3e38, 3e38]], np.float32))
    with warnings.catch_warnings():  # z − max(z) overflows to −inf: NumPy says so
        warnings.simplefilter("ignore", RuntimeWarning)
        right, cache = softmax_cross_entropy(z, xp.asarray(np.array([0, 1])), xp=xp)
        wrong, _ = softmax_cross_entropy(z, xp.asarray(np.array([1, 1])), xp=xp)
    assert float(to_numpy(right)) == 0.0 and right.dtype == xp.float32
    assert float(to_numpy(wrong)) == np.inf  # the true loss, 3e38, overflows float32 honestly
    grad = to_numpy(softmax_cross_entropy_backward(cache, xp=xp))
    np.testing.assert_array_equal(grad, np.zeros((2, 2), np.float32))


def test_float16_logits_accumulate_in_float32() -> None:
    rng = np.random.default_rng(0)
    z = np.where(rng.random((64, 3)) < 0.5, 3e4, -3e4).astype(np.float16)
    y = rng.integers(0, 3, 64)
    loss, cache = softmax_cross_entropy(xp.asarray(z), xp.asarray(y), xp=xp)
    z64 = z.astype(np.float64)
    lse = z64.max(1) + np.log(np.exp(z64 - z64.max(1, keepdims=True)).sum(1))
    expected = np.mean(lse - z64[np.arange(64), y])
    assert loss.dtype == xp.float16 and cache.probs.dtype == xp.float16
    assert np.isfinite(float(to_numpy(loss)))
    assert float(to_numpy(loss)) == pytest.approx(expected, rel=1e-3)


def _bn_error(x: np.ndarray) -> float:
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    y, _, mean, _ = batch_norm_forward_train(xp.asarray(x), None, None, eps=1e-5, xp=xp)
    np.testing.assert_allclose(to_numpy(mean), x64.mean(0), rtol=1e-7)
    return float(np.abs(to_numpy(y) - ref).max())


def test_batch_norm_on_a_large_mean_is_at_least_as_accurate_as_torch() -> None:
    """Features around 1e4 in float32: 1.2e-3 from a float64 reference before (torch 3.9e-4)."""
    rng = np.random.default_rng(0)
    x = (1e4 + rng.normal(size=(256, 16))).astype(np.float32)
    error = _bn_error(x)
    assert error < 1e-5
    torch = pytest.importorskip("torch")
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    theirs = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True,
                                            eps=1e-5).numpy()
    assert error <= np.abs(theirs - ref).max()


def test_layer_norm_on_a_large_mean() -> None:
    rng = np.random.default_rng(1)
    x = (-1e4 + rng.normal(size=(16, 256))).astype(np.float32)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    y, _ = layer_norm_forward(xp.asarray(x), None, None, eps=1e-5, xp=xp)
    assert np.abs(to_numpy(y) - ref).max() < 1e-5


# --- labels and inputs with clear messages -------------------------------------------------


def test_a_huge_float_label_is_reported_as_itself() -> None:
    from nnxp import Sequential  # noqa: PLC0415
    from nnxp.layers import Dense  # noqa: PLC0415

    model = Sequential([Dense(2, 3)], seed=0)
    X = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match=r"labels in \[0, 1e\+20\], but the model has 3 outputs"):
        model.fit(X, np.array([0, 1, 1e20, 2], np.float32), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"labels in \[-1, 2\]"):
        model.fit(X, np.array([0, -1, 1, 2]), epochs=1, verbose=0)


def test_a_masked_array_is_refused_by_name() -> None:
    from nnxp import Sequential  # noqa: PLC0415
    from nnxp.layers import Dense  # noqa: PLC0415

    model = Sequential([Dense(2, 3)], seed=0)
    X = np.ones((4, 2), np.float32)
    y = np.ma.masked_array([0, 1, 2, 1], mask=[0, 1, 0, 0])
    with pytest.raises(TypeError, match="y is a masked array"):
        model.fit(X, y, epochs=1, verbose=0)
    with pytest.raises(TypeError, match="X is a masked array"):
        model.fit(np.ma.masked_array(X), np.array([0, 1, 2, 1]), epochs=1, verbose=0)
