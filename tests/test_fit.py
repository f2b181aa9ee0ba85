"""The training loop: batch sizes, validation, History, incremental training, divergence."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass

import numpy as np
import pytest

import nnxp
from nnxp.callbacks import Callback
from nnxp.layers import Dense, ReLU
from nnxp.optim import SGD, Optimizer
from nnxp.optim import base as optim_base
from nnxp.validation import check_nonneg


def small_model(seed: int = 0, n_out: int = 3) -> nnxp.Sequential:
    return nnxp.Sequential([Dense(4, 8), ReLU(), Dense(8, n_out)], seed=seed)


@pytest.fixture
def data(rng):
    X = rng.standard_normal((30, 4)).astype(np.float32)
    return X, rng.integers(0, 3, 30)


def weights(model: nnxp.Sequential) -> list[np.ndarray]:
    return [nnxp.to_numpy(p).copy() for layer in model.layers for p in layer.params.values()]


def assert_same_weights(a: nnxp.Sequential, b: nnxp.Sequential, exact: bool) -> None:
    for wa, wb in zip(weights(a), weights(b)):
        if exact:
            np.testing.assert_array_equal(wa, wb)
        else:
            np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)


def adam(**kw):
    return nnxp.optim.Adam(**kw)


# --- batch sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size, steps_per_epoch", [(None, 1), (1, 30), (7, 5), (30, 1),
                                                         (100, 1)])
def test_batch_size_gives_the_number_of_steps(bk, data, batch_size, steps_per_epoch) -> None:
    X, y = data
    opt = SGD(lr=0.01)
    sizes = []

    class Sizes(Callback):
        def on_batch_end(self, batch, logs=None):
            sizes.append(logs["size"])

    small_model().fit(X, y, epochs=2, batch_size=batch_size, optimizer=opt, verbose=0,
                      callbacks=[Sizes()])
    assert opt.iterations == 2 * steps_per_epoch
    assert len(sizes) == 2 * steps_per_epoch and sum(sizes) == 60


def test_full_batch_loss_is_the_loss_at_the_epoch_start(bk, data) -> None:
    X, y = data
    model = small_model()
    before = model.evaluate(X, y)
    h = model.fit(X, y, epochs=3, batch_size=None, verbose=0, optimizer=SGD(lr=0.1))
    assert h["loss"][0] == pytest.approx(before["loss"], rel=1e-5)
    assert h["accuracy"][0] == pytest.approx(before["accuracy"])
    assert h["loss"][2] < h["loss"][0]


def test_shuffling_is_seeded_and_changes_the_order(bk, data) -> None:
    X, y = data
    runs = [small_model(seed=4).fit(X, y, epochs=2, batch_size=4, verbose=0)["loss"]
            for _ in range(2)]
    assert runs[0] == runs[1]
    a, b = small_model(seed=4), small_model(seed=4)
    a.fit(X, y, epochs=1, batch_size=4, verbose=0, shuffle=True)
    b.fit(X, y, epochs=1, batch_size=4, verbose=0, shuffle=False)
    assert any(not np.array_equal(u, v) for u, v in zip(weights(a), weights(b)))


# --- validation -----------------------------------------------------------------------------------


def test_validation_split_holds_out_the_tail(bk, data) -> None:
    X, y = data
    model, twin = small_model(), small_model()
    h = model.fit(X, y, epochs=1, batch_size=None, shuffle=False, verbose=0,
                  validation_split=0.2, optimizer=SGD(lr=0.1))
    # the training loss is that of the first 24 samples at the initial weights ...
    assert h["loss"][0] == pytest.approx(twin.evaluate(X[:24], y[:24])["loss"], rel=1e-5)
    # ... and one full-batch step on them gives the same weights as training on them alone
    twin.fit(X[:24], y[:24], epochs=1, batch_size=None, shuffle=False, verbose=0,
             optimizer=SGD(lr=0.1))
    assert_same_weights(model, twin, exact=bk.name == "numpy")
    after = model.evaluate(X[24:], y[24:])
    assert h["val_loss"][0] == pytest.approx(after["loss"], rel=1e-5)
    assert h["val_accuracy"][0] == pytest.approx(after["accuracy"])


def test_validation_data_is_logged_every_epoch(bk, data, rng) -> None:
    X, y = data
    Xv, yv = rng.standard_normal((11, 4)).astype(np.float32), rng.integers(0, 3, 11)
    model = small_model()
    h = model.fit(X, y, epochs=3, verbose=0, validation_data=(Xv, yv),
                  metrics=["accuracy", "top_2_accuracy"])
    assert list(h.history) == ["loss", "accuracy", "top_2_accuracy", "val_loss",
                               "val_accuracy", "val_top_2_accuracy", "lr", "epoch_time"]
    assert all(len(v) == 3 for v in h.history.values())
    final = model.evaluate(Xv, yv, metrics=["accuracy", "top_2_accuracy"])
    assert h["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-5)
    assert h["val_top_2_accuracy"][-1] == pytest.approx(final["top_2_accuracy"])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"validation_split": 1.0}, ValueError, r"validation_split must be a float in \[0, 1\)"),
    ({"validation_split": -0.1}, ValueError, "validation_split must be"),
    ({"validation_split": 0.99}, ValueError, "leaves 0 for training and 30 for validation"),
    ({"validation_split": 0.2, "validation_data": ([[0.0] * 4], [0])}, ValueError,
     "not both"),
    ({"validation_data": ([[0.0] * 4],)}, TypeError, "pair .X_val, y_val., got tuple of length"),
    ({"validation_data": ([[0.0] * 5], [0])}, ValueError,
     r"validation_data\[0\] has 5 features"),
    ({"validation_data": ([[0.0] * 4], [7])}, ValueError, r"validation_data\[1\]: "),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"check_finite_every": 0}, ValueError, "check_finite_every"),
    ({"metrics": ["f1"]}, ValueError, "metric 'f1' is not known"),
])
def test_fit_validates_its_new_options(data, kwargs, error, match) -> None:
    X, y = data
    with pytest.raises(error, match=match):
        small_model().fit(X, y, epochs=1, verbose=0, **kwargs)


# --- History --------------------------------------------------------------------------------------


def test_history_records_rate_time_and_epochs(bk, data) -> None:
    X, y = data
    h = small_model().fit(X, y, epochs=3, verbose=0, optimizer=SGD(lr=0.05))
    assert h.epoch == [1, 2, 3] and len(h) == 3 and "loss" in h
    assert h["lr"] == [0.05] * 3
    assert all(t > 0 for t in h["epoch_time"])
    assert "History(epochs=3" in repr(h)


def test_history_plot_writes_a_png(tmp_path, data) -> None:
    pytest.importorskip("matplotlib")
    X, y = data
    h = small_model().fit(X, y, epochs=3, verbose=0, validation_split=0.2,
                          callbacks=[nnxp.callbacks.LearningRateScheduler(lambda e: 0.1 / (e + 1))])
    path = tmp_path / "history.png"
    h.plot(path, title="training")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="empty"):
        nnxp.History().plot(tmp_path / "none.png")


def test_history_plot_without_matplotlib_names_the_extra(monkeypatch, tmp_path, data) -> None:
    X, y = data
    h = small_model().fit(X, y, epochs=1, verbose=0)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"nnxp\[plot\]"):
        h.plot(tmp_path / "x.png")


def test_progress_bar_shows_validation_metrics(capsys, data) -> None:
    pytest.importorskip("tqdm")
    X, y = data
    small_model().fit(X, y, epochs=1, verbose=1, validation_split=0.2)
    err = capsys.readouterr().err
    assert "loss=" in err and "val_loss=" in err and "val_accuracy=" in err
    assert "epoch_time" not in err


# --- incremental training -------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
def test_partial_fit_twice_equals_fit_two_epochs(bk, data, shuffle) -> None:
    X, y = data
    a, b = small_model(seed=5), small_model(seed=5)
    ha = a.fit(X, y, epochs=2, batch_size=8, shuffle=shuffle, verbose=0,
               optimizer=adam(lr=0.01))
    opt = adam(lr=0.01)
    h1 = b.partial_fit(X, y, batch_size=8, shuffle=shuffle, optimizer=opt)
    h2 = b.partial_fit(X, y, batch_size=8, shuffle=shuffle)  # the same optimizer, continued
    assert b.optimizer is opt and h1.epoch == [1] and h2.epoch == [2]
    assert b.epochs_trained == 2
    assert_same_weights(a, b, exact=bk.name == "numpy")
    assert [h1["loss"][0], h2["loss"][0]] == pytest.approx(ha["loss"], rel=1e-6)


def test_train_on_batch_continues_the_optimizer_state(bk, data) -> None:
    X, y = data
    a, b = small_model(seed=6), small_model(seed=6)
    h = a.fit(X, y, epochs=3, batch_size=None, shuffle=False, verbose=0,
              optimizer=adam(lr=0.01))
    b_opt = adam(lr=0.01)
    losses = [b.train_on_batch(X, y, optimizer=b_opt)] + [b.train_on_batch(X, y)
                                                          for _ in range(2)]
    assert all(isinstance(v, float) for v in losses)
    assert losses == pytest.approx(h["loss"], rel=1e-6)
    assert_same_weights(a, b, exact=bk.name == "numpy")
    assert b_opt.iterations == 3


def test_fitting_again_continues_instead_of_rebinding(bk, data) -> None:
    X, y = data
    opt = adam(lr=0.01)
    a = small_model(seed=7)
    a.fit(X, y, epochs=1, batch_size=None, shuffle=False, verbose=0, optimizer=opt)
    a.fit(X, y, epochs=1, batch_size=None, shuffle=False, verbose=0)  # reuses a.optimizer
    b = small_model(seed=7)
    b.fit(X, y, epochs=2, batch_size=None, shuffle=False, verbose=0, optimizer=adam(lr=0.01))
    assert opt.iterations == 2 and a.epochs_trained == 2
    assert_same_weights(a, b, exact=True)


def test_train_on_batch_skips_a_non_finite_step(bk) -> None:
    model = nnxp.Sequential([Dense(2, 1)], seed=0)
    before = weights(model)
    X = np.full((4, 2), 1e30, dtype=np.float32)  # finite inputs whose squared error overflows
    with pytest.raises(nnxp.TrainingDivergedError, match="update was skipped"):
        model.train_on_batch(X, np.zeros((4, 1), np.float32), loss="mse")
    for a, b in zip(before, weights(model)):
        np.testing.assert_array_equal(a, b)


# --- closure optimizers ---------------------------------------------------------------------------


class ClosureSGD(Optimizer):
    """A stand-in for LBFGS: evaluates the closure twice per step, then descends."""

    requires_closure = True

    @dataclass(frozen=True)
    class Hyperparameters(optim_base.Hyperparameters):
        lr: float = optim_base.hyperparameter(0.1, check_nonneg)

    def __init__(self, lr: float) -> None:
        super().__init__(lr=lr)
        self.values: list[float] = []

    def step(self, closure=None):
        assert closure is not None, "fit must pass a closure"
        self.values.append(closure())
        self.values.append(closure())
        for layer, key in self._refs:
            layer.params[key] = layer.params[key] - self.lr * layer.grads[key]
        self.iterations += 1
        return self.values[-1]


def test_fit_calls_step_with_a_closure_when_asked(bk, data) -> None:
    X, y = data
    opt = ClosureSGD(0.1)
    model, twin = small_model(), small_model()
    h = model.fit(X, y, epochs=2, batch_size=None, shuffle=False, verbose=0, optimizer=opt)
    twin.fit(X, y, epochs=2, batch_size=None, shuffle=False, verbose=0, optimizer=SGD(lr=0.1))
    assert len(opt.values) == 4 and all(isinstance(v, float) for v in opt.values)
    assert opt.values[0] == opt.values[1]  # same weights, same batch: the same loss
    assert h["loss"] == pytest.approx(opt.values[::2], rel=1e-6)
    assert_same_weights(model, twin, exact=False)


def test_lbfgs_trains_full_batch(bk, data) -> None:
    LBFGS = nnxp.optim.LBFGS
    assert LBFGS.requires_closure  # fit hands it a closure that re-evaluates the loss
    X, y = data
    model = small_model()
    h = model.fit(X, y, epochs=5, batch_size=None, verbose=0, optimizer=LBFGS())
    assert h["loss"][-1] < 0.8 * h["loss"][0]


# --- divergence -----------------------------------------------------------------------------------


def diverging_problem(rng, n=32):
    """Linear regression with a step size 10x past stability; the loss grows ~100x per
    full-batch step until it overflows float32."""
    X = rng.standard_normal((n, 4)).astype(np.float32)
    y = X @ rng.standard_normal((4, 1)).astype(np.float32)
    lam = np.linalg.eigvalsh(2 * X.T.astype(np.float64) @ X / n).max()
    return nnxp.Sequential([Dense(4, 1)], seed=0), X, y, float(11.0 / lam)


class Snapshots(Callback):
    def __init__(self) -> None:
        self.at_epoch_end: dict[int, list[np.ndarray]] = {}
        self.after_step: list[list[np.ndarray]] = []

    def on_train_begin(self, logs=None):
        self.after_step.append(weights(self.model))  # "after step 0"

    def on_batch_end(self, batch, logs=None):
        self.after_step.append(weights(self.model))

    def on_epoch_end(self, epoch, logs):
        self.at_epoch_end[epoch] = weights(self.model)


def test_divergence_raises_and_keeps_the_last_finite_epoch(bk, rng) -> None:
    model, X, y, lr = diverging_problem(rng)
    snaps = Snapshots()
    with pytest.raises(nnxp.TrainingDivergedError) as info:
        model.fit(X, y, loss="mse", epochs=500, batch_size=None, verbose=0,
                  optimizer=SGD(lr=lr), callbacks=[snaps])
    err = info.value
    assert err.epoch is not None and err.epoch > 3 and err.step == err.epoch
    text = str(err)
    assert f"epoch {err.epoch}, step {err.step}" in text
    assert "learning rate" in text and "clip" in text
    # no snapshot: the gated update of the bad step was never applied (issue 11)
    assert f"those after step {err.step - 1}" in text
    final = weights(model)
    assert all(np.isfinite(w).all() for w in final)
    for got, want in zip(final, snaps.at_epoch_end[err.epoch - 1]):
        np.testing.assert_array_equal(got, want)


def test_divergence_with_a_check_every_step(bk, rng) -> None:
    model, X, y, lr = diverging_problem(rng)
    snaps = Snapshots()
    with pytest.raises(nnxp.TrainingDivergedError) as info:
        model.fit(X, y, loss="mse", epochs=200, batch_size=8, verbose=0,
                  optimizer=SGD(lr=lr / 4), callbacks=[snaps], check_finite_every=1)
    step = info.value.step
    assert step is not None and re.search(rf"after step {step - 1}\b", str(info.value))
    for got, want in zip(weights(model), snaps.after_step[step - 1]):
        np.testing.assert_array_equal(got, want)


def test_divergence_check_every_k_steps_keeps_the_step_before_the_bad_one(bk, rng) -> None:
    model, X, y, lr = diverging_problem(rng)
    snaps = Snapshots()
    with pytest.raises(nnxp.TrainingDivergedError) as info:  # 32 stochastic steps, one epoch
        model.fit(X, y, loss="mse", epochs=1, batch_size=1, shuffle=False, verbose=0,
                  optimizer=SGD(lr=lr), callbacks=[snaps], check_finite_every=3)
    step = info.value.step
    assert step is not None and 6 < step < 32 and info.value.epoch == 1
    # the gate kept every step from the bad one on from being applied: the weights are those
    # after the step before it, not of the last check point (issue 11: no snapshot)
    assert f"those after step {step - 1}" in str(info.value)
    # the loop went on to the next check point (before its on_batch_end), then stopped
    assert len(snaps.after_step) == 3 * math.ceil(step / 3)
    for got, want in zip(weights(model), snaps.after_step[step - 1]):
        np.testing.assert_array_equal(got, want)
    for later in snaps.after_step[step:]:  # the gated steps changed nothing
        for got, want in zip(later, snaps.after_step[step - 1]):
            np.testing.assert_array_equal(got, want)


def test_no_divergence_no_message(bk, data) -> None:
    X, y = data
    h = small_model().fit(X, y, epochs=2, verbose=0, check_finite_every=2)
    assert h.diverged is None and all(math.isfinite(v) for v in h["loss"])


# --- per-sample weights ----------------------------------------------------------------------


def _weighted_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((48, 5)).astype(np.float32)
    y = rng.integers(0, 3, 48)
    return X, y


def _weighted_model() -> nnxp.Sequential:
    return nnxp.Sequential([Dense(5, 8), ReLU(), Dense(8, 3)], seed=0)


def test_unit_sample_weights_change_nothing(bk) -> None:
    X, y = _weighted_problem()
    a, b = _weighted_model(), _weighted_model()
    ha = a.fit(X, y, optimizer=nnxp.optim.SGD(lr=0.1), epochs=2, batch_size=16, verbose=0)
    hb = b.fit(X, y, optimizer=nnxp.optim.SGD(lr=0.1), epochs=2, batch_size=16, verbose=0,
               sample_weight=np.ones(48))
    np.testing.assert_allclose(hb["loss"], ha["loss"], rtol=1e-6)
    np.testing.assert_allclose(nnxp.to_numpy(b.layers[0].params["W"]),
                               nnxp.to_numpy(a.layers[0].params["W"]), rtol=1e-6, atol=1e-7)


def test_zero_weights_equal_dropping_the_samples_in_full_batch_descent(bk) -> None:
    """With one batch, weights 0/2 on a (1/N) mean equal training on the kept half at lr·1."""
    X, y = _weighted_problem(1)
    keep = np.arange(48) % 2 == 0
    weighted, subset = _weighted_model(), _weighted_model()
    weighted.fit(X, y, optimizer=nnxp.optim.SGD(lr=0.1), epochs=3, batch_size=None,
                 shuffle=False, verbose=0, sample_weight=np.where(keep, 2.0, 0.0))
    subset.fit(X[keep], y[keep], optimizer=nnxp.optim.SGD(lr=0.1), epochs=3, batch_size=None,
               shuffle=False, verbose=0)
    for lw, ls in zip(weighted.layers, subset.layers):
        for key in lw.params:
            np.testing.assert_allclose(nnxp.to_numpy(lw.params[key]),
                                       nnxp.to_numpy(ls.params[key]), rtol=1e-5, atol=1e-6)


def test_sample_weights_follow_their_samples_through_shuffling(bk) -> None:
    """Shuffled and unshuffled full-batch runs see the same weighted objective."""
    X, y = _weighted_problem(2)
    w = np.random.default_rng(3).uniform(0, 2, 48)
    runs = []
    for shuffle in (False, True):
        model = _weighted_model()
        runs.append(model.fit(X, y, optimizer=nnxp.optim.SGD(lr=0.1), epochs=2,
                              batch_size=None, shuffle=shuffle, verbose=0,
                              sample_weight=w)["loss"])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)


def test_sample_weights_with_validation_split_and_partial_fit(bk) -> None:
    X, y = _weighted_problem()
    model = _weighted_model()
    h = model.fit(X, y, epochs=1, verbose=0, validation_split=0.25,
                  sample_weight=np.linspace(0.5, 1.5, 48))
    assert "val_loss" in h.history
    model.partial_fit(X, y, sample_weight=np.ones(48))


@pytest.mark.parametrize(("weights", "error", "match"), [
    (np.ones(47), ValueError, r"sample_weight must have shape \(48,\)"),
    (-np.ones(48), ValueError, "sample_weight must be >= 0"),
    (np.full(48, np.nan), ValueError, "NaN or infinite"),
])
def test_bad_sample_weights_are_rejected(weights, error, match) -> None:
    X, y = _weighted_problem()
    with pytest.raises(error, match=match):
        _weighted_model().fit(X, y, epochs=1, verbose=0, sample_weight=weights)


def test_keep_finite_weights_false_keeps_no_copy_and_says_so(bk, rng) -> None:
    model, X, y, lr = diverging_problem(rng)
    snaps = Snapshots()
    with pytest.raises(nnxp.TrainingDivergedError) as info:
        model.fit(X, y, loss="mse", epochs=500, batch_size=None, verbose=0,
                  optimizer=SGD(lr=lr), callbacks=[snaps], keep_finite_weights=False)
    text = str(info.value)
    assert f"epoch {info.value.epoch}" in text and "keep_finite_weights=False" in text
    assert "restored" not in text
    last_check_point = snaps.at_epoch_end[info.value.epoch - 1]
    assert any(not np.array_equal(got, want)  # nothing was rolled back
               for got, want in zip(weights(model), last_check_point))


def test_keep_finite_weights_must_be_a_flag(data) -> None:
    X, y = data
    model = nnxp.Sequential([Dense(4, 5), ReLU(), Dense(5, 3)], seed=0)
    with pytest.raises(TypeError, match="keep_finite_weights"):
        model.fit(X, y, epochs=1, verbose=0, keep_finite_weights="no")
