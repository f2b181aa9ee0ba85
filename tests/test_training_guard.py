"""Training on bad or extreme data (issue 16): checks before the first step, an error mid-epoch
that leaves the model as it was before that step, and a divergence guard that covers buffers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nnxp
from nnxp import Sequential, backend
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


# --- the gate reads each flat gradient buffer once ---------------------------------------------


def _trained_small_mlp(bk: Any, batch_norm: bool) -> tuple[Sequential, Any]:
    """A Dense-ReLU-(BatchNorm1d-)Dense model after one fit step, holding this step's
    gradients: the Dense layers write theirs into the optimizer's flat buffer; BatchNorm1d,
    whose parameters share the buffer, assigns arrays of its own."""
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(16, 5)).astype(np.float32), np.arange(16) % 3
    middle = [BatchNorm1d(8)] if batch_norm else []
    model = Sequential([Dense(5, 8), ReLU(), *middle, Dense(8, 3)], seed=0)
    opt = SGD(lr=0.1)
    model.fit(X, y, epochs=1, batch_size=16, verbose=0, optimizer=opt, shuffle=False)
    model.loss_and_grads(nnxp.asarray(X), nnxp.asarray(y))  # this step's gradients
    return model, opt


@pytest.mark.parametrize("batch_norm", [False, True], ids=["flat", "per-array"])
def test_the_gate_catches_a_nan_in_any_gradient(bk, batch_norm: bool) -> None:
    from nnxp.training import _all_finite  # noqa: PLC0415 - the gate itself

    model, opt = _trained_small_mlp(bk, batch_norm)
    xp = model.xp
    value = xp.asarray(0.5, dtype=xp.float32, device=model.device)
    flat, covered = opt.flat_gradients()
    grads = [g for layer in model.layers for g in layer.grads.values()]
    if not backend.supports_inplace(xp) or batch_norm:
        # no flat buffers (array-api-strict), or one whose BatchNorm members assigned their
        # own gradients: the unit does not hold every current gradient, one sum per array
        assert flat == [] and not covered
    else:
        assert len(flat) == 1 and covered == {id(g) for g in grads}  # the flat branch
    assert bool(_all_finite(model, value, [], opt))
    for g in grads:
        saved = nnxp.to_numpy(g).copy()
        g[(0,) * g.ndim] = float("nan")
        assert not bool(_all_finite(model, value, [], opt))
        g[...] = nnxp.asarray(saved)
    assert bool(_all_finite(model, value, [], opt))


def test_a_flat_buffer_holding_every_gradient_is_read_once(bk) -> None:
    from nnxp.training import _all_finite  # noqa: PLC0415 - the gate itself

    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(16, 5)).astype(np.float32), np.arange(16) % 3
    model = Sequential([Dense(5, 8), ReLU(), Dense(8, 3)], seed=0)
    opt = SGD(lr=0.1)
    model.fit(X, y, epochs=1, batch_size=16, verbose=0, optimizer=opt, shuffle=False)
    flat, covered = opt.flat_gradients()
    grads = [g for layer in model.layers for g in layer.grads.values()]
    if not flat:
        pytest.skip(f"{bk.spec} keeps no flat buffers (no in-place writes)")
    assert len(flat) == 1 and covered == {id(g) for g in grads}
    # a stale NaN in a region of the buffer whose layer now holds an array of its own does not
    # shut the gate (that array is what the step uses) ...
    layer = model.layers[2]
    own = layer.grads["b"] * 1.0
    layer.grads["b"] = own
    flat, covered = opt.flat_gradients()
    assert flat == [] and id(own) not in covered
    opt._units[0][0].grad_views[-1][0] = float("nan")  # noqa: SLF001 - the stale region
    value = model.xp.asarray(0.5, dtype=model.xp.float32, device=model.device)
    assert bool(_all_finite(model, value, [], opt))
    # ... while a NaN in that array does
    own[0] = float("nan")
    assert not bool(_all_finite(model, value, [], opt))


def test_the_gate_sums_half_precision_gradients_in_float32(bk) -> None:
    """90 000 gradients of 1.0 in float16: their float16 sum would be inf (past 65504) and shut
    the gate on a finite step."""
    from nnxp.training import _all_finite  # noqa: PLC0415 - the gate itself

    xp = bk.xp
    if getattr(xp, "float16", None) is None:
        pytest.skip(f"{bk.spec} has no float16")
    model = Sequential([Dense(300, 300, dtype="float16")], seed=0)
    layer = model.layers[0]
    layer.grads["W"] = xp.ones((300, 300), dtype=xp.float16, device=model.device)
    layer.grads["b"] = xp.zeros((300,), dtype=xp.float16, device=model.device)
    value = xp.asarray(0.5, dtype=xp.float16, device=model.device)
    assert bool(_all_finite(model, value, []))
    layer.grads["b"][3] = float("inf")
    assert not bool(_all_finite(model, value, []))
