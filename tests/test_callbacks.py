"""Callbacks: the protocol, EarlyStopping, LearningRateScheduler, TerminateOnNaN."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nnxp
from nnxp.callbacks import (
    Callback,
    CallbackList,
    EarlyStopping,
    LearningRateScheduler,
    TerminateOnNaN,
    get_lr,
    set_lr,
)
from nnxp.layers import Dense, ReLU
from nnxp.optim import SGD


def small_model(seed: int = 0, n_out: int = 3) -> nnxp.Sequential:
    return nnxp.Sequential([Dense(4, 8), ReLU(), Dense(8, n_out)], seed=seed)


@pytest.fixture
def data(rng):
    X = rng.standard_normal((32, 4)).astype(np.float32)
    return X, rng.integers(0, 3, 32)


def weights(model: nnxp.Sequential) -> list[np.ndarray]:
    return [nnxp.to_numpy(p).copy() for layer in model.layers for p in layer.params.values()]


class Inject(Callback):
    """Writes a value we control into the epoch logs and remembers each epoch's weights."""

    def __init__(self, key: str, values: list[float]) -> None:
        self.key, self.values = key, values
        self.saved: dict[int, list[np.ndarray]] = {}

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        logs[self.key] = self.values[epoch - 1]
        assert self.model is not None
        self.saved[epoch] = weights(self.model)


# --- the protocol ---------------------------------------------------------------------------------


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_begin(self, logs=None):
        self.events.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(("epoch_begin", epoch))

    def on_batch_end(self, batch, logs=None):
        assert logs is not None and logs["size"] in (10, 2)
        assert nnxp.backend.is_array(logs["loss"]) and tuple(logs["loss"].shape) == ()
        self.events.append(("batch_end", batch))

    def on_epoch_end(self, epoch, logs):
        assert {"loss", "accuracy", "lr", "epoch_time"} <= set(logs)
        assert all(isinstance(v, float) for v in logs.values())
        self.events.append(("epoch_end", epoch))

    def on_train_end(self, logs=None):
        self.events.append(("train_end",))


def test_hooks_are_called_in_order(bk, data) -> None:
    X, y = data
    rec = Recorder()
    small_model().fit(X, y, epochs=2, batch_size=10, verbose=0, callbacks=[rec])
    per_epoch = lambda e: [("epoch_begin", e), *[("batch_end", b) for b in range(4)],  # noqa: E731
                           ("epoch_end", e)]
    assert rec.events == [("train_begin",), *per_epoch(1), *per_epoch(2), ("train_end",)]
    assert rec.model is not None


def test_stop_training_from_a_callback_and_logs_added_are_recorded(bk, data) -> None:
    X, y = data

    class StopAt(Callback):
        def on_epoch_end(self, epoch, logs):
            logs["custom"] = 10.0 * epoch
            if epoch == 3:
                self.model.stop_training = True

    model = small_model()
    h = model.fit(X, y, epochs=10, verbose=0, callbacks=[StopAt()])
    assert h.epoch == [1, 2, 3] and h["custom"] == [10.0, 20.0, 30.0]
    assert model.epochs_trained == 3


def test_duck_typed_callbacks_and_bad_ones(data) -> None:
    X, y = data
    seen = []

    class Plain:  # no base class: any object with one of the hooks works
        def on_epoch_end(self, epoch, logs):
            seen.append(epoch)

    small_model().fit(X, y, epochs=2, verbose=0, callbacks=[Plain()])
    assert seen == [1, 2]
    with pytest.raises(TypeError, match="none of the callback hooks"):
        CallbackList([object()])
    with pytest.raises(TypeError, match=r"is the class EarlyStopping, not an instance"):
        CallbackList([EarlyStopping])


def test_batch_hooks_are_skipped_unless_overridden() -> None:
    assert not CallbackList([EarlyStopping(), TerminateOnNaN()]).has_batch_hooks
    assert CallbackList([Recorder()]).has_batch_hooks


# --- EarlyStopping --------------------------------------------------------------------------------


def test_early_stopping_stops_at_the_right_epoch_and_restores_the_best(bk, data) -> None:
    X, y = data
    scores = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 1.0, 1.0]  # best in epoch 3; patience 2 → stop at 5
    inject = Inject("score", scores)
    stop = EarlyStopping("score", patience=2, restore_best_weights=True)
    model = small_model()
    h = model.fit(X, y, epochs=8, batch_size=8, verbose=0, callbacks=[inject, stop])
    assert h.epoch == [1, 2, 3, 4, 5]
    assert stop.best_epoch == 3 and stop.best == 3.0 and stop.stopped_epoch == 5
    assert h["score"] == scores[:5]
    for got, want in zip(weights(model), inject.saved[3]):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(a, b) for a, b in zip(inject.saved[3], inject.saved[5]))


def test_early_stopping_without_restore_keeps_the_last_weights(data) -> None:
    X, y = data
    inject = Inject("score", [1.0, 2.0, 3.0, 4.0])
    model = small_model()
    model.fit(X, y, epochs=4, verbose=0,
              callbacks=[inject, EarlyStopping("score", patience=1, mode="min")])
    assert model.epochs_trained == 2
    for got, want in zip(weights(model), inject.saved[2]):
        np.testing.assert_array_equal(got, want)


def test_min_delta_max_mode_and_patience_zero(data) -> None:
    X, y = data
    # improvements smaller than min_delta do not count
    stop = EarlyStopping("score", patience=1, min_delta=0.1)
    h = small_model().fit(X, y, epochs=6, verbose=0,
                          callbacks=[Inject("score", [1.0, 0.95, 0.91, 0.5, 0.4, 0.3]), stop])
    assert h.epoch == [1, 2] and stop.best_epoch == 1
    # "accuracy"-like names are maximised in auto mode; patience 0 stops at the first miss
    stop = EarlyStopping("val_accuracy", patience=0)
    assert stop.mode == "max"
    h = small_model().fit(X, y, epochs=6, verbose=0,
                          callbacks=[Inject("val_accuracy", [0.1, 0.2, 0.2, 0.9, 1, 1]), stop])
    assert h.epoch == [1, 2, 3] and stop.best_epoch == 2
    assert EarlyStopping("loss").mode == "min" and EarlyStopping("val_r2").mode == "max"


def test_baseline_must_be_beaten(data) -> None:
    X, y = data
    stop = EarlyStopping("score", patience=2, baseline=0.5)
    h = small_model().fit(X, y, epochs=5, verbose=0,
                          callbacks=[Inject("score", [0.9, 0.8, 0.7, 0.1, 0.1]), stop])
    assert h.epoch == [1, 2] and stop.best_epoch == 0
    stop = EarlyStopping("score", patience=2, baseline=0.5)
    h = small_model().fit(X, y, epochs=5, verbose=0,
                          callbacks=[Inject("score", [0.9, 0.4, 0.7, 0.6, 0.1]), stop])
    assert h.epoch == [1, 2, 3, 4] and stop.best_epoch == 2


def test_val_monitor_falls_back_to_training_value_and_missing_keys_fail(data) -> None:
    X, y = data
    stop = EarlyStopping(patience=100)  # monitors val_loss
    small_model().fit(X, y, epochs=1, verbose=0, callbacks=[stop])
    assert stop.monitor_used == "loss"
    with pytest.raises(KeyError, match=r"no 'nope'; available: .*accuracy.*loss"):
        small_model().fit(X, y, epochs=1, verbose=0, callbacks=[EarlyStopping("nope")])


def test_early_stopping_on_real_validation_loss(bk, rng) -> None:
    # noise labels: the validation loss soon rises, so early stopping must end training early
    X, Xv = rng.standard_normal((2, 40, 4)).astype(np.float32)
    y, yv = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    stop = EarlyStopping(patience=2, restore_best_weights=True)
    model = nnxp.Sequential([Dense(4, 64), ReLU(), Dense(64, 3)], seed=0)
    h = model.fit(X, y, epochs=200, batch_size=8, verbose=0, validation_data=(Xv, yv),
                  optimizer=SGD(lr=0.1), callbacks=[stop])
    best = int(np.argmin(h["val_loss"]))
    assert len(h) == best + 3 < 200 and stop.best_epoch == best + 1
    assert model.evaluate(Xv, yv)["loss"] == pytest.approx(h["val_loss"][best], rel=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"patience": -1}, "patience must be an int >= 0"),
    ({"min_delta": -0.1}, "min_delta must be a float >= 0"),
    ({"mode": "up"}, "mode must be 'auto', 'min' or 'max'"),
    ({"monitor": ""}, "monitor must be the name"),
])
def test_early_stopping_validates(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


# --- LearningRateScheduler ------------------------------------------------------------------------


def test_scheduler_with_a_callable(bk, data) -> None:
    X, y = data
    seen = []

    def schedule(epoch):
        seen.append(epoch)
        return 0.1 * 0.5 ** epoch

    h = small_model().fit(X, y, epochs=4, verbose=0, optimizer=SGD(lr=1.0),
                          callbacks=[LearningRateScheduler(schedule)])
    assert seen == [0, 1, 2, 3]
    assert h["lr"] == pytest.approx([0.1, 0.05, 0.025, 0.0125])


def test_scheduler_callable_with_the_current_rate(data) -> None:
    X, y = data
    opt = SGD(lr=0.2)
    h = small_model().fit(X, y, epochs=3, verbose=0, optimizer=opt,
                          callbacks=[LearningRateScheduler(lambda epoch, lr: lr * 0.1)])
    assert h["lr"] == pytest.approx([0.02, 0.002, 0.0002])
    assert opt.lr == pytest.approx(0.0002)


def test_the_rate_set_is_the_rate_used(bk, data) -> None:
    # one full-batch SGD step per epoch: the update must equal lr_epoch * gradient
    X, y = data
    model = small_model()
    twin = small_model()
    model.fit(X, y, epochs=1, batch_size=None, verbose=0, shuffle=False,
              optimizer=SGD(lr=5.0), callbacks=[LearningRateScheduler(lambda e: 0.3)])
    twin.fit(X, y, epochs=1, batch_size=None, verbose=0, shuffle=False, optimizer=SGD(lr=0.3))
    for a, b in zip(weights(model), weights(twin)):
        np.testing.assert_array_equal(a, b)


def test_scheduler_with_a_schedule_object(data) -> None:
    schedules = nnxp.schedules
    X, y = data
    opt = SGD(lr=0.1)
    step = schedules.StepLR(step_size=2, gamma=0.5)  # attached when training begins
    h = small_model().fit(X, y, epochs=5, verbose=0, optimizer=opt,
                          callbacks=[LearningRateScheduler(step)])
    assert h["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_scheduler_steps_objects_and_passes_the_metric_to_plateau_ones(data) -> None:
    X, y = data

    class Stepper:
        def __init__(self):
            self.calls = 0

        def step(self):
            self.calls += 1

    class FakePlateau:
        requires_metric = True

        def __init__(self, opt):
            self.opt, self.values = opt, []

        def step(self, value):
            self.values.append(value)
            self.opt.lr = self.opt.lr / 2

    stepper = Stepper()
    small_model().fit(X, y, epochs=3, verbose=0, callbacks=[LearningRateScheduler(stepper)])
    assert stepper.calls == 3
    opt = SGD(lr=0.8)
    plateau = FakePlateau(opt)
    h = small_model().fit(X, y, epochs=3, verbose=0, optimizer=opt,
                          callbacks=[Inject("val_loss", [3.0, 2.0, 1.0]),
                                     LearningRateScheduler(plateau)])
    assert plateau.values == [3.0, 2.0, 1.0]
    assert h["lr"] == pytest.approx([0.8, 0.4, 0.2])


def test_reduce_on_plateau_lowers_the_rate(bk, data) -> None:
    schedules = nnxp.schedules
    X, y = data
    opt = SGD(lr=0.1)
    plateau = schedules.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    h = small_model().fit(X, y, epochs=4, verbose=0, optimizer=opt,
                          callbacks=[Inject("loss", [1.0, 1.0, 1.0, 1.0]),
                                     LearningRateScheduler(plateau, monitor="loss")])
    assert h["lr"][0] == pytest.approx(0.1) and opt.lr < 0.1


def test_scheduler_validation_and_lr_helpers() -> None:
    with pytest.raises(TypeError, match="schedule must be a callable"):
        LearningRateScheduler(3)
    opt = SGD(lr=0.1)
    set_lr(opt, 0.25)
    assert get_lr(opt) == 0.25 and opt.lr == 0.25
    with pytest.raises(ValueError, match="expected a finite float >= 0"):
        set_lr(opt, math.nan)
    assert get_lr(object()) is None


# --- TerminateOnNaN -------------------------------------------------------------------------------


def diverging_problem(rng):
    """Full-batch linear regression with a step size 10x past stability: the loss grows ~100x
    per epoch and overflows float32 after roughly 15-20 epochs."""
    X = rng.standard_normal((32, 4)).astype(np.float32)
    y = X @ rng.standard_normal((4, 1)).astype(np.float32)
    model = nnxp.Sequential([Dense(4, 1)], seed=0)
    lam = np.linalg.eigvalsh(2 * X.T.astype(np.float64) @ X / 32).max()
    return model, X, y, SGD(lr=float(11.0 / lam))


def test_terminate_on_nan_stops_quietly_with_the_last_finite_weights(bk, rng) -> None:
    model, X, y, opt = diverging_problem(rng)
    inject = Inject("unused", [0.0] * 500)
    ended = []

    class End(Callback):
        def on_train_end(self, logs=None):
            ended.append(True)

    term = TerminateOnNaN()
    h = model.fit(X, y, loss="mse", epochs=500, batch_size=None, verbose=0, optimizer=opt,
                  callbacks=[inject, term, End()])
    assert 3 < len(h) < 500 and ended == [True]
    assert h.diverged is not None and term.triggered == h.diverged
    assert f"epoch {len(h) + 1}" in h.diverged
    assert all(np.isfinite(v) for v in h["loss"])
    for got, want in zip(weights(model), inject.saved[len(h)]):
        np.testing.assert_array_equal(got, want)  # the end of the last finite epoch


def test_terminate_on_nan_stops_on_a_non_finite_logged_loss(bk, data) -> None:
    X, y = data
    term = TerminateOnNaN()
    h = small_model().fit(X, y, epochs=5, verbose=0,
                          callbacks=[Inject("val_loss", [1.0, math.nan, 1.0, 1.0, 1.0]), term])
    assert h.epoch == [1, 2] and "val_loss became nan in epoch 2" in term.triggered
