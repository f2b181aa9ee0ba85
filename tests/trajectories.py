"""Recorded optimizer trajectories: a refactor of the optimizers must reproduce them bit for bit.

``python tests/trajectories.py [--package NAME] [--out PATH]`` runs every case below and writes
the parameters after each of 25 steps; ``tests/test_optim.py`` runs the same cases on the code
under test and compares with ``numpy.array_equal``. The torch and reference oracles say an update
is *right*; this file says it did not *change* — which is what a refactor promises, and what a
fused or reordered kernel would break on purpose (then regenerate the file, and say so in the
commit).

``tests/data/optimizer_trajectories.npz`` was written by the code before issue 9 (commit
``7105878``, imported under another name with ``--package``), so the optimizer package of issue 9
is compared with the dict-based optimizers it replaced. Only elementwise IEEE operations (+, −,
×, ÷, √, max) and Python ``float`` powers are involved, which round the same on every x86-64 and
ARM machine, so the comparison is exact across machines.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "optimizer_trajectories.npz"
BACKENDS = ("numpy", "array_api_strict:device1", "torch:cpu")
DTYPES = ("float32", "float64")
N_STEPS = 25

# Every option of every first-order optimizer, plus clipping, parameter groups and an lr change
CASES: list[tuple[str, dict[str, Any]]] = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.05}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.05, "weight_decay": 0.1}),
    ("Adagrad", {}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.05,
                 "initial_accumulator_value": 0.1, "eps": 1e-8}),
    ("RMSprop", {}),
    ("RMSprop", {"lr": 0.005, "alpha": 0.9, "momentum": 0.9, "weight_decay": 0.05}),
    ("RMSprop", {"lr": 0.005, "centered": True, "eps": 1e-6}),
    ("RMSprop", {"lr": 0.005, "centered": True, "momentum": 0.5}),
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.95, "eps": 1e-5, "weight_decay": 0.1}),
    ("Adam", {}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("AdamW", {}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    ("Adamax", {}),
    ("Adamax", {"lr": 0.01, "betas": (0.8, 0.9), "weight_decay": 0.1}),
    ("NAdam", {}),
    ("NAdam", {"lr": 0.01, "momentum_decay": 0.01, "weight_decay": 0.1}),
    ("NAdam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("Adam", {"lr": 0.01, "clip_norm": 0.5}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "clip_value": 0.3}),
    ("Adam", {"lr": 0.01, "param_groups": "biases"}),
]


class _Holder:
    """The parameter part of the layer protocol."""

    def __init__(self, xp: Any, **params: Any) -> None:
        self.xp = xp
        self.params = dict(params)
        self.grads: dict[str, Any] = {}


def key(spec: str, dtype: str, index: int) -> str:
    return f"{spec}/{dtype}/{index}"


def run_case(nnxp: Any, spec: str, dtype: str, index: int, *, gate: bool = False) -> np.ndarray:
    """``(N_STEPS, 16)``: W (3×4) and b (4) after every step of case ``index`` on ``spec``.

    ``gate=True`` passes an open device-side gate to every step (``step(gate=true)``), which
    must not change a bit."""
    name, opts = CASES[index]
    opts = dict(opts)
    if opts.get("param_groups") == "biases":
        opts["param_groups"] = [{"params": lambda layer, k: k == "b", "lr": 0.1,
                                 "weight_decay": 0.2}]
    rng = np.random.default_rng(index)
    with nnxp.use_backend(spec) as info:
        holder = _Holder(info.xp,
                         W=nnxp.asarray(rng.normal(size=(3, 4)), dtype=dtype, copy=True),
                         b=nnxp.asarray(rng.normal(size=(4,)), dtype=dtype, copy=True))
        opt = getattr(nnxp.optim, name)(**opts)
        opt.bind([(holder, "W"), (holder, "b")])
        rows = []
        for step in range(N_STEPS):
            holder.grads = {k: nnxp.asarray(rng.normal(size=tuple(holder.params[k].shape)),
                                            dtype=dtype, copy=True) for k in ("W", "b")}
            if step == N_STEPS // 2:  # a schedule's edit between steps
                for group in opt.param_groups:
                    group["lr"] = group["lr"] * 0.5
            if gate:
                device = holder.params["W"].device
                opt.step(gate=info.xp.ones((), dtype=info.xp.bool, device=device))
            else:
                opt.step()
            rows.append(np.concatenate([np.asarray(nnxp.to_numpy(holder.params[k]),
                                                   dtype=np.float64).ravel()
                                        for k in ("W", "b")]))
    return np.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description="record the optimizer trajectories")
    parser.add_argument("--package", default="nnxp", help="the package to record (an older "
                        "nnxp unpacked under another name, e.g. nnxp_old)")
    parser.add_argument("--out", default=str(DATA))
    args = parser.parse_args()
    nnxp = importlib.import_module(args.package)
    out = {key(spec, dtype, i): run_case(nnxp, spec, dtype, i)
           for spec in BACKENDS for dtype in DTYPES for i in range(len(CASES))}
    np.savez_compressed(args.out, **out)
    print(f"{len(out)} trajectories written to {args.out}")


if __name__ == "__main__":
    main()
