"""Learning-rate schedules: closed forms, torch.optim.lr_scheduler values, plateau logic."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from reference import optimizers as ref

import nnxp
from nnxp import optim, schedules

N_EPOCHS = 25
BASES = (0.03, 0.1)  # the groups' learning rates, in order: biases (a user group), the rest


class Holder:
    def __init__(self) -> None:
        self.xp = nnxp.get_backend().xp
        self.params = {"W": nnxp.asarray(np.ones((2, 2))), "b": nnxp.asarray(np.ones(2))}
        self.grads = {"W": nnxp.asarray(np.ones((2, 2))), "b": nnxp.asarray(np.ones(2))}


def _optimizer():
    holder = Holder()
    opt = optim.SGD(lr=BASES[1], momentum=0.9,
                    param_groups=[{"params": lambda lay, k: k == "b", "lr": BASES[0]}])
    opt.bind([(holder, "W"), (holder, "b")])
    return opt, holder


def _our_lrs(make, n=N_EPOCHS):
    opt, _ = _optimizer()
    sched = make(opt)
    out = [[g["lr"] for g in opt.param_groups]]
    for _ in range(n):
        sched.step()
        out.append([g["lr"] for g in opt.param_groups])
    return np.array(out)


def _torch_lrs(make, n=N_EPOCHS):
    torch = pytest.importorskip("torch")
    params = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": BASES[0]},
                           {"params": [params[1]], "lr": BASES[1]}], momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make(torch.optim.lr_scheduler, opt)
        out = [[g["lr"] for g in opt.param_groups]]
        for _ in range(n):
            opt.step()
            sched.step()
            out.append([g["lr"] for g in opt.param_groups])
    return np.array(out)


# (name, ours, torch's, closed form from the reference)
CASES = [
    ("step",
     lambda o: schedules.StepLR(o, step_size=4, gamma=0.5),
     lambda m, o: m.StepLR(o, step_size=4, gamma=0.5),
     lambda b, e: ref.lr_step(b, e, 4, 0.5)),
    ("multistep",
     lambda o: schedules.MultiStepLR(o, milestones=[12, 3, 7], gamma=0.3),
     lambda m, o: m.MultiStepLR(o, milestones=[3, 7, 12], gamma=0.3),
     lambda b, e: ref.lr_multistep(b, e, [3, 7, 12], 0.3)),
    ("exponential",
     lambda o: schedules.ExponentialLR(o, gamma=0.9),
     lambda m, o: m.ExponentialLR(o, gamma=0.9),
     lambda b, e: ref.lr_exponential(b, e, 0.9)),
    ("cosine",
     lambda o: schedules.CosineAnnealingLR(o, T_max=10, eta_min=1e-3),
     lambda m, o: m.CosineAnnealingLR(o, T_max=10, eta_min=1e-3),
     lambda b, e: ref.lr_cosine(b, e, 10, 1e-3)),
    ("warmup",
     lambda o: schedules.LinearWarmup(o, warmup_epochs=5, start_factor=0.1),
     lambda m, o: m.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=5),
     lambda b, e: ref.lr_linear_warmup(b, e, 5, 0.1)),
    ("warmup-cosine",
     lambda o: schedules.LinearWarmup(o, warmup_epochs=4, start_factor=0.25,
                                      after=schedules.CosineAnnealingLR(T_max=12)),
     lambda m, o: m.SequentialLR(o, [m.LinearLR(o, start_factor=0.25, total_iters=4),
                                     m.CosineAnnealingLR(o, T_max=12)], milestones=[4]),
     lambda b, e: (ref.lr_linear_warmup(b, e, 4, 0.25) if e < 4
                   else ref.lr_cosine(b, e - 4, 12, 0.0))),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_schedule_matches_closed_form(case):
    _, ours, _, closed = case
    got = _our_lrs(ours)
    expected = np.array([[closed(BASES[0], e), closed(BASES[1], e)]
                         for e in range(N_EPOCHS + 1)])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_schedule_matches_torch(case):
    _, ours, theirs, _ = case
    got = _our_lrs(ours)
    expected = _torch_lrs(theirs)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-15)


def test_hand_computed_values():
    opt, _ = _optimizer()
    sched = schedules.StepLR(opt, step_size=2, gamma=0.5)
    assert [sched.step()[-1] for _ in range(5)] == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025])
    cos = schedules.CosineAnnealingLR(T_max=4)
    assert [cos.lr_at(e, 1.0) for e in range(5)] == pytest.approx(
        [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2, 0.0])
    warm = schedules.LinearWarmup(warmup_epochs=4, start_factor=0.2)
    assert [warm.lr_at(e, 1.0) for e in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1, 1])
    multi = schedules.MultiStepLR(milestones=[2, 2, 5], gamma=0.1)
    assert [multi.lr_at(e, 1.0) for e in (0, 1, 2, 4, 5, 9)] == pytest.approx(
        [1, 1, 0.01, 0.01, 0.001, 0.001])
    assert schedules.ExponentialLR(gamma=0.5).lr_at(3, 8.0) == 1.0


def test_step_with_explicit_epoch_and_get_last_lr():
    opt, _ = _optimizer()
    sched = schedules.ExponentialLR(opt, gamma=0.5)
    assert sched.get_last_lr() == [0.03, 0.1]
    assert sched.step(epoch=3) == pytest.approx([0.03 / 8, 0.1 / 8])
    assert opt.lr == pytest.approx(0.1 / 8)
    assert sched.step() == pytest.approx([0.03 / 16, 0.1 / 16])
    assert [g["initial_lr"] for g in opt.param_groups] == [0.03, 0.1]


def test_state_dict_resumes_schedule():
    opt, _ = _optimizer()
    sched = schedules.CosineAnnealingLR(opt, T_max=10)
    for _ in range(4):
        sched.step()
    state = sched.state_dict()
    expected = [sched.step() for _ in range(3)]
    opt2, _ = _optimizer()
    resumed = schedules.CosineAnnealingLR(opt2, T_max=10)
    resumed.load_state_dict(state)
    assert [resumed.step() for _ in range(3)] == expected


def test_schedule_drives_the_optimizer_updates():
    opt, holder = _optimizer()
    sched = schedules.StepLR(opt, step_size=1, gamma=0.0 + 0.5)
    opt2 = optim.SGD(lr=0.1 * 0.5, momentum=0.9,
                     param_groups=[{"params": lambda lay, k: k == "b", "lr": 0.03 * 0.5}])
    h2 = Holder()
    opt2.bind([(h2, "W"), (h2, "b")])
    sched.step()
    opt.step()
    opt2.step()
    np.testing.assert_array_equal(nnxp.to_numpy(holder.params["W"]), nnxp.to_numpy(h2.params["W"]))
    np.testing.assert_array_equal(nnxp.to_numpy(holder.params["b"]), nnxp.to_numpy(h2.params["b"]))


# ----------------------------------------------------------------------------------------------
# ReduceLROnPlateau
# ----------------------------------------------------------------------------------------------

METRICS = [1.0, 0.9, 0.95, 0.95, 0.95, 0.89, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5, 0.6, 0.6, 0.6, 0.6,
           0.6, 0.6, 0.6, 0.6]
PLATEAU = [
    {"patience": 2},
    {"patience": 1, "factor": 0.5, "cooldown": 2},
    {"patience": 0, "factor": 0.5, "min_lr": 0.02},
    {"patience": 1, "threshold": 0.05, "threshold_mode": "abs"},
    {"patience": 1, "mode": "max", "threshold": 0.01},
    {"patience": 1, "min_lr": [0.001, 0.02], "factor": 0.2},
]


@pytest.mark.parametrize("kwargs", PLATEAU, ids=lambda k: "-".join(f"{a}={b}" for a, b in
                                                                    k.items()))
def test_plateau_matches_torch(kwargs):
    torch = pytest.importorskip("torch")
    opt, _ = _optimizer()
    ours = schedules.ReduceLROnPlateau(opt, **kwargs)
    params = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    topt = torch.optim.SGD([{"params": [params[0]], "lr": BASES[0]},
                            {"params": [params[1]], "lr": BASES[1]}])
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
    for value in METRICS:
        got = ours.step(value)
        topt.step()
        theirs.step(value)
        assert got == pytest.approx([g["lr"] for g in topt.param_groups], rel=1e-12)


def test_plateau_hand_computed():
    opt, _ = _optimizer()
    sched = schedules.ReduceLROnPlateau(opt, patience=2, factor=0.5)
    lrs = [sched.step(v)[-1] for v in [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]]
    # bad epochs: 0,1,2,3 (>2: halve, reset) then 0.5 improves, then 1,2,3 (>2: halve)
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025])
    assert sched.requires_metric and not schedules.StepLR.requires_metric
    with pytest.raises(ValueError, match="monitored value"):
        sched.step()


def test_plateau_state_dict():
    opt, _ = _optimizer()
    sched = schedules.ReduceLROnPlateau(opt, patience=1)
    for v in (1.0, 2.0):
        sched.step(v)
    opt2, _ = _optimizer()
    other = schedules.ReduceLROnPlateau(opt2, patience=1)
    other.load_state_dict(sched.state_dict())
    assert other.step(3.0) == sched.step(3.0) == pytest.approx([0.003, 0.01])


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

BAD = [
    (schedules.StepLR, {"step_size": 0}, "step_size must be an int >= 1, got 0"),
    (schedules.StepLR, {"step_size": 2, "gamma": -0.1}, "gamma"),
    (schedules.MultiStepLR, {"milestones": [2, 0]}, "milestones"),
    (schedules.MultiStepLR, {"milestones": 3}, "milestones must be a list"),
    (schedules.ExponentialLR, {"gamma": 0}, r"gamma must be in \(0"),
    (schedules.CosineAnnealingLR, {"T_max": 0}, "T_max"),
    (schedules.CosineAnnealingLR, {"T_max": 5, "eta_min": -1}, "eta_min"),
    (schedules.LinearWarmup, {"start_factor": 0.0}, "start_factor"),
    (schedules.LinearWarmup, {"after": "cosine"}, "after must be"),
    (schedules.ReduceLROnPlateau, {"factor": 1.0}, r"factor must be in \[0.0, 1.0\)"),
    (schedules.ReduceLROnPlateau, {"mode": "up"}, "mode must be"),
    (schedules.ReduceLROnPlateau, {"threshold_mode": "pct"}, "threshold_mode"),
    (schedules.ReduceLROnPlateau, {"patience": -1}, "patience"),
]


@pytest.mark.parametrize("cls, kwargs, match", BAD, ids=[f"{c.__name__}-{k}" for c, k, _ in BAD])
def test_invalid_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_unattached_and_wrong_optimizer():
    with pytest.raises(RuntimeError, match="bind"):
        schedules.StepLR(step_size=2).step()
    with pytest.raises(TypeError, match="param_groups"):
        schedules.StepLR(object(), step_size=2)
    opt, _ = _optimizer()
    with pytest.raises(ValueError, match="min_lr has 3 entries"):
        schedules.ReduceLROnPlateau(opt, min_lr=[0.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="monitored"):
        schedules.ReduceLROnPlateau().lr_at(1, 0.1)
    assert "step_size=2" in repr(schedules.StepLR(step_size=2))
