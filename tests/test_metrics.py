"""Metrics: values against scikit-learn / NumPy, accumulation over batches, names, fit wiring."""

from __future__ import annotations

import numpy as np
import pytest

import nnxp
from nnxp import backend
from nnxp.layers import Dense, ReLU
from nnxp.losses import BinaryCrossEntropy, SoftmaxCrossEntropy
from nnxp.metrics import (
    METRICS,
    Accuracy,
    MeanAbsoluteError,
    MeanSquaredError,
    Metric,
    R2Score,
    TopKAccuracy,
    get_metric,
    get_metrics,
)

skm = pytest.importorskip("sklearn.metrics")


def _value(bk, metric: Metric, outputs: np.ndarray, targets: np.ndarray,
           splits: tuple[int, ...] = ()) -> float:
    """The metric over ``outputs``/``targets`` folded in chunks cut at ``splits``."""
    out, tgt = bk.asarray(outputs), bk.asarray(targets)
    bounds = [0, *splits, outputs.shape[0]]
    state = None
    for a, b in zip(bounds[:-1], bounds[1:]):
        state = metric.update(state, out[a:b, ...], tgt[a:b, ...], xp=bk.xp)
    result = metric.result(state, xp=bk.xp)
    assert result.dtype == bk.xp.float64 and result.shape == ()
    return float(bk.to_numpy(result))


# --- classification -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("splits", [(), (7,), (1, 30, 31)])
def test_accuracy_matches_sklearn(bk, rng, dtype, splits) -> None:
    logits = rng.standard_normal((50, 6)).astype(dtype)
    labels = rng.integers(0, 6, 50)
    expected = skm.accuracy_score(labels, logits.argmax(axis=1))
    assert _value(bk, Accuracy(), logits, labels, splits) == pytest.approx(expected, abs=1e-12)


def test_accuracy_accepts_one_hot_targets_and_a_single_logit(bk, rng) -> None:
    logits = rng.standard_normal((40, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    onehot = np.eye(3, dtype=np.float32)[labels]
    expected = skm.accuracy_score(labels, logits.argmax(axis=1))
    assert _value(bk, Accuracy(), logits, onehot) == pytest.approx(expected)
    logit = rng.standard_normal((40, 1)).astype(np.float32)
    binary = rng.integers(0, 2, 40)
    expected = skm.accuracy_score(binary, (logit[:, 0] > 0).astype(int))
    assert _value(bk, Accuracy(), logit, binary) == pytest.approx(expected)


def test_accuracy_follows_the_loss_decision_rule(bk, rng) -> None:
    # probabilities of a sigmoid output: the loss says 0.5 is the threshold, not 0
    probs = rng.uniform(0, 1, (60, 1)).astype(np.float32)
    target = rng.integers(0, 2, 60).astype(np.float32)
    expected = skm.accuracy_score(target, (probs[:, 0] >= 0.5).astype(float))
    metric = get_metric("accuracy", loss=BinaryCrossEntropy())
    assert _value(bk, metric, probs, target) == pytest.approx(expected)
    assert _value(bk, Accuracy(), probs, target) != pytest.approx(expected)  # logit rule differs


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_accuracy_matches_sklearn(bk, rng, k) -> None:
    scores = rng.standard_normal((80, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 80)
    expected = skm.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(7))
    assert _value(bk, TopKAccuracy(k), scores, labels, (33,)) == pytest.approx(expected)


def test_top_k_with_k_beyond_the_classes_is_one(bk, rng) -> None:
    scores = rng.standard_normal((10, 3)).astype(np.float32)
    assert _value(bk, TopKAccuracy(5), scores, rng.integers(0, 3, 10)) == 1.0


def test_top_1_equals_accuracy(bk, rng) -> None:
    scores = rng.standard_normal((64, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 64)
    assert _value(bk, TopKAccuracy(1), scores, labels) == _value(bk, Accuracy(), scores, labels)


# --- regression -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_out", [1, 3])
@pytest.mark.parametrize("splits", [(), (5,), (2, 17, 40)])
def test_regression_metrics_match_sklearn(bk, rng, n_out, splits) -> None:
    pred = rng.standard_normal((50, n_out))
    true = pred + 0.3 * rng.standard_normal((50, n_out)) + rng.standard_normal(n_out)
    cases = [
        (MeanSquaredError(), skm.mean_squared_error(true, pred)),
        (MeanAbsoluteError(), skm.mean_absolute_error(true, pred)),
        (R2Score(), skm.r2_score(true, pred)),
    ]
    for metric, expected in cases:
        got = _value(bk, metric, pred, true, splits)
        assert got == pytest.approx(expected, rel=1e-10), metric.name


def test_regression_metrics_accept_1d_targets_for_one_output(bk, rng) -> None:
    pred = rng.standard_normal((30, 1))
    true = rng.standard_normal(30)
    assert _value(bk, R2Score(), pred, true) == pytest.approx(skm.r2_score(true, pred[:, 0]))
    assert _value(bk, MeanSquaredError(), pred, true) == pytest.approx(
        skm.mean_squared_error(true, pred[:, 0]))


def test_r2_merging_is_stable_in_float32(bk, rng) -> None:
    # a large offset would wreck Σy² − (Σy)²/n in float32; the pairwise merge keeps R² right
    true = (1e4 + rng.standard_normal((200, 1))).astype(np.float32)
    pred = (true + 0.1 * rng.standard_normal((200, 1))).astype(np.float32)
    expected = skm.r2_score(true.astype(np.float64), pred.astype(np.float64))
    got = _value(bk, R2Score(), pred, true, tuple(range(10, 200, 10)))
    assert got == pytest.approx(expected, abs=1e-4)


def test_r2_constant_target_follows_sklearn(bk) -> None:
    true = np.full((6, 2), 3.0)
    pred = np.stack([np.full(6, 3.0), np.arange(6.0)], axis=1)  # exact column, wrong column
    assert _value(bk, R2Score(), pred, true) == pytest.approx(skm.r2_score(true, pred))


def test_metric_call_is_one_batch(bk, rng) -> None:
    pred = rng.standard_normal((20, 2))
    true = rng.standard_normal((20, 2))
    value = MeanAbsoluteError()(bk.asarray(pred), bk.asarray(true))
    assert float(bk.to_numpy(value)) == pytest.approx(np.mean(np.abs(pred - true)))


def test_shape_mismatch_is_a_clear_error(bk) -> None:
    with pytest.raises(ValueError, match=r"metric 'mse' expects targets of the outputs' shape"):
        MeanSquaredError()(bk.asarray(np.zeros((4, 2))), bk.asarray(np.zeros((4, 3))))
    with pytest.raises(ValueError, match=r"metric 'accuracy' expects integer labels"):
        Accuracy()(bk.asarray(np.zeros((4, 2))), bk.asarray(np.zeros(5, dtype=np.int64)))


# --- names ----------------------------------------------------------------------------------------


def test_names_and_aliases() -> None:
    assert set(METRICS) == {"accuracy", "top_k_accuracy", "mse", "mae", "r2"}
    assert get_metric("acc").name == "accuracy"
    assert get_metric("mean_squared_error").name == "mse"
    assert get_metric("MAE").name == "mae"
    assert get_metric("r2_score").name == "r2"
    top = get_metric("top_k_accuracy")
    assert isinstance(top, TopKAccuracy) and top.k == 5 and top.name == "top_k_accuracy"
    top3 = get_metric("top_3_accuracy")
    assert isinstance(top3, TopKAccuracy) and top3.k == 3 and top3.name == "top_3_accuracy"
    mine = R2Score()
    assert get_metric(mine) is mine


def test_bad_names_and_lists() -> None:
    with pytest.raises(ValueError, match=r"metric 'f1' is not known; valid names are .*accuracy"):
        get_metric("f1")
    with pytest.raises(TypeError, match="metrics must be names"):
        get_metric(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="more than once"):
        get_metrics(["acc", "accuracy"], is_classifier=True)
    with pytest.raises(ValueError, match="k must be a positive int"):
        TopKAccuracy(0)
    assert [m.name for m in get_metrics(None, is_classifier=True)] == ["accuracy"]
    assert get_metrics(None, is_classifier=False) == []
    assert [m.name for m in get_metrics("mse", is_classifier=False)] == ["mse"]


def test_reserved_names_are_refused() -> None:
    class Named(Metric):
        name = "val_thing"

    with pytest.raises(ValueError, match="reserved"):
        get_metrics([Named()], is_classifier=True)


# --- wiring into fit / evaluate -------------------------------------------------------------------


def _regression_data(rng, n=48):
    X = rng.standard_normal((n, 4)).astype(np.float32)
    y = (X @ rng.standard_normal((4, 2)) + 0.1 * rng.standard_normal((n, 2))).astype(np.float32)
    return X, y


def test_default_metrics_in_history(bk, rng) -> None:
    X = rng.standard_normal((40, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    clf = nnxp.Sequential([Dense(4, 8), ReLU(), Dense(8, 3)], seed=0)
    h = clf.fit(X, labels, epochs=1, verbose=0)
    assert set(h.history) == {"loss", "accuracy", "lr", "epoch_time"}
    Xr, yr = _regression_data(rng)
    reg = nnxp.Sequential([Dense(4, 8), ReLU(), Dense(8, 2)], seed=0)
    h = reg.fit(Xr, yr, loss="mse", epochs=1, verbose=0)
    assert set(h.history) == {"loss", "lr", "epoch_time"}


def test_training_metrics_are_those_of_the_epoch_outputs(bk, rng) -> None:
    # full batch: the epoch's single forward pass is at the initial weights
    X, y = _regression_data(rng)
    model = nnxp.Sequential([Dense(4, 8), ReLU(), Dense(8, 2)], seed=1)
    before = nnxp.to_numpy(model.forward(nnxp.asarray(X))).astype(np.float64)
    h = model.fit(X, y, loss="mse", epochs=1, batch_size=None, verbose=0,
                  metrics=["mse", "mae", "r2"], shuffle=False)
    assert h["mse"][0] == pytest.approx(skm.mean_squared_error(y, before), rel=1e-5)
    assert h["mae"][0] == pytest.approx(skm.mean_absolute_error(y, before), rel=1e-5)
    assert h["r2"][0] == pytest.approx(skm.r2_score(y, before), rel=1e-5, abs=1e-6)
    assert h["loss"][0] == pytest.approx(h["mse"][0], rel=1e-5)


def test_validation_metrics_are_those_of_the_final_weights(bk, rng) -> None:
    X, y = _regression_data(rng, 64)
    Xv, yv = _regression_data(rng, 20)
    model = nnxp.Sequential([Dense(4, 8), ReLU(), Dense(8, 2)], seed=2)
    h = model.fit(X, y, loss="mse", epochs=2, batch_size=16, verbose=0,
                  validation_data=(Xv, yv), metrics=["r2", "mae"])
    after = nnxp.to_numpy(model.predict(Xv)).astype(np.float64)
    assert h["val_r2"][-1] == pytest.approx(skm.r2_score(yv, after), rel=1e-5, abs=1e-6)
    assert h["val_mae"][-1] == pytest.approx(skm.mean_absolute_error(yv, after), rel=1e-5)
    assert h["val_loss"][-1] == pytest.approx(skm.mean_squared_error(yv, after), rel=1e-5)


def test_evaluate_with_metrics(bk, rng) -> None:
    X = rng.standard_normal((90, 4)).astype(np.float32)
    labels = rng.integers(0, 6, 90)
    model = nnxp.Sequential([Dense(4, 8), ReLU(), Dense(8, 6)], seed=0)
    scores = nnxp.to_numpy(model.predict_proba(X)).astype(np.float64)
    scores /= scores.sum(axis=1, keepdims=True)  # float32 rounding: renormalise for sklearn
    result = model.evaluate(X, labels, batch_size=32,
                            metrics=["accuracy", "top_3_accuracy"])
    assert set(result) == {"loss", "accuracy", "top_3_accuracy"}
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(labels, scores.argmax(1)))
    assert result["top_3_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(labels, scores, k=3, labels=np.arange(6)))
    assert result["loss"] == pytest.approx(skm.log_loss(labels, scores, labels=np.arange(6)),
                                           rel=1e-5)
    assert set(model.evaluate(X, labels)) == {"loss", "accuracy"}


def test_one_host_transfer_per_epoch(monkeypatch, rng) -> None:
    X = rng.standard_normal((64, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 64)
    calls = {"n": 0}
    real = backend.to_numpy

    def counting(x):
        calls["n"] += 1
        return real(x)

    monkeypatch.setattr(backend, "to_numpy", counting)
    counts = []
    for epochs in (1, 4):
        model = nnxp.Sequential([Dense(4, 8), ReLU(), Dense(8, 3)], seed=0)
        calls["n"] = 0
        model.fit(X, labels, epochs=epochs, batch_size=8, verbose=0,
                  metrics=["accuracy", "top_k_accuracy"], validation_split=0.25,
                  diagnostics=True)
        counts.append(calls["n"])
    assert counts[1] - counts[0] == 3  # 8 steps per epoch, one transfer per extra epoch


def test_loss_is_not_a_metric_object() -> None:
    assert not isinstance(SoftmaxCrossEntropy(), Metric)


def test_hit_counts_are_0d_int64_on_the_device(bk, rng) -> None:
    """Accuracy's and top-k's per-batch counts (``count_nonzero`` of the hits): 0-d int64
    arrays on the outputs' device, equal to the counts by hand, for every loss's rule."""
    logits = rng.normal(size=(13, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=13)
    outputs, targets = bk.asarray(logits), bk.asarray(labels)
    hits = [SoftmaxCrossEntropy().n_correct(outputs, targets, xp=bk.xp),
            Accuracy().update(None, outputs, targets, xp=bk.xp)[0],
            TopKAccuracy(k=2).update(None, outputs, targets, xp=bk.xp)[0]]
    top2 = np.argsort(-logits, axis=1)[:, :2]
    right = int((logits.argmax(1) == labels).sum())
    want = [right, right, int((top2 == labels[:, None]).any(1).sum())]
    for got, expected in zip(hits, want):
        assert got.ndim == 0 and got.dtype == bk.xp.int64
        assert backend.device_of(got) == backend.device_of(outputs)
        assert int(backend.to_float(got)) == expected
    probs = bk.asarray(np.array([[0.2], [0.7], [0.9]], np.float32))
    binary = BinaryCrossEntropy().n_correct(probs, bk.asarray(np.array([0.0, 0.0, 1.0],
                                                                       np.float32)), xp=bk.xp)
    assert binary.dtype == bk.xp.int64 and int(backend.to_float(binary)) == 2
