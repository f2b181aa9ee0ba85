"""Gradient accumulation: ``fit(..., accumulate=k)`` and ``train_on_batch(..., accumulate=k)``.

The oracle is the same model trained in float64 with one step per ``k``-times larger batch: with
``shuffle=True`` both runs slice the same permutation, so the samples of every step agree, and
accumulation must reproduce the trajectory to float64 rounding — for every optimizer case of
tests/trajectories.py (all options, clipping, parameter groups), with sample weights, L1/L2
penalties and a last, smaller step. Batch norm and dropout are checked against the documented
rule (each micro-batch on its own, gradients weighted by ``n_i / N``) written out by hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from trajectories import CASES

import nnxp
from nnxp.accumulation import GradientSum, part_bounds, share
from nnxp.callbacks import Callback
from nnxp.layers import BatchNorm1d, Dense, Dropout, Tanh
from nnxp.training import TrainingDivergedError

N, F, C = 23, 4, 3  # 23 samples: batches of 3 in steps of 2 leave a last step of 3 + 2


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(N, F))
    y = rng.integers(0, C, size=N)
    w = rng.uniform(0.2, 2.0, size=N)
    return X, y, w


def _optimizer(index: int) -> Any:
    name, opts = CASES[index]
    opts = dict(opts)
    if opts.get("param_groups") == "biases":
        opts["param_groups"] = [{"params": lambda layer, k: k == "b", "lr": 0.1,
                                 "weight_decay": 0.2}]
    return getattr(nnxp.optim, name)(**opts)


def _mlp(seed: int = 0, **dense: Any) -> nnxp.Sequential:
    return nnxp.Sequential([Dense(F, 6, dtype="float64", **dense), Tanh(),
                            Dense(6, C, dtype="float64", **dense)], seed=seed)


def _weights(model: nnxp.Sequential) -> np.ndarray:
    return np.concatenate([np.ravel(nnxp.to_numpy(p)) for layer in model.layers
                           for p in list(layer.params.values())
                           + list(getattr(layer, "buffers", {}).values())])


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{n}-{i}" for i, (n, _) in
                                                          enumerate(CASES)])
def test_k_micro_batches_equal_one_big_batch_for_every_optimizer(bk: Any, index: int) -> None:
    X, y, w = _data()
    runs = []
    for batch_size, k in ((6, 1), (3, 2)):
        model = _mlp(l1=0.01, l2=0.02)
        history = model.fit(X, y, optimizer=_optimizer(index), epochs=2, batch_size=batch_size,
                            accumulate=k, sample_weight=w, verbose=0)
        runs.append((_weights(model), history["loss"]))
    (big, big_loss), (acc, acc_loss) = runs
    np.testing.assert_allclose(acc, big, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(acc_loss, big_loss, rtol=1e-12)


def test_a_last_group_of_fewer_micro_batches_is_weighted_by_its_samples(bk: Any) -> None:
    """23 samples in batches of 2 with accumulate=4: steps of 8, 8 and 7 samples (4 + 4 + 4
    micro-batches, the last one of a single sample), against batches of 8."""
    X, y, w = _data()
    weights = []
    for batch_size, k in ((8, 1), (2, 4)):
        model = _mlp()
        model.fit(X, y, optimizer=nnxp.optim.SGD(lr=0.3, momentum=0.9), epochs=3,
                  batch_size=batch_size, accumulate=k, sample_weight=w, verbose=0)
        weights.append(_weights(model))
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-10, atol=1e-12)


def test_accumulate_one_is_the_ordinary_step_bit_for_bit(bk: Any) -> None:
    X, y, _ = _data()
    weights = []
    for kwargs in ({}, {"accumulate": 1}):
        model = _mlp()
        model.fit(X, y, optimizer=nnxp.optim.Adam(lr=0.01), epochs=2, batch_size=5, verbose=0,
                  **kwargs)
        weights.append(_weights(model))
    assert np.array_equal(weights[0], weights[1])


def test_gradient_sum_is_the_mean_over_the_samples_numpy_reference() -> None:
    """GradientSum against a NumPy float64 reference: Σ (n_i/N) mean_i = mean over all."""
    with nnxp.use_backend("numpy"):
        rng = np.random.default_rng(0)
        parts = [rng.normal(size=(n, 3)) for n in (4, 4, 1)]
        holder = type("H", (), {})()
        holder.params = {"g": np.zeros(3)}
        holder.grads = {}
        model = type("M", (), {"xp": nnxp.get_backend().xp,
                               "parameters": lambda self: [(holder, "g")]})()
        total = GradientSum(model, 9)
        for part in parts:
            holder.grads["g"] = part.mean(axis=0)
            total.add(part.shape[0])
        total.write()
        np.testing.assert_allclose(holder.grads["g"], np.concatenate(parts).mean(axis=0),
                                   rtol=1e-14)
    assert share(2, 8) == 0.25
    assert [part_bounds(7, 3, r) for r in range(3)] == [(0, 2), (2, 4), (4, 7)]


def _by_hand(model: nnxp.Sequential, X: Any, y: Any, opt: Any, batch_size: int, k: int,
             epochs: int) -> None:
    """The documented rule written out: every micro-batch forward and backward on its own
    (batch statistics, running-statistics update, dropout mask), gradients summed with the
    weights n_i/N, then one optimizer step (shuffle=False)."""
    opt.bind(model.parameters())
    xp = model.xp
    n = X.shape[0]
    starts = list(range(0, n, batch_size))
    for _ in range(epochs):
        for g in range(0, len(starts), k):
            group = [(s, min(s + batch_size, n)) for s in starts[g:g + k]]
            total = sum(hi - lo for lo, hi in group)
            sums: dict[tuple[int, str], Any] = {}
            for lo, hi in group:
                out = model.forward(X[lo:hi, ...], training=True)
                _, cache = model.loss.forward(out, y[lo:hi, ...], xp=xp)
                model.backward(model.loss.backward(cache, xp=xp), need_input_grad=False)
                for i, layer in enumerate(model.layers):
                    for key, grad in layer.grads.items():
                        term = grad * ((hi - lo) / total)
                        sums[i, key] = term if (i, key) not in sums else sums[i, key] + term
            for (i, key), grad in sums.items():
                model.layers[i].grads[key] = grad
            opt.step()


def _bn_dropout_model() -> nnxp.Sequential:
    return nnxp.Sequential([Dense(F, 6, dtype="float64"), BatchNorm1d(6, dtype="float64"),
                            Tanh(), Dropout(0.3), Dense(6, C, dtype="float64")], seed=5)


def test_batch_norm_and_dropout_follow_the_documented_rule(bk: Any) -> None:
    """Per-micro-batch statistics, running statistics updated once per micro-batch (torch's
    behaviour under accumulation), one dropout mask per micro-batch."""
    X, y, _ = _data()
    fitted = _bn_dropout_model()
    fitted.fit(X, y, optimizer=nnxp.optim.SGD(lr=0.2, momentum=0.5), epochs=2, batch_size=4,
               accumulate=3, shuffle=False, verbose=0)
    manual = _bn_dropout_model()
    Xd, yd = manual.check_data(X, y)
    _by_hand(manual, Xd, yd, nnxp.optim.SGD(lr=0.2, momentum=0.5), 4, 3, 2)
    np.testing.assert_allclose(_weights(fitted), _weights(manual), rtol=1e-12, atol=1e-14)
    bn = fitted.layers[1]
    assert bn.num_batches_tracked == 2 * 6  # six micro-batches per epoch, not two steps


def test_on_batch_end_and_the_progress_count_optimizer_steps(bk: Any) -> None:
    X, y, _ = _data()
    seen: list[tuple[int, float]] = []

    class Steps(Callback):
        def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
            seen.append((batch, int(logs["size"])))

    model = _mlp()
    model.fit(X, y, epochs=1, batch_size=3, accumulate=2, verbose=0, callbacks=[Steps()])
    assert seen == [(0, 6), (1, 6), (2, 6), (3, 5)]


def test_divergence_names_the_optimizer_step(bk: Any) -> None:
    """check_finite_every counts optimizer steps; the error's step is the optimizer step."""
    X, _, _ = _data()
    targets = np.zeros((N, C))
    targets[13, 0] = 1e200  # squared: inf, in micro-batch 5 of 3 samples = the third step of two
    model = _mlp()
    with pytest.raises(TrainingDivergedError) as info:
        model.fit(X, targets, loss="mse", epochs=1, batch_size=3, accumulate=2, shuffle=False,
                  verbose=0, check_finite_every=1)
    assert (info.value.epoch, info.value.step) == (1, 3)
    assert "batch 3 of 4" in str(info.value)


def test_train_on_batch_accumulates_micro_batches(bk: Any) -> None:
    X, y, w = _data()
    values, weights = [], []
    for k in (1, 4):
        model = _mlp(l2=0.05)
        opt = nnxp.optim.Adam(lr=0.05, clip_norm=0.5)
        values.append([model.train_on_batch(X, y, optimizer=opt, accumulate=k)
                       for _ in range(3)])
        weights.append(_weights(model))
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(values[1], values[0], rtol=1e-12)
    with pytest.raises(ValueError, match=r"accumulate=24 .* holds 23 samples"):
        _mlp().train_on_batch(X, y, accumulate=24)


@pytest.mark.parametrize("value, kind, text", [
    (0, ValueError, "accumulate must be > 0, got 0"),
    (-2, ValueError, "accumulate must be > 0, got -2"),
    (2.0, TypeError, "accumulate must be an int, got 2.0"),
    (True, TypeError, "accumulate must be an int, got True"),
    ("2", TypeError, "accumulate must be an int, got '2'"),
])
def test_bad_accumulate_is_refused_before_any_step(value: Any, kind: type, text: str) -> None:
    X, y, _ = _data()
    with nnxp.use_backend("numpy"):
        model = _mlp()
        before = _weights(model)
        for call in (lambda: model.fit(X, y, accumulate=value, verbose=0),
                     lambda: model.partial_fit(X, y, accumulate=value),
                     lambda: model.train_on_batch(X, y, accumulate=value)):
            with pytest.raises(kind, match=text):
                call()
        assert np.array_equal(_weights(model), before)
        assert model.optimizer is None


def test_lbfgs_is_refused_with_accumulate() -> None:
    X, y, _ = _data()
    with nnxp.use_backend("numpy"):
        model = _mlp()
        before = _weights(model)
        with pytest.raises(ValueError, match="accumulate=2 needs a first-order optimizer; LBFGS"):
            model.fit(X, y, optimizer=nnxp.optim.LBFGS(), accumulate=2, verbose=0)
        assert np.array_equal(_weights(model), before)
