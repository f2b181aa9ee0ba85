"""Resuming from a checkpoint equals the uninterrupted run, bit for bit (issue 16): model,
optimizer, learning-rate schedules, callbacks' own state, BatchNorm's batch counter and every
generator (shuffling, dropout masks)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nnxp import Sequential
from nnxp.backend import to_numpy
from nnxp.callbacks import EarlyStopping, LearningRateScheduler, ModelCheckpoint
from nnxp.io import load
from nnxp.layers import BatchNorm1d, Dense, Dropout, ReLU
from nnxp.optim import SGD, Adam, RMSprop
from nnxp.schedules import ReduceLROnPlateau, StepLR

EPOCHS = 6


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(83, 5)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1).astype(np.int64)
    w = rng.uniform(0.5, 2.0, size=83).astype(np.float32)
    return X, y, w


def _model() -> Sequential:
    return Sequential([Dense(5, 16), BatchNorm1d(16, momentum=None), ReLU(), Dropout(0.3),
                       Dense(16, 3)], seed=1)


def _schedule(kind: str) -> Any:
    if kind == "step":
        return LearningRateScheduler(StepLR(step_size=2, gamma=0.5))
    if kind == "function":
        return LearningRateScheduler(lambda epoch: 0.01 * 0.5 ** (epoch // 2))
    return LearningRateScheduler(ReduceLROnPlateau(patience=0, factor=0.5, threshold=0.5))


OPTIMIZERS = {"sgd": lambda: SGD(lr=0.01, momentum=0.9),
              "adam": lambda: Adam(lr=0.01), "rmsprop": lambda: RMSprop(lr=0.01)}


def _fit(model: Sequential, kind: str, opt: str, path: Path | None, *,
         resume_from: Path | None = None) -> tuple[Any, EarlyStopping]:
    X, y, w = _data()
    stop = EarlyStopping("val_loss", patience=100, restore_best_weights=False)
    cbs: list[Any] = [_schedule(kind), stop]
    if path is not None:
        cbs.insert(0, ModelCheckpoint(path))  # first in the list: it must still save last
    history = model.fit(X, y, epochs=EPOCHS, batch_size=16, verbose=0, validation_split=0.2,
                        sample_weight=w, callbacks=cbs,
                        optimizer=None if resume_from is not None else OPTIMIZERS[opt](),
                        resume_from=resume_from)
    return history, stop


def _state(model: Sequential) -> list[np.ndarray]:
    out = []
    for layer in model.layers:
        out += [to_numpy(v) for v in layer.params.values()]
        out += [to_numpy(v) for v in getattr(layer, "buffers", {}).values()]
    return out


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["step", "function", "plateau"])
def test_resume_at_every_epoch_equals_the_uninterrupted_run(tmp_path: Path, kind: str,
                                                            opt: str) -> None:
    full = _model()
    history, stop = _fit(full, kind, opt, tmp_path / "ckpt-{epoch}.npz")
    for k in (1, 3, 5):
        resumed = _model()
        part, part_stop = _fit(resumed, kind, opt, None, resume_from=tmp_path / f"ckpt-{k}.npz")
        assert part.epoch == list(range(k + 1, EPOCHS + 1))
        assert part["lr"] == history["lr"][k:], f"resumed after epoch {k}: learning rates"
        assert part["loss"] == history["loss"][k:], f"resumed after epoch {k}: losses"
        for a, b in zip(_state(full), _state(resumed)):
            np.testing.assert_array_equal(a, b)
        assert resumed.layers[1].num_batches_tracked == full.layers[1].num_batches_tracked
        assert (part_stop.best, part_stop.best_epoch, part_stop.wait) == \
            (stop.best, stop.best_epoch, stop.wait)


def test_step_schedule_continues_rather_than_restarting(tmp_path: Path) -> None:
    """The issue's case: epochs 4-6 ran lr [0.01, 0.01, 0.005], not [0.005, 0.0025, 0.0025]."""
    full = _model()
    history, _ = _fit(full, "step", "sgd", tmp_path / "ckpt-{epoch}.npz")
    assert history["lr"] == [0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025]
    part, _ = _fit(_model(), "step", "sgd", None, resume_from=tmp_path / "ckpt-3.npz")
    assert part["lr"] == [0.005, 0.0025, 0.0025]


def test_early_stopping_patience_survives_a_restart(tmp_path: Path) -> None:
    X, y, _ = _data()
    path = tmp_path / "ckpt.npz"

    def run(resume: bool) -> EarlyStopping:
        stop = EarlyStopping("loss", patience=2, min_delta=10.0)  # nothing ever improves enough
        Sequential([Dense(5, 3)], seed=0).fit(
            X, y, epochs=2 if not resume else 10, verbose=0, optimizer=None if resume
            else SGD(lr=0.01), callbacks=[stop] + ([] if resume else [ModelCheckpoint(path)]),
            resume_from=path if resume else None)
        return stop

    first = run(False)
    assert first.wait == 1 and math.isfinite(first.best)
    second = run(True)  # one more epoch without improvement reaches patience 2
    assert second.stopped_epoch == 3


def test_batchnorm_counter_is_saved(tmp_path: Path) -> None:
    bn = BatchNorm1d(3, momentum=None)
    m = Sequential([Dense(2, 3), bn], seed=0, loss="mse")
    X = np.ones((8, 2), np.float32)
    m.fit(X, np.zeros((8, 3), np.float32), epochs=2, batch_size=4, verbose=0)
    assert bn.num_batches_tracked == 4
    m.save(tmp_path / "m.npz")
    assert load(tmp_path / "m.npz").layers[1].num_batches_tracked == 4
