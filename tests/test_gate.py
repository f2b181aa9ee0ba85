"""The device-side gate of Optimizer.step (issue 11, item 6): a shut gate makes the step a no-op
on the device, an open one changes no bit, and rewind() puts the host-side step counts back."""

from __future__ import annotations

import numpy as np
import pytest
import trajectories

import nnxp
from nnxp.kernels import optimizers as opt_k


@pytest.mark.parametrize("dtype", trajectories.DTYPES)
def test_an_open_gate_reproduces_the_recorded_trajectories_bit_for_bit(bk, dtype) -> None:
    if bk.spec not in trajectories.BACKENDS:
        pytest.skip(f"no trajectories recorded for {bk.spec}")
    recorded = np.load(trajectories.DATA)
    for i in range(len(trajectories.CASES)):
        ours = trajectories.run_case(nnxp, bk.spec, dtype, i, gate=True)
        np.testing.assert_array_equal(ours, recorded[trajectories.key(bk.spec, dtype, i)],
                                      err_msg=str(trajectories.CASES[i]))


def _run(bk, index: int, *, bad_step: int | None, n_steps: int = 8) -> list[np.ndarray]:
    """Case ``index`` of tests/trajectories.py with float64 gradients; at ``bad_step`` the
    gradient holds a NaN and an inf, the gate (all gradients finite, computed on the device) is
    shut, and afterwards the optimizer is rewound by one step. Returns W‖b after every step."""
    name, opts = trajectories.CASES[index]
    opts = dict(opts)
    if opts.get("param_groups") == "biases":
        opts["param_groups"] = [{"params": lambda layer, k: k == "b", "lr": 0.1,
                                 "weight_decay": 0.2}]
    rng = np.random.default_rng(100 + index)
    xp = bk.xp
    holder = trajectories._Holder(xp, W=nnxp.asarray(rng.normal(size=(3, 4)), copy=True),
                                  b=nnxp.asarray(rng.normal(size=(4,)), copy=True))
    opt = getattr(nnxp.optim, name)(**opts)
    opt.bind([(holder, "W"), (holder, "b")])
    rows = []
    for step in range(n_steps):
        grads = {k: rng.normal(size=tuple(holder.params[k].shape)) for k in ("W", "b")}
        if step == bad_step:
            grads["W"][1, 2] = np.nan
            grads["b"][0] = np.inf
        holder.grads = {k: nnxp.asarray(v, copy=True) for k, v in grads.items()}
        gate = xp.all(xp.isfinite(holder.grads["W"])) & xp.all(xp.isfinite(holder.grads["b"]))
        if bad_step is None:
            if step == 3:  # the step the other run skips: leave it out here
                continue
            opt.step()
        else:
            opt.step(gate=gate)
            if step == bad_step:
                opt.rewind(1)
        rows.append(np.concatenate([nnxp.to_numpy(holder.params[k]).ravel()
                                    for k in ("W", "b")]))
    return rows


@pytest.mark.parametrize("index", range(len(trajectories.CASES)))
def test_a_nan_gradient_at_step_k_leaves_the_weights_of_step_k_minus_1(bk, index) -> None:
    """Every optimizer and option of the recorded trajectories, on every backend: the gated
    step with a non-finite gradient changes nothing, and after rewind(1) the run continues
    bit-identically to one that never saw that step (step counts, bias corrections, NAdam's
    momentum product and SGD's momentum buffer included)."""
    gated = _run(bk, index, bad_step=3)
    clean = _run(bk, index, bad_step=None)
    np.testing.assert_array_equal(gated[3], gated[2])  # the skipped step
    assert np.isfinite(gated[3]).all()
    np.testing.assert_array_equal(np.stack(gated[:3] + gated[4:]), np.stack(clean))


@pytest.mark.parametrize("index", [1, 13, 20])
def test_a_skipped_first_step_is_rewound_to_a_fresh_state(bk, index) -> None:
    """Skipping step 1 drops the record, so the next step starts it as torch would."""
    gated = _run(bk, index, bad_step=0, n_steps=5)
    rng = np.random.default_rng(100 + index)
    W0 = rng.normal(size=(3, 4))
    np.testing.assert_array_equal(gated[0][:12], W0.ravel())
    assert np.isfinite(np.stack(gated)).all()


def test_gate_gradient_zeroes_where_shut(bk) -> None:
    xp = bk.xp
    g = nnxp.asarray(np.array([1.0, np.nan, -np.inf]), copy=True)
    shut = xp.zeros((), dtype=xp.bool, device=g.device)
    np.testing.assert_array_equal(nnxp.to_numpy(opt_k.gate_gradient(g, shut, xp=xp)), 0.0)
    assert opt_k.gate_gradient(g, None, xp=xp) is g


def test_a_kernel_without_a_gate_is_gated_by_selection(bk) -> None:
    """A user's update rule that takes no ``gate`` still gets a no-op when the gate is shut."""
    from dataclasses import dataclass

    from nnxp.optim.base import Hyperparameters, Optimizer, hyperparameter
    from nnxp.validation import check_nonneg

    @dataclass(slots=True)
    class SumState:
        step: int
        total: object

    @dataclass(frozen=True)
    class SumHyperparameters(Hyperparameters):
        lr: float = hyperparameter(0.1, check_nonneg)

    def sum_init(param, *, xp):
        return SumState(0, xp.zeros(param.shape, dtype=param.dtype, device=param.device))

    def sum_update(param, grad, state, *, lr, xp, inplace=False):
        return param - (state.total + grad) * lr, SumState(state.step + 1, state.total + grad)

    class Sum(Optimizer):
        Hyperparameters = SumHyperparameters
        State = SumState
        init_state = staticmethod(sum_init)
        update = staticmethod(sum_update)

    xp = bk.xp
    holder = trajectories._Holder(xp, W=nnxp.asarray(np.ones(3), copy=True))
    opt = Sum(lr=0.5)
    opt.bind([(holder, "W")])
    holder.grads = {"W": nnxp.asarray(np.ones(3), copy=True)}
    opt.step()
    before = nnxp.to_numpy(holder.params["W"]).copy()
    holder.grads = {"W": nnxp.asarray(np.array([np.nan, 1.0, 1.0]), copy=True)}
    opt.step(gate=xp.all(xp.isfinite(holder.grads["W"])))
    np.testing.assert_array_equal(nnxp.to_numpy(holder.params["W"]), before)
    np.testing.assert_array_equal(nnxp.to_numpy(opt.state[0].total), np.ones(3))
