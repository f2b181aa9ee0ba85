"""Diagnostics: gradient norms per layer, dead ReLUs, saturated sigmoid/tanh units, the table."""

from __future__ import annotations

import numpy as np
import pytest

import nnxp
from nnxp import diagnostics
from nnxp.init import random_normal
from nnxp.layers import Dense, Layer, ReLU, Sigmoid, Tanh
from nnxp.optim import SGD


@pytest.fixture
def data(rng):
    X = rng.standard_normal((96, 10)).astype(np.float32)
    return X, rng.integers(0, 4, 96)


def deep(activation, init, depth: int = 8, width: int = 24, seed: int = 0) -> nnxp.Sequential:
    layers: list = []
    n_in = 10
    for _ in range(depth - 1):
        layers += [Dense(n_in, width, init=init), activation()]
        n_in = width
    layers.append(Dense(n_in, 4, init=init))
    return nnxp.Sequential(layers, seed=seed)


def grad_norms(history: nnxp.History) -> list[float]:
    return [series[-1] for series in history.diagnostics["grad_norm"].values()]


def test_vanishing_gradients_in_a_deep_sigmoid_net(bk, data) -> None:
    X, y = data
    kw = {"epochs": 2, "batch_size": 32, "verbose": 0, "diagnostics": True}
    sig = deep(Sigmoid, random_normal()).fit(X, y, optimizer=SGD(lr=0.1), **kw)
    relu = deep(ReLU, "he_normal").fit(X, y, optimizer=SGD(lr=0.1), **kw)
    s, r = grad_norms(sig), grad_norms(relu)
    assert len(s) == len(r) == 8
    assert s[0] / s[-1] < 1e-4  # the first layer learns 10 000x slower than the last
    assert 0.1 < r[0] / r[-1] < 10  # He init + ReLU keeps the scale
    assert all(a < b for a, b in zip(s, s[1:]))  # shrinking layer by layer
    table = sig.diagnostics_table()
    assert "vanishing?" in table and "0:Dense" in table and "13:Sigmoid" in table
    assert "vanishing?" not in relu.diagnostics_table()


def test_gradient_norm_is_that_of_the_step(bk, data) -> None:
    # full batch, one step per epoch: the recorded norm is that of the gradient at the start
    X, y = data
    model = deep(ReLU, "he_normal", depth=3)
    twin = deep(ReLU, "he_normal", depth=3)
    twin.loss_and_grads(nnxp.asarray(X), nnxp.asarray(y))
    expected = [np.sqrt(sum(np.sum(nnxp.to_numpy(g).astype(np.float64) ** 2)
                            for g in layer.grads.values()))
                for layer in twin.layers if layer.params]
    h = model.fit(X, y, epochs=1, batch_size=None, verbose=0, diagnostics=True)
    got = [series[0] for series in h.diagnostics["grad_norm"].values()]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert list(h.diagnostics["grad_norm"]) == ["0:Dense", "2:Dense", "4:Dense"]


def test_dead_relus_from_a_large_negative_bias(bk, data) -> None:
    X, y = data
    model = nnxp.Sequential([Dense(10, 16), ReLU(), Dense(16, 16), ReLU(), Dense(16, 4)], seed=1)
    b = nnxp.to_numpy(model.layers[2].params["b"]).copy()
    b[:12] = -100.0  # 12 of 16 units of the second ReLU layer can never fire
    model.layers[2].params["b"] = nnxp.asarray(b)
    h = model.fit(X, y, epochs=2, batch_size=32, verbose=0, diagnostics=True)
    dead = h.diagnostics["dead_fraction"]
    assert set(dead) == {"1:ReLU", "3:ReLU"} and h.diagnostics["kind"]["3:ReLU"] == "relu"
    assert dead["3:ReLU"] == [0.75, 0.75]
    # the first layer: recompute on the probe batch from the final weights
    W, b0 = (nnxp.to_numpy(model.layers[0].params[k]) for k in ("W", "b"))
    hidden = np.maximum(X @ W + b0, 0)
    assert dead["1:ReLU"][-1] == pytest.approx(np.mean(hidden.max(axis=0) <= 0))
    assert "many dead units" in h.diagnostics_table()


def test_saturated_fractions_match_numpy(bk, data) -> None:
    X, y = data
    model = nnxp.Sequential([Dense(10, 12, init=random_normal(std=2.0)), Sigmoid(),
                             Dense(12, 12, init=random_normal(std=2.0)), Tanh(),
                             Dense(12, 4)], seed=2)
    h = model.fit(X, y, epochs=1, batch_size=32, verbose=0, diagnostics=True)
    p = {k: nnxp.to_numpy(v) for k, v in model.layers[0].params.items()}
    q = {k: nnxp.to_numpy(v) for k, v in model.layers[2].params.items()}
    s = 1 / (1 + np.exp(-(X.astype(np.float64) @ p["W"] + p["b"])))
    t = np.tanh(s @ q["W"] + q["b"])
    sat = h.diagnostics["saturated_fraction"]
    assert sat["1:Sigmoid"][0] == pytest.approx(np.mean((s < 0.01) | (s > 0.99)), abs=1e-3)
    assert sat["3:Tanh"][0] == pytest.approx(np.mean(np.abs(t) > 0.99), abs=1e-3)
    assert 0.2 < sat["1:Sigmoid"][0] < 1  # the test is not vacuous
    assert h.diagnostics["kind"] == {"1:Sigmoid": "sigmoid", "3:Tanh": "tanh"}


def test_the_probe_is_the_first_samples(bk, data) -> None:
    X, y = data
    X = np.concatenate([X, np.full((diagnostics.PROBE_SIZE, 10), -50.0, np.float32)])
    y = np.concatenate([y, np.zeros(diagnostics.PROBE_SIZE, int)])
    model = nnxp.Sequential([Dense(10, 8), ReLU(), Dense(8, 4)], seed=3)
    h = model.fit(X, y, epochs=1, verbose=0, diagnostics=True, optimizer=SGD(lr=1e-6))
    W, b = (nnxp.to_numpy(model.layers[0].params[k]) for k in ("W", "b"))
    probe = X[:diagnostics.PROBE_SIZE]
    expected = np.mean(np.maximum(probe @ W + b, 0).max(axis=0) <= 0)
    assert h.diagnostics["dead_fraction"]["1:ReLU"][0] == pytest.approx(expected)


# --- recognising layers ---------------------------------------------------------------------------


class Logistic(Layer):  # a stand-in for a user's own sigmoid layer
    diagnostic_kind = "sigmoid"


class relu(Layer):  # noqa: N801 - the class name alone identifies it
    pass


def test_layer_kind() -> None:
    assert diagnostics.layer_kind(ReLU()) == "relu"
    assert diagnostics.layer_kind(Sigmoid()) == "sigmoid"
    assert diagnostics.layer_kind(Tanh()) == "tanh"
    assert diagnostics.layer_kind(Logistic()) == "sigmoid"
    assert diagnostics.layer_kind(relu()) == "relu"
    assert diagnostics.layer_kind(Dense(2, 2)) is None
    assert diagnostics.layer_kind(Dense(2, 2, activation="tanh")) == "tanh"
    assert diagnostics.layer_kind(nnxp.layers.LeakyReLU()) is None
    assert diagnostics.layer_label(3, ReLU()) == "3:ReLU"


def test_fused_activation_is_diagnosed(bk, data) -> None:
    X, y = data
    model = nnxp.Sequential([Dense(10, 8, activation="relu"), Dense(8, 4)], seed=0)
    h = model.fit(X, y, epochs=1, verbose=0, diagnostics=True)
    assert set(h.diagnostics["grad_norm"]) == {"0:Dense", "1:Dense"}
    assert set(h.diagnostics["dead_fraction"]) == {"0:Dense"}
    row = next(line for line in h.diagnostics_table().splitlines() if line.startswith("0:Dense"))
    assert "relu" in row and "%" in row


# --- table and plot -------------------------------------------------------------------------------


def test_table_and_its_errors(bk, data) -> None:
    X, y = data
    h = nnxp.Sequential([Dense(10, 8), ReLU(), Dense(8, 4)], seed=0).fit(
        X, y, epochs=3, verbose=0, diagnostics=True)
    assert h.diagnostics["epoch"] == [1, 2, 3]
    assert diagnostics.format_table(h) == h.diagnostics_table()
    assert h.diagnostics_table(epoch=1).startswith("diagnostics at epoch 1")
    with pytest.raises(ValueError, match=r"epoch=9 has no diagnostics; recorded epochs: \[1, 2, 3"):
        h.diagnostics_table(epoch=9)
    plain = nnxp.Sequential([Dense(10, 4)], seed=0).fit(X, y, epochs=1, verbose=0)
    assert plain.diagnostics == {}
    assert "diagnostics=True" in plain.diagnostics_table()


def test_diagnostics_plot_writes_a_png(tmp_path, data) -> None:
    pytest.importorskip("matplotlib")
    X, y = data
    h = deep(Sigmoid, random_normal(), depth=3).fit(X, y, epochs=2, verbose=0, diagnostics=True)
    path = tmp_path / "diag.png"
    diagnostics.plot(h, path, title="sigmoid")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no diagnostics"):
        diagnostics.plot(nnxp.History(), tmp_path / "none.png")
