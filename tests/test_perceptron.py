"""Rosenblatt's perceptron: convergence on separable data (within Novikoff's bound), the rule
checked step by step against a plain-Python reference, and the XOR demonstration."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nnxp
from nnxp.layers import Dense, ReLU
from nnxp.perceptron import ConvergenceWarning, Perceptron, rosenblatt_update

DTYPES = ["float32", "float64"]
XOR_X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_Y = np.array([0, 1, 1, 0])


def _separable(seed: int, n: int = 60, d: int = 3, margin: float = 0.2):
    """Points at distance ≥ margin from the hyperplane u·(x, 1) = 0 (u a unit vector in R^{d+1}),
    labelled by its side; returns X, y in {0, 1}, u, and the margin guaranteed."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(d + 1)
    u /= np.linalg.norm(u)
    X = np.empty((0, d))
    while len(X) < n:
        cand = rng.uniform(-2.0, 2.0, (4 * n, d))
        dist = cand @ u[:d] + u[d]
        X = np.vstack([X, cand[np.abs(dist) >= margin]])
    X = X[:n]
    return X, (X @ u[:d] + u[d] > 0).astype(np.int64), u, margin


def _reference_fit(X: np.ndarray, t: np.ndarray, lr: float, max_epochs: int):
    """Rosenblatt's rule with plain Python floats, samples in order."""
    w, b = [0.0] * X.shape[1], 0.0
    per_epoch = []
    for _ in range(max_epochs):
        mistakes = 0
        for xi, ti in zip(X.tolist(), t.tolist()):
            fired = 1.0 if sum(wj * xj for wj, xj in zip(w, xi)) + b > 0 else 0.0
            err = ti - fired
            if err:
                mistakes += 1
                w = [wj + lr * err * xj for wj, xj in zip(w, xi)]
                b += lr * err
        per_epoch.append(mistakes)
        if mistakes == 0:
            break
    return np.array(w), b, per_epoch


@pytest.mark.parametrize("dtype", DTYPES)
def test_separates_a_linearly_separable_set_within_novikoffs_bound(bk, dtype) -> None:
    X, y, _, margin = _separable(0)
    clf = Perceptron(max_epochs=200, seed=1, dtype=dtype).fit(X, y)
    assert clf.converged_
    assert 1 <= clf.n_epochs_ < 200 and clf.mistakes_per_epoch_[-1] == 0
    assert clf.score(X, y) == 1.0
    np.testing.assert_array_equal(bk.to_numpy(clf.predict(X)), y)
    R = np.linalg.norm(np.hstack([X, np.ones((len(X), 1))]), axis=1).max()
    assert 0 < clf.n_mistakes_ <= (R / margin) ** 2  # Novikoff: mistakes ≤ (R/γ)²
    assert clf.n_mistakes_ == sum(clf.mistakes_per_epoch_)
    assert nnxp.backend.dtype_name(clf.coef_.dtype) == dtype
    assert str(nnxp.backend.device_of(clf.coef_)) == str(bk.device)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rule_matches_plain_python_reference_step_by_step(bk, dtype) -> None:
    # half-integer data and lr = 1: every sum is exact in float32, so the runs agree exactly
    rng = np.random.default_rng(3)
    X = rng.integers(-6, 7, (30, 4)) / 2.0
    t = (X @ np.array([1.0, -1.0, 0.5, 2.0]) + 0.25 > 0).astype(np.int64)
    w_ref, b_ref, per_epoch = _reference_fit(X, t, 1.0, 50)
    clf = Perceptron(lr=1.0, max_epochs=50, shuffle=False, dtype=dtype).fit(X, t)
    assert clf.mistakes_per_epoch_ == per_epoch
    np.testing.assert_array_equal(bk.to_numpy(clf.coef_), w_ref)
    assert nnxp.backend.to_float(clf.intercept_) == b_ref


def test_update_kernel_changes_nothing_on_a_correct_sample(bk) -> None:
    w = bk.asarray(np.array([1.0, -1.0]), "float64")
    b = bk.asarray(np.array(0.5), "float64")
    x = bk.asarray(np.array([2.0, 1.0]), "float64")  # z = 1.5 > 0: fires
    one, zero = bk.asarray(np.array(1.0), "float64"), bk.asarray(np.array(0.0), "float64")
    w2, b2, miss = rosenblatt_update(x, one, w, b, lr=0.5, xp=bk.xp)
    np.testing.assert_array_equal(bk.to_numpy(w2), [1.0, -1.0])
    assert nnxp.backend.to_float(miss) == 0.0 and nnxp.backend.to_float(b2) == 0.5
    w3, b3, miss = rosenblatt_update(x, zero, w, b, lr=0.5, xp=bk.xp)  # a false positive
    np.testing.assert_array_equal(bk.to_numpy(w3), [0.0, -1.5])  # w − lr·x
    assert nnxp.backend.to_float(miss) == 1.0 and nnxp.backend.to_float(b3) == 0.0


def test_signed_labels_train_identically_and_predict_in_their_coding(bk) -> None:
    X, y, _, _ = _separable(5, n=40, d=2)
    a = Perceptron(seed=2, dtype="float64").fit(X, y)
    b = Perceptron(seed=2, dtype="float64").fit(X, 2 * y - 1)
    assert b.classes_ == (-1, 1) and a.classes_ == (0, 1)
    np.testing.assert_array_equal(bk.to_numpy(a.coef_), bk.to_numpy(b.coef_))
    np.testing.assert_array_equal(bk.to_numpy(b.predict(X)), 2 * y - 1)
    assert b.score(X, 2 * y - 1) == 1.0
    c = Perceptron(seed=2, dtype="float64").fit(X, y.astype(bool))
    assert c.classes_ == (0, 1) and c.mistakes_per_epoch_ == a.mistakes_per_epoch_


def test_learning_rate_only_rescales_the_weights(bk) -> None:
    X, y, _, _ = _separable(7, n=40, d=3)
    a = Perceptron(lr=1.0, seed=0, dtype="float64").fit(X, y)
    b = Perceptron(lr=0.25, seed=0, dtype="float64").fit(X, y)  # a power of two: exact scaling
    assert a.mistakes_per_epoch_ == b.mistakes_per_epoch_
    np.testing.assert_array_equal(bk.to_numpy(b.coef_) * 4.0, bk.to_numpy(a.coef_))


def test_perceptron_cannot_learn_xor(bk) -> None:
    """No line separates XOR: every epoch makes a mistake, and at most 3 of 4 points are right."""
    clf = Perceptron(max_epochs=60, seed=0)
    with pytest.warns(ConvergenceWarning, match="did not converge in max_epochs=60"):
        clf.fit(XOR_X, XOR_Y)
    assert not clf.converged_ and clf.n_epochs_ == 60
    assert min(clf.mistakes_per_epoch_) >= 1
    assert clf.score(XOR_X, XOR_Y) <= 0.75
    # and this is not a matter of too few epochs: no (w, b) on a fine grid gets all four right
    grid = np.linspace(-2.0, 2.0, 41)
    W1, W2, B = np.meshgrid(grid, grid, grid)
    z = W1[..., None] * XOR_X[:, 0] + W2[..., None] * XOR_X[:, 1] + B[..., None]
    assert not np.any(np.all((z > 0) == XOR_Y.astype(bool), axis=-1))


def test_a_two_layer_mlp_learns_xor(bk) -> None:
    model = nnxp.Sequential([Dense(2, 8), ReLU(), Dense(8, 2)], seed=0)
    history = model.fit(XOR_X, XOR_Y, epochs=500, batch_size=None, verbose=0,
                        optimizer=nnxp.optim.SGD(lr=0.5))
    np.testing.assert_array_equal(bk.to_numpy(model.predict(XOR_X)), XOR_Y)
    assert history["accuracy"][-1] == 1.0
    assert history["loss"][-1] < 0.1 < history["loss"][0]


def test_bad_input_gets_clear_errors(bk) -> None:
    with pytest.raises(ValueError, match=r"binary labels in \{0, 1\} or \{-1, 1\}.*2\.0"):
        Perceptron().fit(XOR_X, [0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"one label per sample \(4\).*\(3,\)"):
        Perceptron().fit(XOR_X, [0, 1, 1])
    with pytest.raises(ValueError, match="lr must be > 0"):
        Perceptron(lr=0.0)
    with pytest.raises(ValueError, match="max_epochs must be > 0"):
        Perceptron(max_epochs=0)
    with pytest.raises(RuntimeError, match="not fitted"):
        Perceptron().predict(XOR_X)
    clf = Perceptron(max_epochs=5)
    with pytest.warns(ConvergenceWarning):
        clf.fit(XOR_X, XOR_Y)
    with pytest.raises(ValueError, match="3 features per sample but the model expects 2"):
        clf.predict(np.ones((2, 3)))


def test_decision_function_is_the_affine_score(bk) -> None:
    X, y, _, _ = _separable(11, n=30, d=2)
    clf = Perceptron(seed=0, dtype="float64").fit(X, y)
    w, b = bk.to_numpy(clf.coef_), nnxp.backend.to_float(clf.intercept_)
    np.testing.assert_allclose(bk.to_numpy(clf.decision_function(X)), X @ w + b, rtol=1e-12)
    assert math.isfinite(b) and repr(clf).startswith("Perceptron(")
