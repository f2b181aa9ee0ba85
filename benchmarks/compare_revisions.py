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


def interleave(cands: dict[str, Callable[[], Any]], seconds: float,
               min_batch: float = 0.005) -> dict[str, dict[str, float]]:
    """Per round, each candidate runs ``reps`` calls in a row (enough for ``min_batch``
    seconds, so that a 0.1 ms step is not timed one call at a time), in an order shuffled
    afresh every round (a fixed or alternating order favours some positions). Times are per
    call."""
    reps = {}
    for name, fn in cands.items():  # warm-up, and the calls per timing
        fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(min_batch / max(time.perf_counter() - t0, 1e-9)))
    times: dict[str, list[float]] = {name: [] for name in cands}
    order = list(cands.items())
    shuffler = random.Random(0)
    start, rounds = time.perf_counter(), 0
    while rounds < 5 or time.perf_counter() - start < seconds:
        shuffler.shuffle(order)
        for name, fn in order:
            n = reps[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
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
    args = parser.parse_args(argv)
    cases = [(m, o, op) for m in ("small", "big") for o in ("sgd", "adam")
             for op in ("step", "epoch") if args.only in f"{m} {o} {op}"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old_pkg = unpack_revision(args.rev, Path(tmp))
        for model, opt, op in cases:
            # "new again" is a second, independent instance of this tree's case: how far apart
            # two identical candidates land (new again / new) is the resolution of the run
            cands = {"old": build(old_pkg, model, opt, op), "new": build(nnxp, model, opt, op),
                     "new again": build(nnxp, model, opt, op)}
            peer = torch_case(model, opt, op)
            if peer is not None:
                cands["torch"] = peer
            res = interleave(cands, args.seconds / len(cases))
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
    result = {"revision": args.rev, "machine": machine, "rows": rows}
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(result, indent=1))
        Path(args.out + ".md").write_text(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
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


if __name__ == "__main__":
    sys.exit(main())
