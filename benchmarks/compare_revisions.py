"""This tree's nnxp against an earlier revision, in ONE process, with interleaved rounds.

Usage::

    python benchmarks/compare_revisions.py REV [--seconds 30] [--out benchmarks/results/NAME]

A refactor must not make training slower, but two runs minutes apart on a shared 2-core machine
differ by more than the effect being looked for. So the revision ``REV`` (a git commit) is
unpacked under another package name (``nnxp_rev``: every import inside nnxp is relative, so
the copy is self-contained) and imported next to this tree's ``nnxp``; then, round after round,
each candidate runs once in turn (old, new and the torch peer), so all see the same load.

Cases (numpy, float32, one BLAS thread): the training step (forward, loss, backward, update) and
one ``fit`` epoch of the small MLP (64-128-10, batch 32) and of the big one (784-1024-1024-10,
batch 256), each with SGD and Adam. Reported per case: the median and minimum time per call of
each candidate, ``new / old`` and ``nnxp / torch`` for both revisions, all from the same rounds.

With ``--kernels`` the cases are instead the kernel benchmarks of ``nnxp.bench.kernel_cases``
(activations, batch norm, ...) as forward + backward of one layer at ``--size`` (256x1024 by
default), against ``torch.nn``'s module (``peers.kernel_peer_cases``), for nnxp on the numpy
backend and, as further candidates in the same rounds, on the torch CPU backend.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import nnxp  # noqa: E402
from nnxp import bench  # noqa: E402

try:
    import peers  # the torch peer; absent when torch is not installed
except ImportError:  # pragma: no cover - depends on the environment
    peers = None


def unpack_revision(rev: str, into: Path) -> Any:
    """Import nnxp as it was at ``rev`` under the name ``nnxp_rev``."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "nnxp"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    (into / "nnxp").rename(into / "nnxp_rev")
    sys.path.insert(0, str(into))
    pkg = importlib.import_module("nnxp_rev")
    importlib.import_module("nnxp_rev.bench")
    return pkg


def build(pkg: Any, model: str, opt: str, op: str) -> Callable[[], Any]:
    """The nnxp case ``op`` ("step" or "epoch") of ``pkg``'s own benchmark definitions."""
    with pkg.backend.use_backend("numpy"):
        case = next(c for c in pkg.bench.model_cases("numpy", model, opt)
                    if c.op == op and c.impl == "nnxp")
        setup, run = case.build()
        state = setup()
    return lambda: run(state)


def torch_case(model: str, opt: str, op: str) -> Callable[[], Any] | None:
    if peers is None or not peers.HAS_TORCH:
        return None
    for case in peers.model_peer_cases("cpu", model, opt):
        if case.op == op and case.impl == "torch":
            setup, run = case.build()
            state = setup()
            return lambda: run(state)
    return None


def kernel_fwd_bwd(pkg: Any, spec: str, name: str, batch: int, width: int
                   ) -> Callable[[], Any] | None:
    """Forward (training) + backward of ``pkg``'s kernel benchmark ``name`` on ``spec``.

    The backward case's setup is the training forward, so setup-then-run is one full pass."""
    with pkg.backend.use_backend(spec):
        case = next((c for c in pkg.bench.kernel_cases(spec, batch, width)
                     if c.workload == name and c.op == "backward" and c.impl == "nnxp"), None)
        if case is None:
            return None
        setup, run = case.build()

    def call() -> Any:
        with pkg.backend.use_backend(spec):
            return run(setup())

    return call


def torch_kernel(name: str, batch: int, width: int) -> Callable[[], Any] | None:
    if peers is None or not peers.HAS_TORCH:
        return None
    for case in peers.kernel_peer_cases("cpu", batch, width):
        if case.workload == name and case.op == "backward":
            setup, run = case.build()
            return lambda: run(setup())
    return None


KERNELS = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "selu", "softplus",
           "softmax", "gelu", "gelu_tanh", "silu", "batchnorm")
"""The kernel cases of ``--kernels``: the activations of the course, GELU, SiLU, batch norm."""


def kernel_rows(old_pkg: Any, names: list[str], batch: int, width: int, seconds: float,
                clock: str = "wall") -> list[dict[str, Any]]:
    rows = []
    torch_backend = peers is not None and peers.HAS_TORCH
    for name in names:
        cands: dict[str, Callable[[], Any]] = {}
        for label, pkg, spec in (("old", old_pkg, "numpy"), ("new", nnxp, "numpy"),
                                 ("new again", nnxp, "numpy"),
                                 ("old torch-backend", old_pkg, "torch:cpu"),
                                 ("new torch-backend", nnxp, "torch:cpu")):
            if spec.startswith("torch") and not torch_backend:
                continue
            fn = kernel_fwd_bwd(pkg, spec, name, batch, width)
            if fn is not None:
                cands[label] = fn
        peer = torch_kernel(name, batch, width)
        if peer is not None:
            cands["torch"] = peer
        res = interleave(cands, seconds, clock=clock)
        row: dict[str, Any] = {"model": f"kernel {name}", "optimizer": f"{batch}x{width}",
                               "op": "fwd+bwd", **res}
        for stat in ("median", "min"):
            row[f"new/old {stat}"] = res["new"][stat] / res["old"][stat]
            row[f"A/A {stat}"] = res["new again"][stat] / res["new"][stat]
            if "torch" in res:
                for who in ("old", "new", "old torch-backend", "new torch-backend"):
                    if who in res:
                        row[f"{who}/torch {stat}"] = res[who][stat] / res["torch"][stat]
        rows.append(row)
        for stat in ("median", "min"):
            t_new = row.get(f"new torch-backend/torch {stat}", float("nan"))
            t_old = row.get(f"old torch-backend/torch {stat}", float("nan"))
            print(f"{name:11s} {stat:6s} old {res['old'][stat] * 1e3:7.3f} ms  new "
                  f"{res['new'][stat] * 1e3:7.3f} ms  new/old {row[f'new/old {stat}']:.3f}  "
                  f"numpy/torch old {row.get(f'old/torch {stat}', float('nan')):.2f} new "
                  f"{row.get(f'new/torch {stat}', float('nan')):.2f}  torch-backend/torch old "
                  f"{t_old:.2f} new {t_new:.2f}  (A/A {row[f'A/A {stat}']:.3f})", flush=True)
    return rows


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
"""``--clock``: wall-clock time, or the CPU time of this thread (single-threaded runs only: BLAS
and torch are limited to one thread here). On a machine whose load exceeds its cores, wall
time per round is dominated by preemption — a kernel of thirty short passes is interrupted far
more often than one fused pass — while thread CPU time counts only the time the kernel ran."""


def interleave(cands: dict[str, Callable[[], Any]], seconds: float,
               min_batch: float = 0.005, clock: str = "wall") -> dict[str, dict[str, float]]:
    """Per round, each candidate runs ``reps`` calls in a row (enough for ``min_batch``
    seconds, so that a 0.1 ms step is not timed one call at a time; ``min_batch=0``: one call
    per timing), in an order shuffled afresh every round (a fixed or alternating order
    favours some positions). Times are per call."""
    now = CLOCKS[clock]
    reps = {}
    for name, fn in cands.items():  # warm-up, and the calls per timing
        fn()
        t0 = now()
        fn()
        reps[name] = max(1, int(min_batch / max(now() - t0, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in cands}
    order = list(cands.items())
    shuffler = random.Random(0)
    start, rounds = time.perf_counter(), 0
    while rounds < 5 or time.perf_counter() - start < seconds:
        shuffler.shuffle(order)
        for name, fn in order:
            n = reps[name]
            t0 = now()
            for _ in range(n):
                fn()
            times[name].append((now() - t0) / n)
        rounds += 1
    return {name: {"median": statistics.median(ts), "min": min(ts), "rounds": len(ts)}
            for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the git revision to compare against (e.g. main~5)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="time budget of the whole run (split over the cases)")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    parser.add_argument("--only", default="",
                        help="run only the cases whose name ('big sgd epoch') contains this")
    parser.add_argument("--kernels", action="store_true",
                        help="compare the kernel cases (forward + backward) instead of the "
                             "training steps; --only filters them by kernel name (several, "
                             "comma-separated)")
    parser.add_argument("--size", default="256x1024", help="batch x width of --kernels")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="time per call by the wall clock or by this thread's CPU time")
    args = parser.parse_args(argv)
    cases = [(m, o, op) for m in ("small", "big") for o in ("sgd", "adam")
             for op in ("step", "epoch") if args.only in f"{m} {o} {op}"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old_pkg = unpack_revision(args.rev, Path(tmp))
        if args.kernels:
            batch, width = (int(v) for v in args.size.split("x"))
            wanted = args.only.split(",")  # --kernels: a comma-separated list of names
            names = [k for k in KERNELS if any(w in k for w in wanted)]
            rows = kernel_rows(old_pkg, names, batch, width, args.seconds / max(len(names), 1),
                               clock=args.clock)
            cases = []
        for model, opt, op in cases:
            # "new again" is a second, independent instance of this tree's case: how far apart
            # two identical candidates land (new again / new) is the resolution of the run
            cands = {"old": build(old_pkg, model, opt, op), "new": build(nnxp, model, opt, op),
                     "new again": build(nnxp, model, opt, op)}
            peer = torch_case(model, opt, op)
            if peer is not None:
                cands["torch"] = peer
            res = interleave(cands, args.seconds / len(cases), clock=args.clock)
            row: dict[str, Any] = {"model": model, "optimizer": opt, "op": op, **res}
            for stat in ("median", "min"):
                row[f"new/old {stat}"] = res["new"][stat] / res["old"][stat]
                row[f"A/A {stat}"] = res["new again"][stat] / res["new"][stat]
                if "torch" in res:
                    row[f"old/torch {stat}"] = res["old"][stat] / res["torch"][stat]
                    row[f"new/torch {stat}"] = res["new"][stat] / res["torch"][stat]
            rows.append(row)
            print(f"{model:5s} {opt:4s} {op:5s} old {res['old']['median'] * 1e3:9.3f} ms  "
                  f"new {res['new']['median'] * 1e3:9.3f} ms  new/old median "
                  f"{row['new/old median']:.3f} min {row['new/old min']:.3f}  (A/A median "
                  f"{row['A/A median']:.3f} min {row['A/A min']:.3f})", flush=True)
    machine = bench.machine_info()
    result = {"revision": args.rev, "machine": machine, "rows": rows, "clock": args.clock,
              "kind": "kernels" if args.kernels else "models"}
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(result, indent=1))
        Path(args.out + ".md").write_text(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    if result.get("kind") == "kernels":
        return kernel_markdown(result)
    lines = [f"# nnxp against revision `{result['revision']}`, one process, interleaved rounds",
             "", "numpy backend, float32, one BLAS thread. Times per call in milliseconds "
             "(median over the rounds). `new/old` < 1: this tree is faster. `A/A` is a second "
             "instance of this tree's case against the first, timed in the same rounds: how far "
             "apart identical code lands, i.e. the resolution of the run.", "",
             "| case | old | new | torch | new/old (median) | new/old (min) | A/A (median) | "
             "A/A (min) | old/torch | new/torch | rounds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        torch_ms = f"{r['torch']['median'] * 1e3:.3f}" if "torch" in r else ""
        lines.append(
            f"| {r['model']} {r['optimizer']} {r['op']} | {r['old']['median'] * 1e3:.3f} | "
            f"{r['new']['median'] * 1e3:.3f} | {torch_ms} | {r['new/old median']:.3f} | "
            f"{r['new/old min']:.3f} | {r['A/A median']:.3f} | {r['A/A min']:.3f} | "
            f"{r.get('old/torch median', float('nan')):.2f} | "
            f"{r.get('new/torch median', float('nan')):.2f} | {r['new']['rounds']} |")
    return "\n".join(lines) + "\n"


def kernel_markdown(result: dict[str, Any]) -> str:
    def ratio(r: dict[str, Any], key: str) -> str:
        v = r.get(key)
        return "" if v is None else f"{v:.2f}"

    lines = [f"# nnxp kernels against revision `{result['revision']}`, one process, "
             "interleaved rounds", "",
             f"Forward (training) + backward of one layer, float32, one thread, clock "
             f"`{result.get('clock', 'wall')}` (`cpu`: this thread's CPU time). Times per call in "
             "milliseconds (median over the rounds). `X/torch`: nnxp time over torch.nn's module "
             "on the CPU, same rounds; `numpy` and `torch-backend` are nnxp on the numpy and on "
             "the torch CPU backend. `A/A`: a second instance of the new numpy case against the "
             "first (the resolution of the run).", "",
             "| kernel | size | stat | old ms | new ms | torch ms | new/old | numpy/torch old | "
             "numpy/torch new | torch-backend/torch old | torch-backend/torch new | A/A | "
             "rounds |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        for stat in ("median", "min"):
            torch_ms = f"{r['torch'][stat] * 1e3:.3f}" if "torch" in r else ""
            lines.append(
                f"| {r['model'].removeprefix('kernel ')} | {r['optimizer']} | {stat} | "
                f"{r['old'][stat] * 1e3:.3f} | {r['new'][stat] * 1e3:.3f} | {torch_ms} | "
                f"{r[f'new/old {stat}']:.3f} | {ratio(r, f'old/torch {stat}')} | "
                f"{ratio(r, f'new/torch {stat}')} | "
                f"{ratio(r, f'old torch-backend/torch {stat}')} | "
                f"{ratio(r, f'new torch-backend/torch {stat}')} | {r[f'A/A {stat}']:.3f} | "
                f"{r['new']['rounds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
