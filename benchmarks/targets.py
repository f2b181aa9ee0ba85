"""Issue 5's and issue 13's CPU targets, measured with interleaved rounds (robust on load).

Usage::

    python benchmarks/targets.py [--seconds 20] [--out benchmarks/results/targets]

On a 2-core machine shared with other work, load changes from one second to the next, so
timing nnxp for ten seconds and then PyTorch for ten seconds compares two different machines.
Here every candidate of a comparison runs once per round, in turn, round after round (A B C A B
C ...), so each sees the same load; medians and minima over the rounds give the ratios. It also
counts minor page faults per step (``getrusage``), the cost of large temporaries that the
allocator returns to the OS after every step, and measures the peak memory of the big MLP.

Candidates (numpy backend, float32, CPU):

* big MLP 784-1024-1024-10, batch 256: nnxp (SGD, Adam), torch (SGD, Adam, fused Adam), the
  bare matmuls of the step (``x W``, ``xᵀ dy`` per layer, ``dy Wᵀ`` for all but the first).
* small MLP 64-128-10, batch 32: nnxp, the hand-written NumPy step, torch (SGD, Adam).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import peers

from nnxp import backend, bench

Candidate = tuple[str, Callable[[], Any]]


def _build(case: bench.Case) -> Callable[[], Any]:
    with backend.use_backend(case.backend):
        setup, run = case.build()
    state = setup()
    return lambda: run(state)


def candidates(model: str, optimizers: Sequence[str]) -> list[Candidate]:
    out: list[Candidate] = []
    with backend.use_backend("numpy"):
        for opt in optimizers:
            nn, bound, _ = bench.model_cases("numpy", model, opt)
            out.append((f"nnxp {opt}", _build(nn)))
            if opt == optimizers[0]:
                out.append(("matmul bound", _build(bound)))
            for c in peers.model_peer_cases("cpu", model, opt) if peers.HAS_TORCH else []:
                if c.op == "step":
                    out.append((f"{c.impl} {opt}", _build(c)))
            for c in peers.numpy_by_hand_cases(model, opt):
                out.append((f"numpy-by-hand {opt}", _build(c)))
    return out


def interleave(cands: list[Candidate], seconds: float, max_rounds: int = 2000) -> dict[str, Any]:
    """Time every candidate once per round, in turn, until ``seconds`` have passed."""
    for _, fn in cands:  # warm-up: two calls each
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name, _ in cands}
    faults: dict[str, int] = dict.fromkeys(times, 0)
    start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < 5 or time.perf_counter() - start < seconds):
        for name, fn in cands:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        rounds += 1
    return {name: {"median": statistics.median(ts), "min": min(ts), "rounds": len(ts),
                   "minor_faults_per_call": faults[name] / len(ts)}
            for name, ts in times.items()}


def _r(res: dict[str, Any], a: str, b: str, stat: str = "median") -> float | None:
    if a not in res or b not in res:
        return None
    return float(res[a][stat] / res[b][stat])


def evaluate(big: dict[str, Any], small: dict[str, Any], memory: list[dict[str, Any]],
             opt: str) -> list[dict[str, Any]]:
    """The issue's targets as (name, value, target, met) from the measured times."""
    rows = []

    def add(name: str, value: float | None, target: str, ok: Callable[[float], bool]) -> None:
        rows.append({"target": name, "value": value, "goal": target,
                     "met": None if value is None else bool(ok(value))})

    for stat in ("median", "min"):
        add(f"big step: torch {opt} time / nnxp time ({stat})",
            _r(big, f"torch {opt}", f"nnxp {opt}", stat), ">= 1", lambda v: v >= 1)
        add(f"big step: torch-fused {opt} time / nnxp time ({stat})",
            _r(big, f"torch-fused {opt}", f"nnxp {opt}", stat), ">= 1 (informative)",
            lambda v: v >= 1)
        add(f"big step: matmul bound / nnxp {opt} ({stat})",
            _r(big, "matmul bound", f"nnxp {opt}", stat), ">= 0.75", lambda v: v >= 0.75)
        add(f"small step: nnxp {opt} / numpy-by-hand {opt} ({stat})",
            _r(small, f"nnxp {opt}", f"numpy-by-hand {opt}", stat), "<= 1.25",
            lambda v: v <= 1.25)
        add(f"small step: torch {opt} time / nnxp time ({stat})",
            _r(small, f"torch {opt}", f"nnxp {opt}", stat), ">= 2.5", lambda v: v >= 2.5)
        if opt == "adam":  # issue 13: CPU, one thread
            add(f"issue 13: big step: torch-fused adam time / nnxp time ({stat})",
                _r(big, "torch-fused adam", "nnxp adam", stat), ">= 1.0", lambda v: v >= 1.0)
        add(f"issue 13: small step: torch {opt} time / nnxp time ({stat})",
            _r(small, f"torch {opt}", f"nnxp {opt}", stat), ">= 3", lambda v: v >= 3)
    for m in memory:
        add(f"big MLP peak / live set ({m['optimizer']}, {m['via']} loop)", m["ratio"], "<= 1.5",
            lambda v: v <= 1.5)
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Issue 5 and 13 CPU targets (numpy backend, float32, interleaved rounds)", "",
             f"- Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
             f"threads {result['machine'].get('threadpools')}; torch threads "
             f"{result.get('torch_threads')}",
             f"- Thread limit: {result.get('threads_limit') or 'none (library defaults)'}",
             f"- Load average before / after: {result['load_before']} / {result['load_after']}",
             f"- Date: {result['date']}", "",
             "| target | value | goal | met |", "|---|---:|---|---|"]
    for t in result["targets"]:
        v = "n/a" if t["value"] is None else f"{t['value']:.2f}"
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {v} | {t['goal']} | {met} |")
    for model in ("big", "small"):
        lines += ["", f"## {model} MLP step", "",
                  "| candidate | median ms | min ms | rounds | minor page faults / step |",
                  "|---|---:|---:|---:|---:|"]
        for name, r in result[model].items():
            lines.append(f"| {name} | {r['median'] * 1e3:.3f} | {r['min'] * 1e3:.3f} | "
                         f"{r['rounds']} | {r['minor_faults_per_call']:.0f} |")
    lines += ["", "## Peak memory, big MLP", "",
              "| optimizer | loop | params | grads | state | activations | live set | peak | "
              "ratio |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in result["memory"]:
        mib = [f"{m[k] / 2**20:.1f} MiB" for k in ("params", "grads", "optimizer_state",
                                                   "activations", "live_bytes", "peak_bytes")]
        lines.append(f"| {m['optimizer']} | {m['via']} | {' | '.join(mib)} | "
                     f"{m['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="seconds of interleaved rounds per model (default 20)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write OUT.json and OUT.md (e.g. benchmarks/results/targets)")
    parser.add_argument("--threads", type=int, default=None,
                        help="limit BLAS/OpenMP pools (threadpoolctl) and torch to N threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
        if peers.HAS_TORCH:
            import torch

            torch.set_num_threads(args.threads)
    load_before = [round(v, 2) for v in os.getloadavg()]
    opts = ["sgd", "adam"]
    main_opt = bench.DEFAULT_OPTIMIZER
    big = interleave(candidates("big", opts), args.seconds)
    small = interleave(candidates("small", opts), args.seconds)
    memory = [bench.peak_memory("numpy", "big", o, via=via) for o in opts
              for via in ("step", "fit", "fit-lean")]
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": bench.machine_info(),
        "load_before": load_before, "load_after": [round(v, 2) for v in os.getloadavg()],
        "threads_limit": args.threads, "big": big, "small": small, "memory": memory,
        "targets": evaluate(big, small, memory, main_opt)
        + (evaluate(big, small, [], "sgd") if main_opt != "sgd" else []),
    }
    if peers.HAS_TORCH:
        import torch

        result["torch_threads"] = torch.get_num_threads()
    save(result, markdown(result), args.out)
    return 0


def save(result: dict[str, Any], text: str, out: Path | None) -> None:
    """Print the markdown ``text``; with ``out``, write ``out.json`` and ``out.md``."""
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
