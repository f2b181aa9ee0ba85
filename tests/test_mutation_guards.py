"""Tests that would notice a bug the rest of the suite let through (issue 16): each was checked
to fail with the named mutation applied to the library."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nnxp
from nnxp import Sequential
from nnxp.backend import to_numpy
from nnxp.cli import main
from nnxp.kernels import activations as act
from nnxp.kernels import optimizers as ko
from nnxp.layers import Dense, ReLU
from nnxp.optim import SGD, Adam

xp = nnxp.get_backend().xp


def test_softplus_backward_uses_beta() -> None:
    """Mutation: softplus_backward ignoring beta (dy · sigmoid(x))."""
    x = np.linspace(-3, 3, 13)
    dy = np.linspace(0.5, 1.5, 13)
    for beta in (0.5, 2.0, 3.0):
        got = to_numpy(act.softplus_backward(xp.asarray(dy), xp.asarray(x), beta, xp=xp))
        np.testing.assert_allclose(got, dy / (1 + np.exp(-beta * x)), rtol=1e-12)
        h = 1e-6  # and the derivative of the forward, by central differences
        fd = (to_numpy(act.softplus(xp.asarray(x + h), beta, xp=xp))
              - to_numpy(act.softplus(xp.asarray(x - h), beta, xp=xp))) / (2 * h)
        np.testing.assert_allclose(got, dy * fd, rtol=1e-7)


def test_adamw_kernel_decay_is_decoupled() -> None:
    """Mutation: adamw_update switched to coupled decay (λθ added to the gradient)."""
    rng = np.random.default_rng(0)
    theta = rng.normal(size=7)
    grad = rng.normal(size=7) * 1e-3  # small gradients: coupled decay would dominate them
    lr, wd = 0.1, 0.5
    new, _ = ko.adamw_update(xp.asarray(theta), xp.asarray(grad),
                             ko.adam_init(xp.asarray(theta), xp=xp), lr=lr, weight_decay=wd,
                             xp=xp)
    # decoupled: θ(1 − γλ), then the plain Adam step; Adam's first step is −γ·sign(g) (eps aside)
    bias1, bias2 = 1 - 0.9, 1 - 0.999
    m, v = 0.1 * grad / bias1, 0.001 * grad**2 / bias2
    expected = theta * (1 - lr * wd) - lr * m / (np.sqrt(v) + 1e-8)
    np.testing.assert_allclose(to_numpy(new), expected, rtol=1e-10)


def test_optimizer_state_dict_is_a_copy() -> None:
    """Mutation: Optimizer.state_dict() returning views of the live buffers."""
    model = Sequential([Dense(3, 2)], seed=0, loss="mse")
    X, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
    opt = Adam(lr=0.1)
    model.fit(X, y, optimizer=opt, epochs=1, verbose=0)
    taken = opt.state_dict()
    before = {i: {k: np.array(v, copy=True) for k, v in s.items() if isinstance(v, np.ndarray)}
              for i, s in taken["state"].items()}
    assert before and any(before.values())
    model.fit(X, y, optimizer=opt, epochs=1, verbose=0)  # steps again: buffers change
    for i, arrays in before.items():
        for name, value in arrays.items():
            np.testing.assert_array_equal(taken["state"][i][name], value)


class _Spy(ReLU):
    """ReLU (the identity on the non-negative inputs below) that records the training batches."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[np.ndarray] = []

    def forward(self, x: Any, *, training: bool = True) -> Any:
        if training:
            self.seen.append(to_numpy(x)[:, 0].astype(int))
        return super().forward(x, training=training)


def test_each_epoch_has_its_own_shuffle_order() -> None:
    """Mutation: the same shuffle order in every epoch (e.g. the permutation drawn once)."""
    n = 40
    X = np.stack([np.arange(n), np.ones(n)], axis=1).astype(np.float32)
    spy = _Spy()
    model = Sequential([spy, Dense(2, 1)], seed=0, loss="mse")
    model.fit(X, np.zeros((n, 1), np.float32), epochs=3, batch_size=8, verbose=0,
              optimizer=SGD(lr=1e-30))
    orders = [np.concatenate(spy.seen[i * 5:(i + 1) * 5]) for i in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(n))  # each epoch sees every sample once
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])


def test_epoch_loss_weights_the_partial_last_batch_by_its_size() -> None:
    """Mutation: the epoch loss weighting a partial last batch as a full one."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(10, 3)).astype(np.float32)
    y = np.concatenate([np.zeros((8, 1)), np.full((2, 1), 50.0)]).astype(np.float32)
    model = Sequential([Dense(3, 1)], seed=0, loss="mse")
    history = model.fit(X, y, epochs=1, batch_size=4, shuffle=False, verbose=0,
                        optimizer=SGD(lr=1e-30))  # weights fixed: the epoch loss is the data's
    expected = model.evaluate(X, y)["loss"]
    assert history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_cli_reports_an_os_error_inside_a_command(tmp_path: Path, capsys: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: main() not catching OSError (a full disk during --save)."""
    data = tmp_path / "d.csv"
    rows = ["a,b,t"] + [f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(40)]
    data.write_text("\n".join(rows) + "\n")

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nnxp.archive, "atomic_write", full_disk)
    status = main(["train", "--data", str(data), "--target", "t", "--task", "classify",
                   "--epochs", "1", "--quiet", "--save", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert status == 2
    assert "No space left on device" in err and "Traceback" not in err
