"""The training loop's module and the model's weight snapshots."""

from __future__ import annotations

import numpy as np
import pytest

import nnxp
from nnxp.layers import BatchNorm1d, Dense, ReLU
from nnxp.optim import SGD


def bn_model(seed: int = 0) -> nnxp.Sequential:
    return nnxp.Sequential([Dense(4, 8), BatchNorm1d(8), ReLU(), Dense(8, 3)], seed=seed)


@pytest.fixture
def data(rng):
    X = rng.standard_normal((40, 4)).astype(np.float32)
    return X, rng.integers(0, 3, 40)


def state(model: nnxp.Sequential) -> list[np.ndarray]:
    """Every parameter and buffer on the host, in layer order."""
    return [nnxp.to_numpy(a).copy() for layer in model.layers
            for store in (layer.params, getattr(layer, "buffers", {})) for a in store.values()]


# --- weight snapshots -----------------------------------------------------------------------------


def test_snapshot_holds_every_parameter_and_buffer(cpu_bk) -> None:
    model = bn_model()
    snap = model.snapshot_weights()
    assert len(snap) == len(model.layers)
    for layer, (params, buffers) in zip(model.layers, snap):
        assert set(params) == set(layer.params)
        assert set(buffers) == set(getattr(layer, "buffers", {}))
    assert set(snap[1][1]) == {"running_mean", "running_var"}


def test_restore_after_training_gives_back_the_exact_weights_and_buffers(cpu_bk, data) -> None:
    X, y = data
    model = bn_model(seed=1)
    model.fit(X, y, epochs=1, batch_size=8, verbose=0, optimizer=SGD(lr=0.1, momentum=0.9))
    snap = model.snapshot_weights()
    before = state(model)
    for _ in range(2):  # the snapshot is a copy: restoring it twice gives the same weights
        model.fit(X, y, epochs=2, batch_size=8, verbose=0)  # in-place updates, new statistics
        assert not all(np.array_equal(a, b) for a, b in zip(before, state(model)))
        model.restore_weights(snap)
        after = state(model)
        assert len(after) == len(before)
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)
