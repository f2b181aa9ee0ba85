"""Training on bad or extreme data (issue 16): checks before the first step, an error mid-epoch
that leaves the model as it was before that step, and a divergence guard that covers buffers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nnxp
from nnxp import Sequential
from nnxp.backend import to_numpy
from nnxp.callbacks import TerminateOnNaN
from nnxp.layers import BatchNorm1d, Dense, ReLU
from nnxp.optim import SGD
from nnxp.training import TrainingDivergedError


def _weights(model: Sequential) -> list[np.ndarray]:
    return [to_numpy(v).copy() for layer in model.layers
            for v in [*layer.params.values(), *getattr(layer, "buffers", {}).values()]]


@pytest.mark.parametrize("split", [0.0, 0.25])
def test_a_last_batch_of_one_for_batchnorm_is_refused_before_the_first_step(split: float) -> None:
    n = 33 if not split else 44  # 44 · 0.75 = 33 training samples
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(n, 4)).astype(np.float32), np.arange(n) % 2
    model = Sequential([Dense(4, 8), BatchNorm1d(8), ReLU(), Dense(8, 2)], seed=0)
    before = _weights(model)
    with pytest.raises(ValueError, match=r"layers\[1\] \(BatchNorm1d\) needs at least 2 .*"
                                         r"33 training samples in batches of 32.*last batch of 1"):
        model.fit(X, y, epochs=2, batch_size=32, verbose=0, validation_split=split)
    for a, b in zip(before, _weights(model)):
        np.testing.assert_array_equal(a, b)
    assert model.layers[1].num_batches_tracked == 0
    with pytest.raises(ValueError, match="batches of 1"):
        model.fit(X, y, epochs=1, batch_size=1, verbose=0)


class _FailOnCall(ReLU):
    """A ReLU whose ``calls``-th training forward raises."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls, self.seen = calls, 0

    def forward(self, x: Any, *, training: bool = True) -> Any:
        if training:
            self.seen += 1
            if self.seen == self.calls:
                raise RuntimeError("a layer failed mid-epoch")
        return super().forward(x, training=training)


def test_an_error_mid_epoch_leaves_the_model_as_before_that_step() -> None:
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(40, 3)).astype(np.float32), np.arange(40) % 2
    reference = Sequential([Dense(3, 4), BatchNorm1d(4, momentum=None), ReLU(), Dense(4, 2)],
                           seed=0)
    reference.fit(X[:16], y[:16], epochs=1, batch_size=8, shuffle=False, verbose=0,
                  optimizer=SGD(lr=0.1))  # the two steps before the failing one
    failing = Sequential([Dense(3, 4), BatchNorm1d(4, momentum=None), _FailOnCall(3),
                          Dense(4, 2)], seed=0)
    with pytest.raises(RuntimeError, match="failed mid-epoch"):
        failing.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=0,
                    optimizer=SGD(lr=0.1))
    for a, b in zip(_weights(reference), _weights(failing)):
        np.testing.assert_array_equal(a, b)
    assert failing.layers[1].num_batches_tracked == 2


def _overflowing_running_var() -> tuple[Sequential, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    X = (rng.normal(size=(32, 2)) * 3e19).astype(np.float32)  # batch variance ~1e39: inf
    return Sequential([BatchNorm1d(2), Dense(2, 2)], seed=0), X, np.arange(32) % 2


def test_divergence_guard_covers_buffers(tmp_path: Path) -> None:
    """BatchNorm's running variance overflowed, fit and save succeeded, load refused the file."""
    model, X, y = _overflowing_running_var()
    with pytest.raises(TrainingDivergedError, match="parameter or buffer"):
        model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    assert all(np.isfinite(a).all() for a in _weights(model))  # restored: finite again
    model.save(tmp_path / "m.npz")
    nnxp.load(tmp_path / "m.npz")


def test_terminate_on_nan_stops_quietly_on_a_non_finite_buffer() -> None:
    model, X, y = _overflowing_running_var()
    stop = TerminateOnNaN()
    history = model.fit(X, y, epochs=2, batch_size=16, verbose=0, callbacks=[stop])
    assert history.diverged is not None and stop.triggered is not None
    assert all(np.isfinite(a).all() for a in _weights(model))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_gated_steps_do_not_count_their_batches(momentum: float | None) -> None:
    """A non-finite step and the steps gated after it leave BatchNorm1d's running statistics
    and its batch count as they were (the count weights the next batch when momentum=None):
    the model equals one trained on the batches before the failing one — in fit (two gated
    steps before the check point at the end of the epoch) and in train_on_batch."""
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(40, 3)).astype(np.float32), np.arange(40) % 2
    X[26, 0] = 1e30  # batch 4 of 5 (rows 24-31): its variance overflows float32

    def make() -> Sequential:
        return Sequential([Dense(3, 4), BatchNorm1d(4, momentum=momentum), ReLU(),
                           Dense(4, 2)], seed=0)

    reference = make()
    reference.fit(X[:24], y[:24], epochs=1, batch_size=8, shuffle=False, verbose=0,
                  optimizer=SGD(lr=0.1))  # the three steps before the failing one
    failing = make()
    with pytest.raises(TrainingDivergedError, match="step 4 "):
        failing.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=0,
                    optimizer=SGD(lr=0.1))
    for a, b in zip(_weights(reference), _weights(failing)):
        np.testing.assert_array_equal(a, b)
    assert failing.layers[1].num_batches_tracked == 3
    assert failing.optimizer.iterations == 3
    with pytest.raises(TrainingDivergedError, match="the update was skipped"):
        failing.train_on_batch(X[24:32], y[24:32], optimizer=failing.optimizer)
    assert failing.layers[1].num_batches_tracked == 3
    for a, b in zip(_weights(reference), _weights(failing)):
        np.testing.assert_array_equal(a, b)


def test_one_copy_of_the_running_statistics_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step's undo and the divergence gate share one copy of an in-place BatchNorm's
    running statistics (they took one each)."""
    from nnxp import training

    calls: list[Any] = []
    real = training._saved_buffers
    monkeypatch.setattr(training, "_saved_buffers",
                        lambda layer: calls.append(layer) or real(layer))
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(40, 3)).astype(np.float32), np.arange(40) % 2
    model = Sequential([Dense(3, 4), BatchNorm1d(4), ReLU(), Dense(4, 2)], seed=0)
    model.fit(X, y, epochs=2, batch_size=8, verbose=0, optimizer=SGD(lr=0.1))
    assert len(calls) == 2 * 5  # one per step, for the one layer with buffers
