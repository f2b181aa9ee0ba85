"""Grouped optimizer updates over flat buffers (nnxp.optim.flat): bit for bit the per-parameter
path, whatever replaces the arrays between steps. (The recorded trajectories of
tests/trajectories.py run on the flat path too: test_optim.py's parameters share a buffer.)

Every test trains two copies of one model, one with the flat layout (the default where the
backend has it) and one with ``optimizer.flat = False`` (one update per parameter), and asks
for identical weights, gradients and optimizer state. On array-api-strict (no in-place writes)
both run the per-parameter path, so the tests hold there trivially and still run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import nnxp
from nnxp import optim
from nnxp.layers import BatchNorm1d, Dense, PReLU, ReLU
from nnxp.optim.flat import flat_backend

N_IN, N_OUT, N = 7, 3, 24

BUSY: dict[str, dict[str, Any]] = {
    "SGD": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
    "Adagrad": {"weight_decay": 0.1, "lr_decay": 0.01},
    "RMSprop": {"centered": True, "momentum": 0.9, "weight_decay": 0.1},
    "Adadelta": {"weight_decay": 0.1}, "Adam": {"weight_decay": 0.1, "amsgrad": True},
    "AdamW": {"amsgrad": True}, "Adamax": {"weight_decay": 0.1},
    "NAdam": {"weight_decay": 0.1},
}
"""Options that switch on every buffer and branch of each update rule."""

FIRST_ORDER = sorted(BUSY)
assert {n.lower() for n in FIRST_ORDER} == set(optim.OPTIMIZERS) - {"lbfgs"}, "a new optimizer?"


def _model() -> nnxp.Sequential:
    """Dense with an activation that has parameters, BatchNorm's γ/β, PReLU, a penalty."""
    return nnxp.Sequential([Dense(N_IN, 6, activation="prelu"), BatchNorm1d(6), ReLU(),
                            Dense(6, 5, l2=1e-3), PReLU(), Dense(5, N_OUT)], seed=3)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((N, N_IN)).astype(np.float32),
            rng.integers(0, N_OUT, N))


def _pair(name: str, **options: Any) -> list[tuple[nnxp.Sequential, Any]]:
    """(model, optimizer) twice: flat layout (default) and per parameter (flat=False)."""
    pairs = []
    for flat in (None, False):
        opt = getattr(optim, name)(**{**BUSY[name], **options})
        opt.flat = flat
        pairs.append((_model(), opt))
    return pairs


def _train(model: nnxp.Sequential, opt: Any, steps: int = 3, **kw: Any) -> None:
    X, y = _data()
    model.fit(X, y, optimizer=opt, epochs=1, batch_size=N // steps, shuffle=False,
              verbose=0, **kw)


def _assert_same(a: tuple[nnxp.Sequential, Any], b: tuple[nnxp.Sequential, Any]) -> None:
    (ma, oa), (mb, ob) = a, b
    for la, lb in zip(ma.layers, mb.layers):
        for store in ("params", "buffers", "grads"):
            da, db = getattr(la, store), getattr(lb, store)
            assert sorted(da) == sorted(db)
            for k in da:
                np.testing.assert_array_equal(nnxp.to_numpy(da[k]), nnxp.to_numpy(db[k]),
                                              err_msg=f"{la!r} {store}[{k!r}]")
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["iterations"] == sb["iterations"]
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        assert sa["state"][i].keys() == sb["state"][i].keys()
        for name, value in sa["state"][i].items():
            np.testing.assert_array_equal(value, sb["state"][i][name], err_msg=f"{i} {name}")


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_grouped_updates_equal_the_per_parameter_path(bk, name) -> None:
    """Every first-order optimizer with its busy options, two parameter groups with other
    hyperparameters, clipping by value and by norm."""
    groups = [{"params": lambda layer, key: key == "b", "lr": 0.05}]
    a, b = _pair(name, param_groups=groups, clip_norm=0.5, clip_value=0.3)
    for pair in (a, b):
        _train(*pair, steps=4)
    _assert_same(a, b)


def test_parameters_and_gradients_live_in_the_flat_buffers(bk) -> None:
    model, opt = _model(), optim.Adam()
    _train(model, opt)
    dense = model.layers[0]
    W, dW = dense.params["W"], dense.grads["W"]
    _train(model, opt)
    if not nnxp.backend.supports_inplace(bk.xp):
        assert dense.params["W"] is not W and dense.grads["W"] is not dW  # functional path
        return
    assert dense.params["W"] is W  # updated in place, wherever it lives
    if flat_backend(bk.xp):
        assert dense.grads["W"] is dW  # backward wrote into the same view
        # the state records of opt.state are views into the group's flat state
        state = opt.state[0]
        assert state.step == opt.state[len(opt.state) - 1].step == 2 * 3
    else:
        assert dense.grads["W"] is not dW


def test_restore_weights_load_and_rebind_keep_the_paths_equal(bk, tmp_path) -> None:
    """Arrays replaced between steps (a snapshot restored, a checkpoint loaded, another
    optimizer bound to the same model, a max-norm constraint) are taken up by the flat path."""
    a, b = _pair("Adam")
    for model, opt in (a, b):
        _train(model, opt)
        snapshot = model.snapshot_weights()
        _train(model, opt)
        model.restore_weights(snapshot)
        _train(model, opt)
        state = opt.state_dict()
        other = optim.SGD(momentum=0.9)
        other.flat = opt.flat
        _train(model, other)  # a second optimizer takes the parameters over, then gives back
        opt.load_state_dict(state)
        _train(model, opt)
    _assert_same(a, b)


def test_unequal_step_counts_fall_back_to_one_update_per_parameter(bk) -> None:
    """State loaded with different step counts per parameter cannot share one flat record."""
    a, b = _pair("Adam")
    for model, opt in (a, b):
        _train(model, opt)
        state = opt.state_dict()
        state["state"][0]["step"] = 1  # as if parameter 0 had joined later
        opt.load_state_dict(state)
        _train(model, opt)
        assert opt.state[0].step == 1 + 3 and opt.state[1].step == 3 + 3
    _assert_same(a, b)


def test_moving_the_model_rebuilds_the_layout(bk) -> None:
    """model.to(...) moves params, grads and state; the layout is rebuilt on the new backend."""
    with nnxp.use_backend("numpy"):
        a, b = _pair("SGD")
        for model, opt in (a, b):
            _train(model, opt)
    for model, opt in (a, b):
        model.optimizer = opt
        model.to(bk.spec)
        _train(model, opt)
    _assert_same(a, b)


def test_update_sizes_tell_a_memory_plan_how_large_the_temporaries_are(bk) -> None:
    """A flat unit updates all of its parameters in one call: its temporaries are that large."""
    sizes = {}
    for flat in (None, False):
        model, opt = _model(), optim.Adam()
        opt.flat = flat
        opt.bind(model.parameters())
        sizes[flat] = opt.update_sizes()
        assert sum(sizes[flat]) == model.count_params()
    largest = max(int(np.prod(p.shape)) for layer in _model().layers
                  for p in layer.params.values())
    assert max(sizes[False]) == largest and len(sizes[False]) == len(_model().parameters())
    if flat_backend(bk.xp):
        assert sizes[None] == [_model().count_params()]  # one group, one dtype: one unit
    else:
        assert sizes[None] == sizes[False]


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_blocked_updates_equal_one_piece(bk, name) -> None:
    """A unit updated block by block (blocks of 5 elements here, crossing every parameter's
    edge, with a short last block) gives what one piece gives, bit for bit: buffers made on
    their first use (momentum, AMSGrad), the step counts, two groups, clipping, and a gated
    step that is shut and one that is open."""
    groups = [{"params": lambda layer, key: key == "b", "lr": 0.05}]
    runs = []
    for block in (5, 0):
        opt = getattr(optim, name)(**BUSY[name], param_groups=groups, clip_norm=0.5)
        opt.update_block = block
        runs.append((_model(), opt))
    X, y = _data()
    xp = bk.xp
    for model, opt in runs:
        _train(model, opt, steps=4)
        x, labels = nnxp.asarray(X[:8]), nnxp.asarray(y[:8])
        for open_ in (False, True):
            model.loss_and_grads(x, labels)
            opt.step(gate=xp.asarray(open_, device=bk.device))
    _assert_same(*runs)


def test_update_block_default_and_checks(bk) -> None:
    model, opt = _model(), optim.SGD(momentum=0.9)
    opt.bind(model.parameters())
    expected = nnxp.backend.update_block_bytes(bk.xp, bk.device)
    if flat_backend(bk.xp) and expected is not None:  # a CPU: 256 KiB blocks
        assert opt.update_sizes() == [min(model.count_params(), expected // 4)]
    opt.update_block = 10
    if flat_backend(bk.xp):
        assert opt.update_sizes() == [10]
    for bad in (-1, 2.5, True, "64"):
        with pytest.raises(ValueError, match=r"SGD.update_block must be an int >= 0"):
            opt.update_block = bad


def test_a_state_with_a_device_counter_is_updated_per_parameter(bk) -> None:
    """A user's update rule whose state holds a 0-d array it updates in place once per call
    (a device step counter): a flat record needs one value per element (and blocks would
    count once per block), so such parameters are updated one by one, each counting its
    steps — it crashed in the flat layout before."""
    from dataclasses import dataclass

    from nnxp.optim.base import Hyperparameters as Options
    from nnxp.optim.base import Optimizer, hyperparameter
    from nnxp.validation import check_nonneg

    if not flat_backend(bk.xp):
        pytest.skip("no flat units on this backend")

    @dataclass
    class CountingState:
        calls: Any

    def counting_update(param, grad, state, *, lr, xp, inplace):
        state.calls += 1
        param -= grad * lr
        return param, state

    class CountingSGD(Optimizer):
        @dataclass(frozen=True)
        class Hyperparameters(Options):
            lr: float = hyperparameter(0.1, check_nonneg)

        State = CountingState
        init_state = staticmethod(lambda param, *, xp: CountingState(
            xp.zeros((), dtype=xp.int64, device=bk.device)))
        update = staticmethod(counting_update)

    model, opt = _model(), CountingSGD()
    opt.update_block = 5
    _train(model, opt, steps=3)
    counts = {int(nnxp.to_numpy(record.calls)) for record in opt.state.values()}
    assert counts == {3}


@pytest.mark.parametrize("name", ["Adam", "NAdam", "Adamax"])
def test_step_tables_follow_host_steps_and_advance(bk, name) -> None:
    """With step tables on, eager steps read the same numbers as from the host, also after
    advance(n) outside a replay (the tables are refilled, the device counter did not move)
    and after rewind; tables off give the reference."""
    if not flat_backend(bk.xp):
        pytest.skip("tables serve flat units")
    runs = []
    for tables in (False, True):
        model, opt = _model(), getattr(optim, name)(lr=0.01)
        opt.use_step_tables(tables)
        _train(model, opt, steps=2)
        opt.advance(2)  # as two steps would count, without their device work
        _train(model, opt, steps=3)
        opt.rewind(1)
        _train(model, opt, steps=2)
        runs.append((model, opt))
    _assert_same(*runs)
    assert runs[1][1].step_tables() and not runs[0][1].step_tables()


def test_rewind_recomputes_each_records_host_state_with_its_own_group(bk) -> None:
    """NAdam's running product after rewind(k) is the one before the k gated steps, for every
    parameter group (each with its own momentum decay): rewind used the last group's options
    for every record."""
    model = _model()
    opt = optim.NAdam(lr=0.01, param_groups=[{"params": lambda layer, key: key == "b",
                                              "momentum_decay": 0.5}])
    _train(model, opt, steps=3)
    before = {i: record.mu_product for i, record in opt.state.items()}
    X, y = _data()
    for _ in range(2):  # two gated steps, known to be skipped afterwards
        model.loss_and_grads(nnxp.asarray(X[:8]), nnxp.asarray(y[:8]))
        opt.step(gate=bk.xp.asarray(False, device=bk.device))
    opt.rewind(2)
    assert {i: record.mu_product for i, record in opt.state.items()} == before
    assert len(set(before.values())) == 2  # the two groups' products differ
