"""What a replayed step of ``fit(capture=True)`` costs the host, measured on the CPU.

Usage::

    python benchmarks/replay_overhead.py [--seconds 60] [--out PATH]

On a GPU a recorded step is one graph launch, and the host's share of a step is what ``fit``
does around it: gather the batch into the static buffers, sum the loss and the
metrics, keep the gate's flag. Whether the small MLP's recorded step on a GPU beats its CPU
step (issue 13's GPU target) depends on that share staying below both the CPU step and the
graph's own run time. This measures it without a GPU: the recorder is replaced by one that runs
the step once when asked to record it and nothing on a replay, so a replayed step costs only
the work around it — on torch CPU the same operations (one launch each on CUDA, counted by
``tests/test_opcount.py::test_launches_around_a_replayed_step``), on numpy the cheapest case.

Per backend (numpy, torch CPU), one-epoch ``fit`` calls of 50 and 100 batches of 32 (small MLP
64-128-10, SGD with momentum, accuracy), eager and with replays of nothing, timed in
interleaved rounds (``compare_revisions.interleave``); the difference between the two sizes
is the cost of 50 steps (what every fit call does once — the check step, the recording, the
epoch's end — cancels out). One thread.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_revisions  # noqa: E402
import numpy as np  # noqa: E402
import targets  # noqa: E402

import nnxp  # noqa: E402
from nnxp import backend, bench  # noqa: E402

BATCH = 32
SIZES = (50, 100)  # batches per epoch


class RecordNothing(backend.GraphRecorder):
    """Records by running the step once; a replay runs nothing (the host's share only)."""

    kind = "nothing"

    def capture(self, fn: Callable[[], Any]) -> tuple[backend.CapturedGraph, Any]:
        outputs = fn()
        return backend.CapturedGraph(lambda: None), outputs


def epoch(spec: str, batches: int, replay: bool) -> Callable[[], Any]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batches * BATCH, 64)).astype(np.float32)
    y = X[:, :10].argmax(axis=1)
    with nnxp.use_backend(spec):
        model = bench.build_mlp([64, 128, 10])
        opt = nnxp.optim.SGD(lr=0.01, momentum=0.9)
        Xd, yd = nnxp.asarray(X), nnxp.asarray(y)

    def run() -> Any:
        original = backend.graph_capture
        if replay:
            backend.graph_capture = lambda xp, device: RecordNothing()
        try:
            return model.fit(Xd, yd, optimizer=opt, epochs=1, batch_size=BATCH, verbose=0,
                             capture=replay)
        finally:
            backend.graph_capture = original

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        import torch
        torch.set_num_threads(1)
        specs = ["numpy", "torch"]
    except ImportError:
        specs = ["numpy"]
    cands = {f"{spec} {'replay' if replay else 'eager'} {n}": epoch(spec, n, replay)
             for spec in specs for replay in (False, True) for n in SIZES}
    load_before = [round(v, 2) for v in os.getloadavg()]
    timed = compare_revisions.interleave(cands, args.seconds, min_batch=0)
    load_after = [round(v, 2) for v in os.getloadavg()]
    rows = []
    for spec in specs:
        row: dict[str, Any] = {"backend": spec}
        for kind in ("eager", "replay"):
            for stat in ("median", "min"):
                small, big = (timed[f"{spec} {kind} {n}"][stat] for n in SIZES)
                row[f"{kind}_{stat}_us"] = (big - small) / (SIZES[1] - SIZES[0]) * 1e6
        rows.append(row)
    lines = ["# Host cost of a replayed step of fit(capture=True), without a GPU", "",
             " ".join(__doc__.split("\n\n")[3:5]).replace("\n", " ").replace("::", ":"), "",
             f"- Written by `python benchmarks/replay_overhead.py --seconds {args.seconds:g}`; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread",
             f"- Load average before / after: {load_before} / {load_after}",
             f"- Rounds: {min(t['rounds'] for t in timed.values())}", "",
             "| backend | eager step, µs (median / min) | around a replay, µs (median / min) | "
             "eager / around (median) |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['eager_median_us']:.1f} / {r['eager_min_us']:.1f} "
                     f"| {r['replay_median_us']:.1f} / {r['replay_min_us']:.1f} | "
                     f"{r['eager_median_us'] / r['replay_median_us']:.2f} |")
    text = "\n".join(lines) + "\n"
    targets.save({"rows": rows, "timed": timed, "load_before": load_before,
                  "load_after": load_after}, text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
