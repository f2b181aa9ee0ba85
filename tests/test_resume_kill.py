"""Kill -9 at random points, resume, and get the uninterrupted run bit for bit (issue 16).

A chain of child processes trains one model towards ``EPOCHS`` epochs with a ModelCheckpoint;
each is killed with SIGKILL after a random delay (mid-epoch, mid-save, between epochs), and the
next resumes from the checkpoint left behind. The last one runs to the end; its weights must
equal those of a run never interrupted.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EPOCHS = 250  # ~11 ms each with a checkpoint: 20 kills within 0.08 s reach ~145 at most
TRIALS = 20
ROOT = Path(__file__).resolve().parents[1]


def train(path: Path | None, *, announce: bool = False) -> object:
    """Train (resuming from ``path`` when it exists) up to EPOCHS epochs; return the model."""
    from nnxp import Sequential  # noqa: PLC0415 - also runs as a child process
    from nnxp.callbacks import EarlyStopping, LearningRateScheduler, ModelCheckpoint  # noqa: PLC0415
    from nnxp.layers import BatchNorm1d, Dense, Dropout, ReLU  # noqa: PLC0415
    from nnxp.optim import Adam  # noqa: PLC0415
    from nnxp.schedules import StepLR  # noqa: PLC0415

    rng = np.random.default_rng(5)
    X = rng.normal(size=(96, 6)).astype(np.float32)
    y = (X[:, 0] - X[:, 3] > 0).astype(np.int64)
    w = rng.uniform(0.5, 1.5, 96).astype(np.float32)
    model = Sequential([Dense(6, 24), BatchNorm1d(24, momentum=None), ReLU(), Dropout(0.2),
                        Dense(24, 2)], seed=4)
    callbacks: list[object] = [LearningRateScheduler(StepLR(step_size=7, gamma=0.5)),
                               EarlyStopping("val_loss", patience=1000)]
    resume = path if path is not None and path.exists() else None
    if path is not None:
        callbacks.append(ModelCheckpoint(path))
    if announce:
        print("ready", flush=True)
    model.fit(X, y, epochs=EPOCHS, batch_size=16, verbose=0, validation_split=0.25,
              sample_weight=w, callbacks=callbacks,
              optimizer=None if resume else Adam(lr=0.01), resume_from=resume)
    return model


def _arrays(model: object) -> list[np.ndarray]:
    from nnxp.backend import to_numpy  # noqa: PLC0415

    return [to_numpy(v) for layer in model.layers  # type: ignore[attr-defined]
            for v in [*layer.params.values(), *layer.buffers.values()]]


@pytest.mark.slow  # about 20 s: twenty child processes, each importing nnxp
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_at_random_points_and_resumed_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    import nnxp  # noqa: PLC0415

    reference = _arrays(train(None))
    path = tmp_path / "ckpt.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    chooser = random.Random(16)
    kills, progress = 0, []
    for _ in range(TRIALS):
        child = subprocess.Popen([sys.executable, __file__, str(path)], env=env,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        try:
            child.wait(timeout=chooser.uniform(0.0, 0.08))
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            child.wait()
            kills += 1
        child.stdout.close()
        progress.append(nnxp.load(path).epochs_trained if path.exists() else 0)
    assert kills == TRIALS and 0 < progress[-1] < EPOCHS, progress
    train(path)  # the rest, uninterrupted
    final = nnxp.load(path)
    assert final.epochs_trained == EPOCHS
    for a, b in zip(reference, _arrays(final)):
        np.testing.assert_array_equal(a, b)


if __name__ == "__main__":
    train(Path(sys.argv[1]), announce=True)
