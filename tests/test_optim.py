"""Optimizers: torch.optim trajectories, a NumPy reference, groups, state, clipping, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trajectories
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import optimizers as ref

import nnxp
from nnxp import optim
from nnxp.kernels import optimizers as kern
from nnxp.layers import Dense, ReLU
from nnxp.optim.base import Hyperparameters as HyperparametersBase
from nnxp.optim.base import hyperparameter, record_items
from nnxp.optim.flat import flat_backend
from nnxp.validation import check_nonneg

N_STEPS = 50

# (class name, options): every option of every first-order optimizer appears at least once;
# the same cases as the recorded trajectories, less the ones about clipping and groups (which
# have tests of their own below)
CASES = [(name, opts) for name, opts in trajectories.CASES
         if not {"clip_norm", "clip_value", "param_groups"} & set(opts)]
FIRST_ORDER = ["SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "Adamax", "NAdam"]


def _case_id(case: tuple[str, dict]) -> str:
    name, opts = case
    return name + ("-" + "-".join(f"{k}={v}" for k, v in opts.items()) if opts else "")


class Holder:
    """A minimal object following the layer protocol's parameter part."""

    def __init__(self, **params: object) -> None:
        self.xp = nnxp.get_backend().xp
        self.params = dict(params)
        self.grads: dict[str, object] = {}

    def __repr__(self) -> str:
        return f"Holder({sorted(self.params)})"


def _problem(seed: int = 0, n_steps: int = N_STEPS):
    rng = np.random.default_rng(seed)
    theta0 = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))}
    grads = [{"W": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))} for _ in range(n_steps)]
    return theta0, grads


def _run_nnxp(opt, theta0, grads, dtype="float64"):
    holder = Holder(**{k: nnxp.asarray(v, dtype=dtype, copy=True) for k, v in theta0.items()})
    opt.bind([(holder, "W"), (holder, "b")])
    out = []
    for g in grads:
        holder.grads = {k: nnxp.asarray(v, dtype=dtype, copy=True) for k, v in g.items()}
        opt.step()
        out.append({k: nnxp.to_numpy(holder.params[k]).copy() for k in ("W", "b")})
    return out, holder


def _torch_trajectory(name, theta0, grads, groups, defaults=None):
    """torch's trajectory; ``defaults`` also go to the constructor (torch's Adagrad reads
    initial_accumulator_value from there, not from the groups)."""
    torch = pytest.importorskip("torch")
    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in theta0.items()}
    opt = getattr(torch.optim, name)([{**g, "params": [tp[k] for k in keys]}
                                      for keys, g in groups], **(defaults or {}))
    out = []
    for g in grads:
        for k, v in g.items():
            tp[k].grad = torch.tensor(v, dtype=torch.float64)
        opt.step()
        out.append({k: t.detach().numpy().copy() for k, t in tp.items()})
    return out


def _assert_close(ours, theirs, atol):
    assert len(ours) == len(theirs)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for k in ("W", "b"):
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=atol,
                                       err_msg=f"step {step + 1}, parameter {k}")


# ----------------------------------------------------------------------------------------------
# Trajectories: NumPy reference (always) and torch.optim (when installed), every backend
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_trajectory_matches_reference(bk, case):
    name, opts = case
    theta0, grads = _problem()
    ours, _ = _run_nnxp(getattr(optim, name)(**opts), theta0, grads)
    expected = [{k: step for k, step in zip(("W", "b"), pair)} for pair in zip(
        ref.trajectory(name, theta0["W"], [g["W"] for g in grads], **opts),
        ref.trajectory(name, theta0["b"], [g["b"] for g in grads], **opts))]
    _assert_close(ours, expected, atol=1e-9)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_trajectory_matches_torch(bk, case):
    name, opts = case
    theta0, grads = _problem(seed=1)
    theirs = _torch_trajectory(name, theta0, grads, [(("W", "b"), opts)], opts)
    ours, _ = _run_nnxp(getattr(optim, name)(**opts), theta0, grads)
    _assert_close(ours, theirs, atol=1e-6)


def test_reference_is_not_trivially_equal_across_optimizers():
    """The oracle distinguishes optimizers: different rules give different trajectories."""
    theta0, grads = _problem()
    finals = [ref.trajectory(n, theta0["W"], [g["W"] for g in grads])[-1] for n in FIRST_ORDER]
    for i in range(len(finals)):
        for j in range(i + 1, len(finals)):
            assert not np.allclose(finals[i], finals[j])


# ----------------------------------------------------------------------------------------------
# Parameter groups
# ----------------------------------------------------------------------------------------------

GROUP_CASES = [
    ("Adam", {"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.05, "weight_decay": 0.0}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.1}, {"lr": 0.2, "nesterov": True,
                                                               "weight_decay": 0.0}),
    ("AdamW", {"lr": 0.01}, {"weight_decay": 0.0, "amsgrad": True}),
    ("RMSprop", {"lr": 0.01}, {"centered": True, "momentum": 0.5}),
]


@pytest.mark.parametrize("case", GROUP_CASES, ids=lambda c: c[0])
def test_param_groups_match_torch_and_reference(bk, case):
    name, defaults, bias_opts = case
    theta0, grads = _problem(seed=2)
    opt = getattr(optim, name)(**defaults, param_groups=[
        {"params": lambda layer, key: key == "b", **bias_opts}])
    ours, holder = _run_nnxp(opt, theta0, grads)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]
    assert opt.param_groups[0]["params"] == [(holder, "b")]
    bias_all = {**defaults, **bias_opts}
    expected = [{"W": w, "b": b} for w, b in zip(
        ref.trajectory(name, theta0["W"], [g["W"] for g in grads], **defaults),
        ref.trajectory(name, theta0["b"], [g["b"] for g in grads], **bias_all))]
    _assert_close(ours, expected, atol=1e-9)
    pytest.importorskip("torch")
    theirs = _torch_trajectory(name, theta0, grads, [(("b",), bias_all), (("W",), defaults)],
                               defaults)
    _assert_close(ours, theirs, atol=1e-6)


def test_param_groups_explicit_pairs_and_first_match_wins():
    holder = Holder(W=nnxp.asarray(np.ones((2, 2))), b=nnxp.asarray(np.ones(2)),
                    gamma=nnxp.asarray(np.ones(2)))
    opt = optim.SGD(lr=0.1, param_groups=[
        {"params": [(holder, "gamma")], "lr": 0.0},
        {"params": lambda layer, key: key != "W", "lr": 1.0},
    ])
    opt.bind([(holder, "W"), (holder, "b"), (holder, "gamma")])
    assert [[k for _, k in g["params"]] for g in opt.param_groups] == [["gamma"], ["b"], ["W"]]
    holder.grads = {k: nnxp.asarray(np.ones(v.shape)) for k, v in holder.params.items()}
    opt.step()
    np.testing.assert_allclose(nnxp.to_numpy(holder.params["gamma"]), 1.0)
    np.testing.assert_allclose(nnxp.to_numpy(holder.params["b"]), 0.0)
    np.testing.assert_allclose(nnxp.to_numpy(holder.params["W"]), 0.9)


def test_param_groups_errors():
    with pytest.raises(ValueError, match="unknown option"):
        optim.Adam(param_groups=[{"params": lambda lay, k: True, "momentum": 0.9}])
    with pytest.raises(ValueError, match="'params'"):
        optim.Adam(param_groups=[{"lr": 0.1}])
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        optim.Adam(param_groups=[{"params": lambda lay, k: True, "betas": (0.9, 1.0)}])
    stranger = Holder(W=nnxp.asarray(np.ones(2)))
    holder = Holder(W=nnxp.asarray(np.ones(2)))
    opt = optim.SGD(param_groups=[{"params": [(stranger, "W")]}])
    with pytest.raises(ValueError, match="not among the parameters"):
        opt.bind([(holder, "W")])


def test_lr_property_reads_default_group_and_sets_all():
    opt = optim.Adam(lr=0.01, param_groups=[{"params": lambda lay, k: k == "b", "lr": 0.1}])
    assert opt.lr == 0.01
    opt.lr = 0.5
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]
    with pytest.raises(ValueError, match="lr must be"):
        opt.lr = -1.0


# ----------------------------------------------------------------------------------------------
# State: allocation, in-place updates, dtype/device, state_dict
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_state_keeps_dtype_device_and_updates_in_place(bk, name):
    theta0, grads = _problem(n_steps=3)
    opt = getattr(optim, name)(lr=0.01)
    holder = Holder(**{k: nnxp.asarray(v, dtype="float32") for k, v in theta0.items()})
    before = holder.params["W"]
    opt.bind([(holder, "W"), (holder, "b")])
    assert opt.state == {}  # nothing allocated before the first step
    buffers = None
    for g in grads:
        holder.grads = {k: nnxp.asarray(v, dtype="float32") for k, v in g.items()}
        opt.step()
        if buffers is None:
            after_first = holder.params["W"]
        arrays = {n: v for n, v in record_items(opt.state[0]) if nnxp.backend.is_array(v)}
        for arr in arrays.values():
            assert arr.dtype == bk.xp.float32
            assert str(nnxp.backend.device_of(arr)) == str(bk.device)
        if buffers is None:
            buffers = arrays
        elif nnxp.backend.supports_inplace(bk.xp):
            assert all(arrays[n] is buffers[n] for n in buffers)  # the same buffers, updated
    W = holder.params["W"]
    assert W.dtype == bk.xp.float32
    assert str(nnxp.backend.device_of(W)) == str(bk.device)
    if nnxp.backend.supports_inplace(bk.xp):
        # updated in place from the first step on; with flat buffers (nnxp.optim.flat) bind
        # moved the parameter into its group's buffer (a view of it)
        assert W is after_first
        assert (W is before) != flat_backend(bk.xp)
    else:
        assert W is not before
        np.testing.assert_array_equal(nnxp.to_numpy(before), theta0["W"].astype(np.float32))
    assert opt.state[0].step == 3 and opt.iterations == 3


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "Adamax",
                                  "NAdam"])
def test_inplace_and_functional_kernels_agree_bit_for_bit(name):
    fn = {"SGD": "sgd_momentum", "Adagrad": "adagrad", "RMSprop": "rmsprop",
          "Adadelta": "adadelta", "Adam": "adam", "Adamax": "adamax", "NAdam": "nadam"}[name]
    extra = {"SGD": {"momentum": 0.9, "nesterov": True, "lr": 0.1},
             "RMSprop": {"centered": True, "momentum": 0.9, "lr": 0.01},
             "Adam": {"amsgrad": True, "lr": 0.01}}.get(name, {"lr": 0.01})
    init = getattr(kern, f"{fn.replace('_momentum', '')}_init")
    update = getattr(kern, f"{fn}_update")
    xp = nnxp.backend.namespace_of(np.zeros(1))
    theta0, grads = _problem(n_steps=10)
    p_in, p_fn = theta0["W"].copy(), theta0["W"].copy()
    init_kw = {k: v for k, v in extra.items() if k in ("centered", "momentum", "amsgrad")} \
        if name != "SGD" else {}
    s_in, s_fn = init(p_in, xp=xp, **init_kw), init(p_fn, xp=xp, **init_kw)
    for g in grads:
        old, frozen = p_fn, p_fn.copy()
        p_in, s_in = update(p_in, g["W"], s_in, xp=xp, inplace=True, **extra)
        p_fn, s_fn = update(p_fn, g["W"], s_fn, xp=xp, inplace=False, **extra)
        np.testing.assert_array_equal(p_in, p_fn)
        np.testing.assert_array_equal(old, frozen)  # the functional path leaves its input
    assert not np.array_equal(p_fn, theta0["W"])


@pytest.mark.parametrize("case", [c for c in CASES if c[1]], ids=_case_id)
def test_state_dict_round_trip_resumes_bit_identically(bk, case):
    name, opts = case
    theta0, grads = _problem(seed=3, n_steps=20)
    full, _ = _run_nnxp(getattr(optim, name)(**opts), theta0, grads)
    first = getattr(optim, name)(**opts)
    part, holder = _run_nnxp(first, theta0, grads[:8])
    saved = first.state_dict()
    for entry in saved["state"].values():  # plain NumPy arrays and Python numbers only
        for value in entry.values():
            assert isinstance(value, (np.ndarray, int, float))
    resumed = getattr(optim, name)(**opts)
    resumed.load_state_dict(saved)
    rest, _ = _run_nnxp(resumed, part[-1], grads[8:])
    for a, b in zip(full[8:], rest):
        np.testing.assert_array_equal(a["W"], b["W"])
        np.testing.assert_array_equal(a["b"], b["b"])
    assert resumed.iterations == 20


def test_state_dict_moves_between_backends():
    pytest.importorskip("torch")
    theta0, grads = _problem(seed=4, n_steps=12)
    with nnxp.use_backend("numpy"):
        full, _ = _run_nnxp(optim.Adam(lr=0.01, amsgrad=True), theta0, grads)
        first = optim.Adam(lr=0.01, amsgrad=True)
        part, _ = _run_nnxp(first, theta0, grads[:5])
        saved = first.state_dict()
    with nnxp.use_backend("torch"):
        resumed = optim.Adam(lr=0.01, amsgrad=True)
        resumed.load_state_dict(saved)
        rest, holder = _run_nnxp(resumed, part[-1], grads[5:])
        assert type(resumed.state[0].exp_avg).__module__.startswith("torch")
    _assert_close(full[5:], rest, atol=1e-12)


def test_state_dict_restores_param_groups_by_position():
    theta0, grads = _problem(seed=5, n_steps=10)
    make = lambda: optim.SGD(lr=0.1, momentum=0.9, param_groups=[  # noqa: E731
        {"params": lambda lay, k: k == "b", "lr": 0.01}])
    full, _ = _run_nnxp(make(), theta0, grads)
    first = make()
    part, _ = _run_nnxp(first, theta0, grads[:4])
    rebuilt = optim.SGD(**first.get_config())  # as a checkpoint loader would: no selectors
    rebuilt.load_state_dict(first.state_dict())
    rest, _ = _run_nnxp(rebuilt, part[-1], grads[4:])
    assert [g["lr"] for g in rebuilt.param_groups] == [0.01, 0.1]
    _assert_close(full[4:], rest, atol=0)


def test_load_state_dict_errors():
    theta0, grads = _problem(n_steps=2)
    opt = optim.Adam()
    _run_nnxp(opt, theta0, grads)
    with pytest.raises(ValueError, match="Adam optimizer"):
        optim.SGD().load_state_dict(opt.state_dict())
    bad = opt.state_dict()
    bad["state"][0]["exp_avg"] = np.zeros((5, 5))
    other = optim.Adam()
    other.load_state_dict(bad)
    with pytest.raises(ValueError, match="shape"):
        _run_nnxp(other, theta0, grads)


def test_rebinding_same_parameters_keeps_state_and_new_ones_reset_it():
    theta0, grads = _problem(n_steps=2)
    opt = optim.Adam()
    _, holder = _run_nnxp(opt, theta0, grads)
    opt.bind([(holder, "W"), (holder, "b")])
    assert opt.state[0].step == 2
    opt.bind([(Holder(W=holder.params["W"]), "W")])
    assert opt.state == {}


def test_step_errors():
    with pytest.raises(RuntimeError, match="before bind"):
        optim.Adam().step()
    holder = Holder(W=nnxp.asarray(np.ones(2)))
    opt = optim.Adam()
    opt.bind([(holder, "W")])
    with pytest.raises(RuntimeError, match="no gradient"):
        opt.step()
    with pytest.raises(ValueError, match="pairs"):
        opt.bind([(holder, "nope")])


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

BAD = [
    (optim.SGD, {"lr": -0.1}, r"SGD: lr must be > 0, got -0\.1"),
    (optim.Adam, {"lr": 0.0}, r"Adam: lr must be > 0, got 0\.0"),
    (optim.Adam, {"param_groups": [{"params": [], "lr": -1.0}]}, "lr must be a finite number >= 0"),
    (optim.SGD, {"momentum": -0.5}, "momentum must be"),
    (optim.SGD, {"dampening": -1}, "dampening must be"),
    (optim.SGD, {"weight_decay": -1e-4}, "weight_decay must be"),
    (optim.SGD, {"nesterov": True}, "nesterov=True needs momentum > 0"),
    (optim.SGD, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "dampening = 0"),
    (optim.Adagrad, {"lr_decay": -1}, "lr_decay"),
    (optim.Adagrad, {"initial_accumulator_value": -0.1}, "initial_accumulator_value"),
    (optim.Adagrad, {"eps": -1e-10}, "eps must be"),
    (optim.RMSprop, {"alpha": -0.1}, "alpha"),
    (optim.RMSprop, {"momentum": -0.1}, "momentum"),
    (optim.Adadelta, {"rho": 1.5}, r"rho must be in \[0, 1\], got 1\.5"),
    (optim.Adam, {"betas": (1.0, 0.999)}, r"betas\[0\] must be in \[0, 1\), got 1\.0"),
    (optim.Adam, {"betas": (0.9, -0.1)}, r"betas\[1\]"),
    (optim.Adam, {"betas": (0.9,)}, "pair"),
    (optim.Adam, {"eps": -1e-8}, "eps"),
    (optim.Adam, {"lr": float("nan")}, "nan"),
    (optim.AdamW, {"weight_decay": -0.01}, "weight_decay"),
    (optim.Adamax, {"betas": (0.9, 1.0)}, r"betas\[1\]"),
    (optim.NAdam, {"momentum_decay": -1}, "momentum_decay"),
    (optim.LBFGS, {"line_search_fn": "armijo"}, "line_search_fn"),
    (optim.LBFGS, {"history_size": 0}, "history_size"),
    (optim.LBFGS, {"lr": 0}, "lr must be > 0"),
    (optim.Adam, {"clip_norm": 0.0}, "clip_norm must be > 0"),
    (optim.SGD, {"clip_value": -1.0}, "clip_value must be > 0"),
]


@pytest.mark.parametrize("cls, kwargs, match", BAD,
                         ids=[f"{c.__name__}-{k}" for c, k, _ in BAD])
def test_invalid_hyperparameters_raise(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("cls, kwargs", [(optim.Adam, {"amsgrad": 1}), (optim.SGD, {"lr": "1"}),
                                         (optim.RMSprop, {"centered": "yes"})])
def test_wrong_types_raise_type_error(cls, kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        cls(**kwargs)


def test_defaults_follow_torch():
    torch = pytest.importorskip("torch")
    t = torch.zeros(1, requires_grad=True)
    for name in FIRST_ORDER + ["LBFGS"]:
        theirs = getattr(torch.optim, name)([t]).defaults
        ours = getattr(optim, name)().defaults
        for key, value in ours.items():
            assert theirs[key] == (tuple(value) if isinstance(value, list) else value), (name, key)


def test_registry_and_repr():
    assert set(optim.OPTIMIZERS) == {n.lower() for n in FIRST_ORDER + ["LBFGS"]}
    assert isinstance(optim.get_optimizer("adam", lr=0.1), optim.Adam)
    assert "lr=0.1" in repr(optim.get_optimizer("adam", lr=0.1))
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.get_optimizer("adamx")


# ----------------------------------------------------------------------------------------------
# Clipping
# ----------------------------------------------------------------------------------------------


def _grad_holder(grads: dict[str, np.ndarray]) -> Holder:
    holder = Holder(**{k: nnxp.asarray(np.zeros_like(v)) for k, v in grads.items()})
    holder.grads = {k: nnxp.asarray(v, copy=True) for k, v in grads.items()}
    return holder


@pytest.mark.parametrize("max_norm, norm_type", [(0.5, 2.0), (100.0, 2.0), (0.3, 1.0),
                                                 (0.2, math.inf)])
def test_clip_grad_norm_matches_reference_and_torch(bk, max_norm, norm_type):
    rng = np.random.default_rng(6)
    g = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))}
    holder = _grad_holder(g)
    total = optim.clip_grad_norm_([(holder, "W"), (holder, "b")], max_norm, norm_type)
    expected, expected_total = ref.clip_by_norm([g["W"], g["b"]], max_norm, norm_type)
    assert total == pytest.approx(expected_total, rel=1e-12)
    for key, e in zip(("W", "b"), expected):
        np.testing.assert_allclose(nnxp.to_numpy(holder.grads[key]), e, rtol=1e-12, atol=0)
    torch = pytest.importorskip("torch")
    tp = [torch.zeros(3, 4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)]
    for t, key in zip(tp, ("W", "b")):
        t.grad = torch.tensor(g[key])
    t_total = torch.nn.utils.clip_grad_norm_(tp, max_norm, norm_type)
    assert total == pytest.approx(float(t_total), rel=1e-12)
    for t, key in zip(tp, ("W", "b")):
        np.testing.assert_allclose(nnxp.to_numpy(holder.grads[key]), t.grad.numpy(), rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(1e-3, 1e6), max_norm=st.floats(1e-2, 1e2), seed=st.integers(0, 1000))
def test_clip_grad_norm_bounds_the_global_norm(scale, max_norm, seed):
    rng = np.random.default_rng(seed)
    g = {"W": scale * rng.normal(size=(5, 3)), "b": scale * rng.normal(size=(3,))}
    holder = _grad_holder(g)
    before = float(np.sqrt(sum(np.sum(v**2) for v in g.values())))
    total = optim.clip_grad_norm_([(holder, "W"), (holder, "b")], max_norm)
    after = float(np.sqrt(sum(np.sum(nnxp.to_numpy(v) ** 2) for v in holder.grads.values())))
    assert total == pytest.approx(before, rel=1e-12)
    assert after <= max_norm * (1 + 1e-12)
    if before <= max_norm:  # within the bound: untouched
        np.testing.assert_array_equal(nnxp.to_numpy(holder.grads["W"]), g["W"])
    else:  # clipped: direction kept, norm just below the bound (the 1e-6 in the scale)
        assert after == pytest.approx(max_norm * before / (before + 1e-6), rel=1e-9)
        np.testing.assert_allclose(nnxp.to_numpy(holder.grads["W"]) * before / after, g["W"],
                                   rtol=1e-9)


def test_clip_grad_value_matches_torch(bk):
    rng = np.random.default_rng(7)
    g = {"W": rng.normal(size=(3, 4))}
    holder = _grad_holder(g)
    optim.clip_grad_value_([(holder, "W")], 0.5)
    np.testing.assert_array_equal(nnxp.to_numpy(holder.grads["W"]), np.clip(g["W"], -0.5, 0.5))
    assert np.abs(nnxp.to_numpy(holder.grads["W"])).max() == 0.5
    torch = pytest.importorskip("torch")
    t = torch.zeros(3, 4, dtype=torch.float64)
    t.grad = torch.tensor(g["W"])
    torch.nn.utils.clip_grad_value_([t], 0.5)
    np.testing.assert_array_equal(nnxp.to_numpy(holder.grads["W"]), t.grad.numpy())


def test_clip_errors():
    holder = _grad_holder({"W": np.array([np.inf, 1.0])})
    with pytest.raises(FloatingPointError, match="norm is inf"):
        optim.clip_grad_norm_([(holder, "W")], 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        optim.clip_grad_norm_([(holder, "W")], -1.0)
    with pytest.raises(ValueError, match="at least one"):
        optim.clip_grad_norm_([], 1.0)
    with pytest.raises(RuntimeError, match="no gradient"):
        optim.clip_grad_value_([(Holder(W=nnxp.asarray(np.ones(2))), "W")], 1.0)


@pytest.mark.parametrize("clip", [{"clip_norm": 0.5}, {"clip_value": 0.1},
                                  {"clip_norm": 0.5, "clip_value": 0.1}])
def test_optimizer_clipping_equals_clip_then_step(bk, clip):
    theta0, grads = _problem(seed=8, n_steps=10)
    ours, _ = _run_nnxp(optim.Adam(lr=0.01, **clip), theta0, grads)
    clipped = []
    for g in grads:
        arrays = [g["W"], g["b"]]
        if "clip_value" in clip:
            arrays = [np.clip(a, -clip["clip_value"], clip["clip_value"]) for a in arrays]
        if "clip_norm" in clip:
            arrays, _ = ref.clip_by_norm(arrays, clip["clip_norm"])
        clipped.append({"W": arrays[0], "b": arrays[1]})
    expected, _ = _run_nnxp(optim.Adam(lr=0.01), theta0, clipped)
    _assert_close(ours, expected, atol=1e-12)
    plain, _ = _run_nnxp(optim.Adam(lr=0.01), theta0, grads)
    assert not np.allclose(plain[-1]["W"], ours[-1]["W"])


# ----------------------------------------------------------------------------------------------
# L-BFGS
# ----------------------------------------------------------------------------------------------


def _rosenbrock(x):
    f = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
    g = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])
    return f, g


_A = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]])
_B = np.array([1.0, -2.0, 0.5])


def _quadratic(x):
    return 0.5 * x @ _A @ x - _B @ x, _A @ x - _B


def _lbfgs_run(fun, x0, steps, **opts):
    holder = Holder(x=nnxp.asarray(x0, copy=True))
    opt = optim.LBFGS(**opts)
    opt.bind([(holder, "x")])

    def closure():
        f, g = fun(nnxp.to_numpy(holder.params["x"]))
        holder.grads["x"] = nnxp.asarray(g)
        return f

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(nnxp.to_numpy(holder.params["x"]).copy())
    return out, opt, holder


def _lbfgs_torch(fun_name, x0, steps, **opts):
    torch = pytest.importorskip("torch")
    x = torch.tensor(x0, requires_grad=True)
    opt = torch.optim.LBFGS([x], **opts)
    A, B = torch.tensor(_A), torch.tensor(_B)

    def closure():
        opt.zero_grad()
        if fun_name == "rosenbrock":
            f = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        else:
            f = 0.5 * x @ A @ x - B @ x
        f.backward()
        return f

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(x.detach().numpy().copy())
    return out


LBFGS_CASES = [
    ("rosenbrock", np.array([-1.5, 2.0]), {"line_search_fn": "strong_wolfe"}),
    ("rosenbrock", np.array([-1.2, 1.0]), {"line_search_fn": "strong_wolfe", "history_size": 3,
                                           "max_iter": 7}),
    ("rosenbrock", np.array([-1.5, 2.0]), {"lr": 1e-3, "history_size": 5}),
    ("quadratic", np.array([5.0, -3.0, 2.0]), {"lr": 0.5, "max_iter": 4}),
    ("quadratic", np.array([5.0, -3.0, 2.0]), {"line_search_fn": "strong_wolfe"}),
]


@pytest.mark.parametrize("case", LBFGS_CASES, ids=lambda c: f"{c[0]}-{sorted(c[2].items())}")
def test_lbfgs_matches_torch(bk, case):
    fun_name, x0, opts = case
    fun = _rosenbrock if fun_name == "rosenbrock" else _quadratic
    ours, opt, _ = _lbfgs_run(fun, x0, 5, **opts)
    theirs = _lbfgs_torch(fun_name, x0, 5, **opts)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fun_name, x0, xstar", [
    ("rosenbrock", np.array([-1.5, 2.0]), np.array([1.0, 1.0])),
    ("quadratic", np.array([5.0, -3.0, 2.0]), np.linalg.solve(_A, _B)),
])
def test_lbfgs_converges_to_the_minimiser(bk, fun_name, x0, xstar):
    fun = _rosenbrock if fun_name == "rosenbrock" else _quadratic
    path, opt, _ = _lbfgs_run(fun, x0, 10, line_search_fn="strong_wolfe")
    np.testing.assert_allclose(path[-1], xstar, atol=1e-5)
    assert opt.state[0].func_evals < 200


def test_lbfgs_state_dict_round_trip():
    full, _, _ = _lbfgs_run(_rosenbrock, np.array([-1.5, 2.0]), 4,
                            line_search_fn="strong_wolfe", max_iter=5)
    part, first, _ = _lbfgs_run(_rosenbrock, np.array([-1.5, 2.0]), 2,
                                line_search_fn="strong_wolfe", max_iter=5)
    saved = first.state_dict()
    assert isinstance(saved["state"][0]["old_dirs"], np.ndarray)
    holder = Holder(x=nnxp.asarray(part[-1]))
    resumed = optim.LBFGS(line_search_fn="strong_wolfe", max_iter=5)
    resumed.load_state_dict(saved)
    resumed.bind([(holder, "x")])

    def closure():
        f, g = _rosenbrock(nnxp.to_numpy(holder.params["x"]))
        holder.grads["x"] = nnxp.asarray(g)
        return f

    for expected in full[2:]:
        resumed.step(closure)
        np.testing.assert_array_equal(nnxp.to_numpy(holder.params["x"]), expected)


def test_lbfgs_needs_a_closure():
    holder = Holder(x=nnxp.asarray(np.ones(2)))
    opt = optim.LBFGS()
    opt.bind([(holder, "x")])
    assert opt.requires_closure and not optim.Adam.requires_closure
    with pytest.raises(TypeError, match="closure"):
        opt.step()


# ----------------------------------------------------------------------------------------------
# Behaviour on problems: a convex quadratic and a digits MLP
# ----------------------------------------------------------------------------------------------

QUADRATIC_LR = {"SGD": 0.1, "Adagrad": 0.5, "RMSprop": 0.05, "Adadelta": 10.0, "Adam": 0.05,
                "AdamW": 0.05, "Adamax": 0.05, "NAdam": 0.05}


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_each_optimizer_decreases_a_convex_quadratic(bk, name):
    x0 = np.array([5.0, -3.0, 2.0])
    f0 = _quadratic(x0)[0]
    fstar = _quadratic(np.linalg.solve(_A, _B))[0]
    holder = Holder(x=nnxp.asarray(x0, copy=True))
    opt = getattr(optim, name)(lr=QUADRATIC_LR[name])
    opt.bind([(holder, "x")])
    values = []
    for _ in range(200):
        f, g = _quadratic(nnxp.to_numpy(holder.params["x"]))
        values.append(f)
        holder.grads["x"] = nnxp.asarray(g)
        opt.step()
    assert values[-1] < f0
    assert values[-1] - fstar < 0.05 * (f0 - fstar)  # most of the gap is closed


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(y))
    X, y = X[perm], y[perm]
    return X[:1350], y[:1350], X[1350:], y[1350:]


DIGITS = {
    "SGD": ({"lr": 0.1, "momentum": 0.9}, 8),
    "Adagrad": ({"lr": 0.05}, 8),
    "RMSprop": ({"lr": 1e-3}, 8),
    "Adadelta": ({"lr": 1.0}, 10),
    "Adam": ({"lr": 2e-3}, 8),
    "AdamW": ({"lr": 2e-3}, 8),
    "Adamax": ({"lr": 5e-3}, 8),
    "NAdam": ({"lr": 2e-3}, 8),
}


def _mlp():
    with nnxp.use_backend("numpy"):
        return nnxp.Sequential([Dense(64, 64), ReLU(), Dense(64, 10)], seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", FIRST_ORDER)
def test_each_optimizer_trains_a_digits_mlp(digits, name):
    Xtr, ytr, Xte, yte = digits
    opts, epochs = DIGITS[name]
    with nnxp.use_backend("numpy"):
        model = _mlp()
        model.fit(Xtr, ytr, optimizer=getattr(optim, name)(**opts), epochs=epochs,
                  batch_size=32, verbose=0)
        acc = model.evaluate(Xte, yte)["accuracy"]
    assert acc >= 0.95, f"{name}: test accuracy {acc:.3f}"


@pytest.mark.slow
def test_lbfgs_trains_a_digits_mlp_full_batch(digits):
    Xtr, ytr, Xte, yte = digits
    with nnxp.use_backend("numpy"):
        model = _mlp()
        opt = optim.LBFGS(line_search_fn="strong_wolfe", max_iter=25, history_size=20)
        opt.bind(model.parameters())
        X = nnxp.asarray(Xtr)
        y = nnxp.asarray(ytr.astype(np.int64))
        for _ in range(3):
            opt.step(lambda: model.loss_and_grads(X, y))
        acc = model.evaluate(Xte, yte)["accuracy"]
    assert acc >= 0.95, f"LBFGS: test accuracy {acc:.3f}"


# ----------------------------------------------------------------------------------------------
# The in-place step: gradients untouched, options read on every step, overrides respected
# ----------------------------------------------------------------------------------------------

# options that take every temporary-reusing branch of the in-place kernels
_BUSY = {"SGD": {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
         "Adagrad": {"weight_decay": 0.1, "lr_decay": 0.01},
         "RMSprop": {"centered": True, "momentum": 0.9, "weight_decay": 0.1},
         "Adadelta": {"weight_decay": 0.1}, "Adam": {"weight_decay": 0.1, "amsgrad": True},
         "AdamW": {"amsgrad": True}, "Adamax": {"weight_decay": 0.1},
         "NAdam": {"weight_decay": 0.1}}


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_step_leaves_the_gradients_untouched(bk, name):
    """Users and diagnostics read layer.grads after the step: the kernels never write them."""
    theta0, grads = _problem(n_steps=3)
    holder = Holder(**{k: nnxp.asarray(v, dtype="float32", copy=True) for k, v in theta0.items()})
    opt = getattr(optim, name)(lr=0.01, **_BUSY[name])
    opt.bind([(holder, "W"), (holder, "b")])
    for g in grads:
        holder.grads = {k: nnxp.asarray(v, dtype="float32", copy=True) for k, v in g.items()}
        kept = dict(holder.grads)
        opt.step()
        for k in ("W", "b"):
            assert holder.grads[k] is kept[k]
            np.testing.assert_array_equal(nnxp.to_numpy(holder.grads[k]),
                                          g[k].astype(np.float32))


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_group_edits_take_effect_on_the_next_step(name):
    """A schedule's group["lr"] (and any other option) is read on every step, as in torch."""
    theta0, grads = _problem(n_steps=6)
    opts = _BUSY[name]
    ours = getattr(optim, name)(lr=0.01, **opts)
    holder = Holder(**{k: nnxp.asarray(v, copy=True) for k, v in theta0.items()})
    ours.bind([(holder, "W"), (holder, "b")])
    torch = pytest.importorskip("torch")
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in theta0.items()}
    theirs = getattr(torch.optim, name)([tp["W"], tp["b"]], lr=0.01, **opts)
    for i, g in enumerate(grads):
        if i == 3:
            for group in ours.param_groups + theirs.param_groups:
                group["lr"] = 0.05
        holder.grads = {k: nnxp.asarray(v, copy=True) for k, v in g.items()}
        for k, v in g.items():
            tp[k].grad = torch.tensor(v)
        ours.step()
        theirs.step()
        for k in ("W", "b"):
            np.testing.assert_allclose(nnxp.to_numpy(holder.params[k]),
                                       tp[k].detach().numpy(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name, option, buffer", [("RMSprop", "momentum", "momentum_buffer"),
                                                  ("RMSprop", "centered", "grad_avg"),
                                                  ("Adam", "amsgrad", "max_exp_avg_sq")])
def test_option_switched_on_after_the_first_step_creates_its_buffer(name, option, buffer):
    theta0, grads = _problem(n_steps=2)
    opt = getattr(optim, name)(lr=0.01)
    holder = Holder(**{k: nnxp.asarray(v, copy=True) for k, v in theta0.items()})
    opt.bind([(holder, "W"), (holder, "b")])
    holder.grads = {k: nnxp.asarray(v) for k, v in grads[0].items()}
    opt.step()
    assert getattr(opt.state[0], buffer) is None
    opt.param_groups[-1][option] = 0.9 if option == "momentum" else True
    holder.grads = {k: nnxp.asarray(v) for k, v in grads[1].items()}
    opt.step()
    assert getattr(opt.state[0], buffer).shape == (3, 4)
    assert np.all(np.isfinite(nnxp.to_numpy(holder.params["W"])))


def _sign_sgd_update(param, grad, state, *, lr, xp, inplace):
    """θ ← θ − γ sign(g): an update rule that nnxp does not ship, declared in a test."""
    step = -lr * xp.sign(grad)
    if inplace:
        param += step
        state.step += 1
        return param, state
    return param + step, kern.SGDState(state.step + 1)


def test_a_new_optimizer_is_a_declaration():
    """Hyperparameters, state record and kernel are all a first-order optimizer needs: the
    constructor, its signature, the checks, step, groups and state_dict come from the base."""
    import inspect
    from dataclasses import dataclass

    class SignSGD(optim.Optimizer):
        @dataclass(frozen=True)
        class Hyperparameters(HyperparametersBase):
            lr: float = hyperparameter(0.1, check_nonneg)

        State = kern.SGDState
        init_state = staticmethod(kern.sgd_init)
        update = staticmethod(_sign_sgd_update)

    assert str(inspect.signature(SignSGD)) == ("(lr=0.1, *, param_groups=None, clip_norm=None, "
                                               "clip_value=None)")
    with pytest.raises(ValueError, match=r"SignSGD: lr must be > 0, got -1"):
        SignSGD(lr=-1)
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['momentum'\]"):
        SignSGD(momentum=0.9)
    theta0, grads = _problem(n_steps=3)
    ours, holder = _run_nnxp(SignSGD(lr=0.5, param_groups=[
        {"params": lambda lay, key: key == "b", "lr": 0.25}]), theta0, grads)
    signs = sum(np.sign(g["W"]) for g in grads)
    np.testing.assert_array_equal(ours[-1]["W"], theta0["W"] - 0.5 * signs)
    np.testing.assert_array_equal(ours[-1]["b"],
                                  theta0["b"] - 0.25 * sum(np.sign(g["b"]) for g in grads))


def test_a_declaration_whose_kernels_ignore_an_option_is_refused():
    from dataclasses import dataclass

    with pytest.raises(TypeError, match=r"declares the option\(s\) \['momentum'\]"):
        class Broken(optim.Optimizer):  # noqa: F841 - the class statement itself must fail
            @dataclass(frozen=True)
            class Hyperparameters(HyperparametersBase):
                lr: float = hyperparameter(0.1, check_nonneg)
                momentum: float = hyperparameter(0.0, check_nonneg)

            State = kern.SGDState
            init_state = staticmethod(kern.sgd_init)
            update = staticmethod(_sign_sgd_update)


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_hyperparameters_record_is_the_signature_and_checks_every_group(name):
    import dataclasses
    import inspect

    cls = getattr(optim, name)
    record = cls.Hyperparameters()
    assert dataclasses.is_dataclass(record)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.lr = 1.0
    params = inspect.signature(cls).parameters
    assert list(params)[:len(record.names())] == list(record.names())
    assert all(params[n].default == getattr(cls.Hyperparameters, n) for n in record.names())
    assert cls().defaults == record.as_dict()
    with pytest.raises(ValueError,
                       match=rf"{name}: weight_decay must be a finite number >= 0, got -1"):
        cls(param_groups=[{"params": [], "weight_decay": -1}])


def test_functional_kernels_return_new_state_and_keep_the_old_record():
    xp = nnxp.backend.namespace_of(np.zeros(1))
    theta0, grads = _problem(n_steps=3)
    state = kern.adam_init(theta0["W"], amsgrad=True, xp=xp)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v)
              for k, v in record_items(state)}
    param, new = kern.adam_update(theta0["W"], grads[0]["W"], state, lr=0.1, amsgrad=True,
                                  xp=xp, inplace=False)
    assert isinstance(new, kern.AdamState) and new is not state and new.step == 1
    for key, value in record_items(state):  # the record and its buffers are untouched
        np.testing.assert_array_equal(value, before[key])
    assert all(getattr(new, k) is not getattr(state, k) for k in ("exp_avg", "exp_avg_sq"))
    buffers = {k: getattr(new, k) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")}
    _, same = kern.adam_update(theta0["W"].copy(), grads[1]["W"], new, lr=0.1, amsgrad=True,
                               xp=xp, inplace=True)
    assert same is new and same.step == 2  # in place: the same record, updated
    assert all(getattr(same, k) is v for k, v in buffers.items())  # and the same buffers


def test_load_state_dict_names_unknown_or_missing_state_entries():
    theta0, grads = _problem(n_steps=2)
    opt = optim.Adam()
    _run_nnxp(opt, theta0, grads)
    saved = opt.state_dict()
    saved["state"][0]["velocity"] = np.zeros((3, 4))
    other = optim.Adam()
    other.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"unknown entries \['velocity'\]"):
        _run_nnxp(other, theta0, grads)
    saved = opt.state_dict()
    del saved["state"][0]["exp_avg"]
    other = optim.Adam()
    other.load_state_dict(saved)
    with pytest.raises(ValueError, match="lacks entries"):
        _run_nnxp(other, theta0, grads)


def test_lbfgs_takes_no_parameter_groups_or_clipping():
    for option in ("param_groups", "clip_norm", "clip_value"):
        with pytest.raises(TypeError, match=option):
            optim.LBFGS(**{option: [] if option == "param_groups" else 1.0})


def test_sgd_weight_decay_without_momentum_matches_torch_and_keeps_grads(bk):
    theta0, grads = _problem(n_steps=5)
    opts = {"lr": 0.05, "weight_decay": 0.1}
    ours, holder = _run_nnxp(optim.SGD(**opts), theta0, grads)
    np.testing.assert_array_equal(nnxp.to_numpy(holder.grads["W"]), grads[-1]["W"])
    expected = ref.trajectory("SGD", theta0["W"], [g["W"] for g in grads], **opts)
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a["W"], b, rtol=0, atol=1e-12)
    theirs = _torch_trajectory("SGD", theta0, grads, [(("W", "b"), opts)], opts)
    _assert_close(ours, theirs, atol=1e-9)


@pytest.mark.parametrize("dtype", trajectories.DTYPES)
def test_trajectories_are_bit_identical_to_the_recorded_ones(bk, dtype):
    """Every optimizer, option, group, clip and lr edit of tests/trajectories.py reproduces,
    bit for bit, what the optimizers before issue 9 computed (tests/data)."""
    if bk.spec not in trajectories.BACKENDS:
        pytest.skip(f"no trajectories recorded for {bk.spec}")
    recorded = np.load(trajectories.DATA)
    for i in range(len(trajectories.CASES)):
        ours = trajectories.run_case(nnxp, bk.spec, dtype, i)
        np.testing.assert_array_equal(ours, recorded[trajectories.key(bk.spec, dtype, i)],
                                      err_msg=str(trajectories.CASES[i]))
