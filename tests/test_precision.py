"""Mixed precision (issue 11, item 1): fit(precision=...), the loss scaler against
torch.amp.GradScaler, float32 accumulation, checkpoints with a scaler, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nnxp
from nnxp import Sequential
from nnxp.callbacks import Callback, ModelCheckpoint
from nnxp.kernels import activations as act_k
from nnxp.kernels import normalization as norm_k
from nnxp.layers import BatchNorm1d, Dense, ReLU
from nnxp.optim import OPTIMIZERS, SGD, Adam
from nnxp.precision import LossScaler


def _weights(model: Sequential) -> list[np.ndarray]:
    return [np.array(nnxp.to_numpy(p)) for layer in model.layers for p in layer.params.values()]


def _low_precisions(bk) -> list[str]:
    return [p for p in ("float16", "bfloat16") if getattr(bk.xp, p, None) is not None]


# --- the loss scaler --------------------------------------------------------------------------


def test_loss_scaler_follows_torch_grad_scaler() -> None:
    """The same found-inf pattern gives torch's scales, growth trackers and skipped steps
    (torch.amp.GradScaler on the CPU, with growth_interval=3 so growth shows)."""
    torch = pytest.importorskip("torch")
    pattern = [False, False, False, True, False, True, True, False, False, False, False,
               False, False, True, False]
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", growth_interval=3)
    ours = LossScaler(growth_interval=3)
    for bad in pattern:
        opt.zero_grad()
        loss = (w * torch.tensor([1.0, 2.0, 3.0])).sum()
        scaler.scale(loss).backward()
        if bad:
            w.grad[1] = float("inf")
        before = w.detach().clone()
        scaler.step(opt)
        scaler.update()
        ours.update(found_inf=bad)
        assert ours.scale == scaler.get_scale()
        assert ours.growth_tracker == scaler.state_dict()["_growth_tracker"]
        assert torch.equal(before, w.detach()) == bad  # a skipped step leaves w alone
    assert ours.skipped == sum(pattern)
    assert opt.state[w]["step"].item() == len(pattern) - sum(pattern)  # Adam's count too
    assert set(scaler.state_dict()) == {k if k != "growth_tracker" else "_growth_tracker"
                                        for k in ours.state_dict()}
    assert LossScaler().scale == 2.0**16 and LossScaler().growth_interval == 2000


def test_loss_scaler_state_round_trip_and_errors() -> None:
    s = LossScaler(init_scale=8.0, growth_interval=4)
    s.update(False)
    t = LossScaler()
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict()
    for bad in ({"scale": -1.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                 "growth_interval": 4, "growth_tracker": 0},
                {"scale": 1.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                 "growth_interval": 4, "growth_tracker": 9},
                {"scale": 1.0}):
        with pytest.raises(ValueError):
            t.load_state_dict(bad)
    with pytest.raises(ValueError, match="backoff_factor must be < 1"):
        LossScaler(backoff_factor=2.0)
    with pytest.raises(ValueError, match="growth_interval"):
        LossScaler(growth_interval=0)


# --- fit in low precision ---------------------------------------------------------------------


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def _digits_run(precision: str, **options: Any) -> tuple[float, Sequential]:
    X, y = _digits()
    model = Sequential([Dense(64, 32), BatchNorm1d(32), ReLU(), Dense(32, 10)], seed=0)
    model.fit(X[:1500], y[:1500], epochs=3, batch_size=100, verbose=0, optimizer=Adam(lr=5e-3),
              precision=precision, **options)
    return float(np.mean(nnxp.to_numpy(model.predict(X[1500:])) == y[1500:])), model


def test_mixed_precision_trains_digits_as_well_as_float32(bk) -> None:
    """Every low precision the backend has converges to float32's accuracy (here within 2
    points on 297 held-out digits; benchmarks/precision.py records the big MLP)."""
    precisions = _low_precisions(bk)[-1:]  # bfloat16 where there is one (torch), else float16
    if not precisions:
        pytest.skip(f"{bk.spec} has no float16/bfloat16")
    reference, _ = _digits_run("float32")
    assert reference > 0.85
    for precision in precisions:
        accuracy, model = _digits_run(precision)
        assert abs(accuracy - reference) <= 0.02, (precision, accuracy, reference)
        for layer in model.layers:  # float32 masters and statistics, float32 optimizer state
            for p in list(layer.params.values()) + list(getattr(layer, "buffers", {}).values()):
                assert nnxp.backend.dtype_name(p.dtype) == "float32"
        state = model.optimizer.state[0]
        assert nnxp.backend.dtype_name(state.exp_avg.dtype) == "float32"
        assert (model.loss_scaler is not None) == (precision == "float16")


def test_float32_precision_is_the_default_path_bit_for_bit(bk, rng) -> None:
    X = rng.normal(size=(40, 4)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    runs = []
    for options in ({}, {"precision": "float32"}):
        model = Sequential([Dense(4, 8), ReLU(), Dense(8, 3)], seed=0)
        model.fit(X, y, epochs=2, batch_size=8, verbose=0, optimizer=Adam(), **options)
        runs.append(_weights(model))
        assert model.loss_scaler is None
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


class _Scales(Callback):
    def __init__(self) -> None:
        self.scales: list[float] = []

    def on_batch_end(self, batch, logs=None):
        self.scales.append(self.model.loss_scaler.scale)


def test_overflowing_float16_gradients_back_off_and_skip_without_counting_a_step(bk) -> None:
    """Regression targets of size ~100: at scale 2¹⁶ the float16 gradients overflow; the scaler
    halves the scale once per overflowing step, those steps are not applied (Adam's step count
    counts only the applied ones), and training goes on."""
    if "float16" not in _low_precisions(bk):
        pytest.skip(f"{bk.spec} has no float16")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    y = (X @ rng.normal(size=(4, 1)) * 30).astype(np.float32)
    model = Sequential([Dense(4, 1)], seed=0, loss="mse")
    scales = _Scales()
    h = model.fit(X, y, epochs=4, batch_size=16, verbose=0, optimizer=Adam(lr=1e-2),
                  precision="float16", callbacks=[scales])
    scaler = model.loss_scaler
    assert h.diverged is None and 0 < scaler.skipped < 16
    assert scaler.scale == 2.0**16 * 0.5**scaler.skipped  # no growth in 16 steps
    assert scales.scales == sorted(scales.scales, reverse=True)
    assert scaler.growth_tracker == 16 - scaler.skipped
    assert model.optimizer.state[0].step == 16 - scaler.skipped
    assert model.optimizer.iterations == 16 - scaler.skipped
    assert h["loss"][-1] < h["loss"][0]


def test_loss_scaler_growth_in_fit_and_the_checkpoint_resumes_it_exactly(bk, tmp_path) -> None:
    """A scaler that grows every 3 steps: a run resumed from its epoch-2 checkpoint ends with
    the weights and scaler state of the uninterrupted run, bit for bit."""
    if "float16" not in _low_precisions(bk):
        pytest.skip(f"{bk.spec} has no float16")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(48, 4)).astype(np.float32)
    y = rng.integers(0, 3, 48)

    def run(resume: Path | None, path: Path | None) -> Sequential:
        model = Sequential([Dense(4, 8), ReLU(), Dense(8, 3)], seed=0)
        cbs = [ModelCheckpoint(str(path))] if path is not None else []
        model.fit(X, y, epochs=4, batch_size=8, verbose=0, precision="float16",
                  optimizer=None if resume else SGD(lr=0.05, momentum=0.9),
                  loss_scale=None if resume else LossScaler(init_scale=2.0**8,
                                                            growth_interval=5),
                  callbacks=cbs, resume_from=resume)
        return model

    whole = run(None, None)
    assert whole.loss_scaler.scale > 2.0**8  # it grew
    path = tmp_path / "ckpt-{epoch}.npz"
    run(None, path)
    resumed = run(tmp_path / "ckpt-2.npz", None)
    assert resumed.loss_scaler.state_dict() == whole.loss_scaler.state_dict()
    for a, b in zip(_weights(resumed), _weights(whole)):
        np.testing.assert_array_equal(a, b)
    record, _ = nnxp.archive.read(tmp_path / "ckpt-2.npz")
    assert record["loss_scaler"]["growth_interval"] == 5


def test_a_checkpoint_without_a_scaler_still_loads_and_resumes(tmp_path, rng) -> None:
    X = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model = Sequential([Dense(4, 3)], seed=0)
    model.fit(X, y, epochs=1, verbose=0, callbacks=[ModelCheckpoint(str(tmp_path / "c.npz"))])
    record, _ = nnxp.archive.read(tmp_path / "c.npz")
    assert "loss_scaler" not in record  # float32: as files were before
    fresh = Sequential([Dense(4, 3)], seed=0)
    fresh.fit(X, y, epochs=2, verbose=0, resume_from=tmp_path / "c.npz", precision="float16")
    assert fresh.loss_scaler is not None and fresh.loss_scaler.growth_tracker > 0


def test_weight_penalties_are_unscaled_with_the_loss(bk) -> None:
    """Dense(l2=) adds its gradient inside backward: under a loss scale it is scaled too, so
    after unscaling a float16 step matches the float32 one closely."""
    if "float16" not in _low_precisions(bk):
        pytest.skip(f"{bk.spec} has no float16")
    rng = np.random.default_rng(2)
    X = rng.normal(size=(16, 4)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    got = []
    for precision in ("float32", "float16"):
        model = Sequential([Dense(4, 3, l2=0.5)], seed=0)
        scale = LossScaler(init_scale=8.0) if precision == "float16" else None
        model.train_on_batch(X, y, optimizer=SGD(lr=1.0), precision=precision,
                             loss_scale=scale)
        assert scale is None or scale.skipped == 0
        got.append(_weights(model)[0])
        assert model.layers[0].l2 == 0.5
    np.testing.assert_allclose(got[1], got[0], atol=2e-3)


# --- float32 accumulation ---------------------------------------------------------------------


def test_batch_norm_statistics_accumulate_in_float32(bk) -> None:
    if "float16" not in _low_precisions(bk):
        pytest.skip(f"{bk.spec} has no float16")
    xp = bk.xp
    rng = np.random.default_rng(3)
    x64 = rng.normal(loc=300.0, scale=2.0, size=(512, 3))
    x16 = nnxp.asarray(x64, dtype="float16")
    y, cache, mean, var = norm_k.batch_norm_forward_train(x16, None, None, eps=1e-5, xp=xp)
    assert nnxp.backend.dtype_name(mean.dtype) == "float32"
    assert nnxp.backend.dtype_name(y.dtype) == "float16"
    exact = nnxp.to_numpy(nnxp.asarray(x64, dtype="float16")).astype(np.float64)
    np.testing.assert_allclose(nnxp.to_numpy(mean), exact.mean(0), rtol=1e-6)
    np.testing.assert_allclose(nnxp.to_numpy(var), exact.var(0), rtol=1e-4)
    dy = nnxp.asarray(rng.normal(size=(512, 3)) * 100, dtype="float16")
    dx, _, dbeta = norm_k.batch_norm_backward(dy, cache, xp=xp)
    assert nnxp.backend.dtype_name(dx.dtype) == "float16"
    np.testing.assert_allclose(nnxp.to_numpy(dbeta),
                               nnxp.to_numpy(dy).astype(np.float64).sum(0), rtol=1e-5)
    # float32 input: the usual path, untouched
    x32 = nnxp.asarray(x64, dtype="float32")
    _, _, m32, _ = norm_k.batch_norm_forward_train(x32, None, None, eps=1e-5, xp=xp)
    assert nnxp.backend.dtype_name(m32.dtype) == "float32"


def test_softmax_sums_in_float32(bk) -> None:
    if "float16" not in _low_precisions(bk):
        pytest.skip(f"{bk.spec} has no float16")
    x = nnxp.asarray(np.zeros((2, 3000)), dtype="float16")  # 3000 equal terms
    y = act_k.softmax(x, xp=bk.xp)
    assert nnxp.backend.dtype_name(y.dtype) == "float16"
    np.testing.assert_allclose(nnxp.to_numpy(y).astype(np.float64), 1 / 3000, rtol=1e-3)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"precision": "float8"}, ValueError,
     r"precision must be one of 'float32', 'float16', 'bfloat16', got 'float8'"),
    ({"precision": 16}, ValueError, r"precision must be one of .* got 16"),
    ({"loss_scale": True}, ValueError, r"loss_scale=True needs a low precision.*'float32'"),
    ({"precision": "float16", "loss_scale": "yes"}, TypeError,
     r"loss_scale must be None, True, False or an nnxp.precision.LossScaler, got 'yes'"),
])
def test_bad_precision_options_fail_before_any_step(options, error, match, rng) -> None:
    X = rng.normal(size=(16, 4)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    model = Sequential([Dense(4, 3)], seed=0)
    before = _weights(model)
    with pytest.raises(error, match=match):
        model.fit(X, y, epochs=1, verbose=0, **options)
    for a, b in zip(_weights(model), before):
        np.testing.assert_array_equal(a, b)


def test_a_backend_without_the_dtype_is_refused_naming_it() -> None:
    with nnxp.use_backend("array_api_strict"):
        model = Sequential([Dense(4, 3)], seed=0)
        X = np.zeros((8, 4), dtype=np.float32)
        with pytest.raises(ValueError, match=r"precision='float16': .*array_api_strict.* has no "
                                             r"float16 dtype; expected one of .*'float32'"):
            model.fit(X, np.zeros(8, dtype=np.int64), epochs=1, verbose=0, precision="float16")
        assert model.optimizer is None  # refused before anything was set up


def test_numpy_has_no_bfloat16_and_a_float64_model_is_refused(rng) -> None:
    X = rng.normal(size=(8, 4))
    y = rng.integers(0, 3, 8)
    with nnxp.use_backend("numpy"):
        with pytest.raises(ValueError, match="has no bfloat16 dtype"):
            Sequential([Dense(4, 3)], seed=0).fit(X, y, verbose=0, precision="bfloat16")
        with pytest.raises(ValueError, match="model's dtype must be float32, got float64"):
            Sequential([Dense(4, 3, dtype="float64")], seed=0).fit(
                X, y, verbose=0, precision="float16")


# --- the divergence gate in fit ---------------------------------------------------------------


class _AfterStep(Callback):
    def __init__(self) -> None:
        self.after: list[list[np.ndarray]] = []

    def on_train_begin(self, logs=None):
        self.after.append(_weights(self.model))

    def on_batch_end(self, batch, logs=None):
        self.after.append(_weights(self.model))


@pytest.mark.parametrize("name", sorted(set(OPTIMIZERS) - {"lbfgs"}))
def test_fit_with_a_nan_at_step_k_keeps_the_weights_and_state_of_step_k_minus_1(bk, name):
    """A sample that overflows in batch 4 (of 6): the error names step 4, the model holds the
    weights after step 3 and the optimizer counts 3 steps, on every backend and optimizer."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(48, 4)).astype(np.float32)
    X[27, :] = 3e38  # in batch 4 (batch_size 8, no shuffling): the layers overflow to inf/NaN
    y = rng.integers(0, 3, 48)
    model = Sequential([Dense(4, 8), BatchNorm1d(8), ReLU(), Dense(8, 3)], seed=0)
    after = _AfterStep()
    with pytest.raises(nnxp.TrainingDivergedError) as info:
        model.fit(X, y, epochs=1, batch_size=8, shuffle=False, verbose=0,
                  optimizer=OPTIMIZERS[name](), callbacks=[after])
    assert info.value.step == 4 and "those after step 3" in str(info.value)
    for got, want in zip(_weights(model), after.after[3]):
        np.testing.assert_array_equal(got, want)
    assert model.optimizer.iterations == 3
    assert all(s.step == 3 for s in model.optimizer.state.values())
    for b in model.layers[1].buffers.values():
        assert np.isfinite(nnxp.to_numpy(b)).all()


def test_layer_norm_statistics_accumulate_in_float32(bk) -> None:
    if "float16" not in _low_precisions(bk):
        pytest.skip(f"{bk.spec} has no float16")
    xp = bk.xp
    rng = np.random.default_rng(5)
    x64 = rng.normal(loc=300.0, scale=2.0, size=(4, 2048))
    x16 = nnxp.asarray(x64, dtype="float16")
    y, cache = norm_k.layer_norm_forward(x16, None, None, eps=1e-5, xp=xp)
    assert nnxp.backend.dtype_name(y.dtype) == "float16"
    xr = nnxp.to_numpy(x16).astype(np.float64)
    want = (xr - xr.mean(-1, keepdims=True)) / np.sqrt(xr.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(nnxp.to_numpy(y).astype(np.float64), want, atol=4e-3)
    dy = nnxp.asarray(rng.normal(size=(4, 2048)), dtype="float16")
    dx, _, dbeta = norm_k.layer_norm_backward(dy, cache, xp=xp)
    assert nnxp.backend.dtype_name(dx.dtype) == "float16"
    assert nnxp.backend.dtype_name(dbeta.dtype) == "float32"


def test_partial_fit_and_train_on_batch_take_the_precision(bk) -> None:
    if "float16" not in _low_precisions(bk):
        pytest.skip(f"{bk.spec} has no float16")
    rng = np.random.default_rng(6)
    X = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model = Sequential([Dense(4, 8), ReLU(), Dense(8, 3)], seed=0)
    model.partial_fit(X, y, optimizer=Adam(), precision="float16")
    scaler = model.loss_scaler
    model.partial_fit(X, y, precision="float16")  # the same scaler continues
    assert model.loss_scaler is scaler and scaler.growth_tracker == 2  # one batch of 32 each
    loss = model.train_on_batch(X, y, precision="float16")
    assert np.isfinite(loss) and scaler.growth_tracker == 3
    before = _weights(model)
    X_bad = X.copy()
    X_bad[0, :] = 3e38  # overflows in float16 (and float32) in the forward pass
    with pytest.raises(nnxp.TrainingDivergedError, match="weights are unchanged"):
        model.train_on_batch(X_bad, y, precision="float16")
    for a, b in zip(_weights(model), before):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.iterations == 3


def test_a_standardize_layer_keeps_the_compute_dtype(bk) -> None:
    """Standardize's float32 statistics must not promote the batch back to float32 (numpy) or
    break the next layer's matrix product (torch), as the command line's models begin with one."""
    seen: list[str] = []

    class Spy(ReLU):
        def forward(self, x, *, training=True):
            seen.append(nnxp.backend.dtype_name(x.dtype))
            return super().forward(x, training=training)

    rng = np.random.default_rng(7)
    X = rng.normal(loc=50.0, scale=10.0, size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    for precision in _low_precisions(bk):
        std = nnxp.layers.Standardize(4).fit(X)
        model = Sequential([std, Spy(), Dense(4, 3)], seed=0)
        seen.clear()
        model.fit(X, y, optimizer=SGD(lr=0.1), epochs=1, batch_size=16, verbose=0,
                  precision=precision)
        assert seen == [precision, precision]
        assert nnxp.backend.dtype_name(std.buffers["mean"].dtype) == "float32"
        assert np.isfinite(_weights(model)[0]).all()
