"""nnxp.gradcheck: passes correct gradients, catches wrong ones, on every backend."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

import nnxp
from nnxp.kernels import activations, dense
from nnxp.layers import Dense, Layer, ReLU


class ScaledWrongDense(Dense):
    """A deliberately broken layer: dW is off by 1 % — gradcheck must notice."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["W"] = self.grads["W"] * 1.01
        return dx


class WrongInputGrad(Layer):
    """y = x²; returns dx = x·dy instead of 2x·dy."""

    def forward(self, x, *, training=True):
        self._cache = x if training else None
        return x * x

    def backward(self, dy):
        return self._take_cache() * dy


def test_kernel_pair_passes(bk, rng) -> None:
    x, W, b = (bk.asarray(a) for a in (rng.standard_normal((3, 4)), rng.standard_normal((4, 2)),
                                       rng.standard_normal(2)))
    result = nnxp.gradcheck((dense.dense_forward, partial(dense.dense_backward, xp=bk.xp)),
                            x, W, b)
    assert result.passed and result.max_rel_error < 1e-7
    assert set(result.errors) == {"input[0]", "input[1]", "input[2]"}


def test_kernel_pair_with_wrong_gradient_fails(bk, rng) -> None:
    x = bk.asarray(rng.standard_normal((4, 3)) + 3.0)  # all positive: ReLU is the identity

    def wrong_backward(dy, y):
        return 0.5 * activations.relu_backward(dy, y, xp=bk.xp)

    pair = (partial(activations.relu, xp=bk.xp), wrong_backward)
    result = nnxp.gradcheck(pair, x)
    assert not result.passed and result.max_rel_error == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(nnxp.GradcheckError, match=r"largest relative error 5\.0+e-01"):
        nnxp.gradcheck(pair, x, raise_on_failure=True)


def test_layer_passes_and_restores_float32_params(bk, rng) -> None:
    layer = Dense(5, 3)
    before = nnxp.to_numpy(layer.params["W"]).copy()
    result = nnxp.gradcheck(layer, bk.asarray(rng.standard_normal((4, 5)), "float32"))
    assert result.passed and set(result.errors) == {"x", "W", "b"}
    assert layer.params["W"].dtype == bk.xp.float32
    np.testing.assert_array_equal(nnxp.to_numpy(layer.params["W"]), before)


def test_layer_with_wrong_parameter_gradient_fails(bk, rng) -> None:
    result = nnxp.gradcheck(ScaledWrongDense(4, 3, seed=0),
                            bk.asarray(rng.standard_normal((2, 4))))
    assert not result.passed
    # the 1 % error in dW stands out; the correct gradients sit at float64 round-off
    assert result.errors["W"] > 1e-3 and result.errors["b"] < 1e-6 and result.errors["x"] < 1e-6


def test_layer_with_wrong_input_gradient_fails(bk, rng) -> None:
    x = bk.asarray(rng.standard_normal((3, 2)) + 2.0)
    result = nnxp.gradcheck(WrongInputGrad(), x)
    assert result.errors["x"] == pytest.approx(0.5, rel=1e-5)


def test_model_passes_on_every_parameter(bk, rng) -> None:
    model = nnxp.Sequential([Dense(4, 6), ReLU(), Dense(6, 3)], seed=0)
    X = bk.asarray(rng.standard_normal((5, 4)))
    y = rng.integers(0, 3, size=5)
    result = nnxp.gradcheck(model, X, y=y, raise_on_failure=True)
    assert set(result.errors) == {"layers[0].W", "layers[0].b", "layers[2].W", "layers[2].b"}
    assert result.n_checked == model.count_params()


def test_model_with_a_broken_layer_fails(rng) -> None:
    model = nnxp.Sequential([ScaledWrongDense(4, 5), ReLU(), Dense(5, 3)], seed=0)
    result = nnxp.gradcheck(model, rng.standard_normal((6, 4)), y=rng.integers(0, 3, 6))
    assert not result.passed and result.errors["layers[0].W"] > 1e-3
    assert result.errors["layers[2].W"] < 1e-6


def test_max_entries_samples_a_subset(rng) -> None:
    layer = Dense(20, 10)
    result = nnxp.gradcheck(layer, rng.standard_normal((2, 20)), max_entries=5)
    assert result.n_checked == 5 * 3  # x, W and b, five entries each


def test_bad_targets_are_rejected() -> None:
    with pytest.raises(TypeError, match="gradcheck target must be"):
        nnxp.gradcheck(42, np.ones(3))
    with pytest.raises(TypeError, match="y="):
        nnxp.gradcheck(nnxp.Sequential([Dense(2, 2)]), np.ones((1, 2)))


def test_weight_penalties_are_part_of_the_checked_loss(bk, rng) -> None:
    """Dense(l1=, l2=) adds the penalty's gradient in backward; gradcheck must include it."""
    layer = Dense(4, 3, l1=0.05, l2=0.1)
    assert nnxp.gradcheck(layer, bk.asarray(rng.standard_normal((3, 4))), tol=1e-5).passed
    model = nnxp.Sequential([Dense(4, 5, l2=0.2), ReLU(), Dense(5, 3, l1=0.1)], seed=0)
    result = nnxp.gradcheck(model, bk.asarray(rng.standard_normal((6, 4))),
                            y=rng.integers(0, 3, 6))
    assert result.passed, result.errors


def test_a_layer_takes_a_host_batch_like_a_model_does(bk, rng) -> None:
    """gradcheck(layer, numpy_batch) moves the batch onto the layer's backend, as
    gradcheck(model, numpy_batch, y=...) and nested lists always did."""
    layer = Dense(4, 3, dtype="float64")
    x = rng.standard_normal((5, 4))
    result = nnxp.gradcheck(layer, x)
    assert result.passed
    assert result.max_rel_error == nnxp.gradcheck(layer, bk.asarray(x, "float64")).max_rel_error
