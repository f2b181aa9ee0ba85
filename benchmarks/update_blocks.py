"""Cache-blocked optimizer updates (``nnxp.optim.flat``): block sizes against one piece.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/update_blocks.py [--seconds 10] \
        [--out benchmarks/results/update-blocks]

Two measurements, each with interleaved rounds (``targets.interleave``: every candidate once per
round, in turn, so all of them see the same load), one thread:

1. **The update alone**: one optimizer step of a flat unit the size of the big MLP's larger
   unit (1024×1024 + 1024 float32 elements; gradients fixed), for SGD, SGD with momentum and
   Adam, on numpy and torch CPU, in one piece (``update_block = 0``) and in blocks of 16 Ki to
   256 Ki elements (64 KiB to 1 MiB per array). torch's fused Adam over the same tensor is the
   peer. The step counts advance between rounds (the kernels do not care).
2. **The big MLP's training step** (784-1024-1024-10, batch 256, numpy) with the backend's
   default blocks against one piece, and torch's fused Adam step, with an A/A row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import peers
import targets

import nnxp
from nnxp import backend, bench, optim

N = 1024 * 1024 + 1024
BLOCKS = (2**14, 2**15, 2**16, 2**17, 2**18)
OPTIMIZERS: dict[str, Callable[[], Any]] = {
    "sgd": lambda: optim.SGD(lr=0.01),
    "momentum": lambda: optim.SGD(lr=0.01, momentum=0.9),
    "adam": lambda: optim.Adam(),
}


def _unit_step(spec: str, opt_name: str, block: int) -> Callable[[], Any]:
    """One bound optimizer over one parameter of N elements; returns its step."""
    with backend.use_backend(spec):
        param = nnxp.asarray(_host(0))
        layer = types.SimpleNamespace(params={"w": param}, grads={"w": nnxp.asarray(_host(1))})
        opt = OPTIMIZERS[opt_name]()
        opt.update_block = block
        opt.bind([(layer, "w")])
    opt.step()  # the state exists from here on
    return opt.step


def _host(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(N).astype(np.float32)


def _torch_fused() -> Callable[[], Any] | None:
    if not peers.HAS_TORCH:
        return None
    import torch

    p = torch.from_numpy(_host(0).copy()).requires_grad_()
    p.grad = torch.from_numpy(_host(1).copy())
    opt = torch.optim.Adam([p], fused=True)
    return opt.step


def update_candidates(spec: str) -> list[targets.Candidate]:
    out: list[targets.Candidate] = []
    for name in OPTIMIZERS:
        out.append((f"{spec} {name} one piece", _unit_step(spec, name, 0)))
        for block in BLOCKS:
            out.append((f"{spec} {name} block {block // 1024} Ki", _unit_step(spec, name, block)))
    return out


def step_candidates() -> list[targets.Candidate]:
    out: list[targets.Candidate] = []
    for opt_name in ("sgd", "adam"):
        for label, block in (("blocked", None), ("one piece", 0), ("blocked A/A", None)):
            with backend.use_backend("numpy"):
                model = bench.build_mlp(bench.MODELS["big"]["widths"])
                opt = bench.make_optimizer(opt_name)
                opt.update_block = block
                opt.bind(model.parameters())
                x, y = bench.model_inputs("big", model.xp, model.device)
            out.append((f"nnxp {opt_name} {label}",
                        lambda m=model, o=opt, x=x, y=y: bench.train_step(m, o, x, y)))
    if peers.HAS_TORCH:
        for c in peers.model_peer_cases("cpu", "big", "adam"):
            if c.op == "step" and c.impl == "torch-fused":
                out.append(("torch-fused adam", targets._build(c)))
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Cache-blocked optimizer updates", "",
             f"- Machine: {result['machine'].get('cpu', '?')}; threads: {result['threads']}",
             f"- Load average before / after: {result['load_before']} / {result['load_after']}",
             f"- Date: {result['date']}", "",
             f"## The update alone ({N} float32 elements), interleaved rounds", "",
             "| candidate | median ms | min ms | one piece / this (median) | rounds |",
             "|---|---:|---:|---:|---:|"]
    res = result["update"]
    for name, r in res.items():
        base = " ".join(name.split(" ")[:2]) + " one piece"
        ratio = res[base]["median"] / r["median"] if base in res else float("nan")
        lines.append(f"| {name} | {r['median'] * 1e3:.3f} | {r['min'] * 1e3:.3f} | "
                     f"{ratio:.2f} | {r['rounds']} |")
    lines += ["", "## Big MLP training step (numpy), interleaved rounds", "",
              "| candidate | median ms | min ms | torch-fused adam / this (median) | "
              "minor faults / step | rounds |", "|---|---:|---:|---:|---:|---:|"]
    step = result["step"]
    fused = step.get("torch-fused adam")
    for name, r in step.items():
        ratio = fused["median"] / r["median"] if fused else float("nan")
        lines.append(f"| {name} | {r['median'] * 1e3:.3f} | {r['min'] * 1e3:.3f} | {ratio:.2f} | "
                     f"{r['minor_faults_per_call']:.0f} | {r['rounds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    specs = ["numpy"]
    if peers.HAS_TORCH:
        import torch

        torch.set_num_threads(1)
        specs.append("torch")
    load_before = [round(v, 2) for v in os.getloadavg()]
    cands = [c for spec in specs for c in update_candidates(spec)]
    fused = _torch_fused()
    if fused is not None:
        cands.append(("torch fused adam", fused))
    update = targets.interleave(cands, args.seconds)
    step = targets.interleave(step_candidates(), args.seconds)
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": bench.machine_info(),
              "threads": 1, "load_before": load_before,
              "load_after": [round(v, 2) for v in os.getloadavg()],
              "update": update, "step": step}
    targets.save(result, markdown(result), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
