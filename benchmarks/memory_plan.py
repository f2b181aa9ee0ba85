"""The memory plan against the measured peak (issue 11, item 5), one run on NumPy.

For each row, the plan of :func:`nnxp.summary.memory_plan` (what ``model.summary`` prints and
``fit`` checks) is set beside the peak that :mod:`tracemalloc` measures (NumPy reports its
buffers to it) from before the model is built to the end of three training steps; the data
arrays are made before tracing starts and are not counted. Rows:

* the wide MLP 4096-4096-4096-10 (batch 64) with SGD and with Adam, step by step
  (``train_on_batch``), and through ``fit`` (which checks the step's plan: its divergence
  gate works on the device and keeps no copy of the weights; only distributed ``fit`` adds
  one);
* the largest width ``w`` of a ``w-w-w-10`` MLP whose Adam step with batch 64 fits a budget
  (256 MiB), found from the plan alone; its measured peak; and ``fit`` refusing the next
  width up front with that budget.

    PYTHONPATH=. python benchmarks/memory_plan.py [--budget 256MiB] [--out PREFIX]

writes PREFIX.json and PREFIX.md (default benchmarks/results/issue11-memory-plan).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
import tracemalloc
from typing import Any

import numpy as np

import nnxp
from nnxp import backend, bench, optim
from nnxp.layers import Dense, ReLU
from nnxp.summary import format_bytes, memory_plan
from nnxp.training import MemoryPlanError


def mlp(width: int, n_in: int | None = None) -> nnxp.Sequential:
    n_in = width if n_in is None else n_in
    return nnxp.Sequential([Dense(n_in, width), ReLU(), Dense(width, width), ReLU(),
                            Dense(width, 10)], seed=0)


def make_optimizer(name: str) -> Any:
    return optim.SGD(lr=0.01) if name == "SGD" else optim.Adam(lr=1e-4)


def measure(width: int, batch: int, opt_name: str, *, via: str = "step") -> dict[str, Any]:
    """Plan and tracemalloc peak of building the model and three steps (or a 3-batch fit)."""
    rng = np.random.default_rng(0)
    n = batch * (3 if via == "fit" else 1)
    X = rng.random((n, width), dtype=np.float32)
    y = rng.integers(0, 10, n)
    plan = memory_plan(mlp(width), batch, optimizer=make_optimizer(opt_name))
    planned = plan.memory["total"]
    # via == "fit" plans the same: fit's gate keeps no weight copy (only distributed fit does)
    gc.collect()
    start = time.perf_counter()
    tracemalloc.start()
    try:
        model, opt = mlp(width), make_optimizer(opt_name)
        if via == "fit":
            model.fit(X, y, optimizer=opt, epochs=1, batch_size=batch, shuffle=False,
                      verbose=0)
        else:
            xb = np.array(X, copy=True)  # the batch, as fit's loop holds it
            for _ in range(3):
                model.train_on_batch(xb, y, optimizer=opt)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - start
    del model, opt
    gc.collect()
    return {"model": f"{width}-{width}-{width}-10", "batch": batch, "optimizer": opt_name,
            "via": via, "planned_bytes": int(planned), "peak_bytes": int(peak),
            "plan_over_peak": round(planned / peak, 4), "seconds": round(seconds, 2),
            "plan": {k: v for k, v in plan.memory.items()}}


def largest_width(budget: int, batch: int, opt_name: str) -> int:
    """The largest multiple of 64 whose plan (no guard copy) fits ``budget``."""
    def fits(w: int) -> bool:
        return memory_plan(mlp(w), batch, optimizer=make_optimizer(opt_name)).memory[
            "total"] <= budget

    lo, hi = 64, 128
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 64:
        mid = (lo + hi) // 2 // 64 * 64
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="256MiB")
    parser.add_argument("--out", default="benchmarks/results/issue11-memory-plan")
    args = parser.parse_args()
    budget = backend.parse_bytes(args.budget)
    nnxp.set_backend("numpy")
    rows = [measure(4096, 64, "SGD"), measure(4096, 64, "Adam"),
            measure(4096, 64, "SGD", via="fit")]
    w = largest_width(budget, 64, "Adam")
    fit_row = measure(w, 64, "Adam")
    fit_row["budget_bytes"] = budget
    rows.append(fit_row)
    refusal = ""
    over = mlp(w + 64)
    try:
        over.fit(np.zeros((64, w + 64), np.float32), np.zeros(64, int),
                 optimizer=make_optimizer("Adam"), epochs=1, batch_size=64, verbose=0,
                 memory_budget=budget, keep_finite_weights=False)
    except MemoryPlanError as exc:
        refusal = str(exc)
    mixed = memory_plan(mlp(4096), 64, precision="float16", optimizer=make_optimizer("Adam"))
    meta = {"python": platform.python_version(), "machine": bench.machine_info(),
            "budget": args.budget, "largest_width": w,
            "mixed_precision_plan_4096_adam": mixed.memory, "refusal": refusal}
    with open(args.out + ".json", "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    lines = ["# Issue 11, item 5: the memory plan against the measured peak", "",
             "`PYTHONPATH=. python benchmarks/memory_plan.py` on NumPy (CPU): the plan of "
             "`nnxp.summary.memory_plan` (what `model.summary` prints and `fit` checks) beside "
             "the tracemalloc peak from building the model through three training steps (data "
             "made before tracing). Machine: "
             f"{meta['machine'].get('cpu')}, {meta['machine'].get('cores')} cores (shared); "
             f"TF32 {'on' if meta['machine'].get('tf32') else 'off'} (no effect on CPU).", "",
             "| model | batch | optimizer | via | plan | measured peak | plan / peak | s |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['optimizer']} | {r['via']} | "
                     f"{format_bytes(r['planned_bytes'])} | {format_bytes(r['peak_bytes'])} | "
                     f"{r['plan_over_peak']:.3f} | {r['seconds']} |")
    lines += ["", f"Largest width that fits a budget of {args.budget} with Adam at batch 64 "
              f"(from the plan alone): **{w}** (`{w}-{w}-{w}-10`, last row above). The next "
              f"width up, {w + 64}, is refused by `fit(memory_budget={args.budget!r}, "
              "keep_finite_weights=False)` before any step:", "", f"> {refusal}", "",
              "Mixed precision (float16) plan of the wide MLP with Adam at batch 64, what "
              "`fit(precision='float16')` checks (float32 master weights, gradients and "
              "optimizer state; float16 weight copies and activations): "
              + ", ".join(f"{k} {format_bytes(v or 0)}" for k, v in mixed.memory.items()) + ".",
              "", "`via=fit` is checked against the step's plan: with keep_finite_weights=True "
              "(the default) fit's divergence gate decides on the device and keeps no copy "
              "of the weights (only distributed fit keeps one and adds it). GPU rows: not "
              "measured (no GPU in this session); on cupy/torch CUDA the peak would come from "
              "the allocator's high-water mark (`nnxp.backend.memory_high_water`), and `fit` "
              "compares the plan with `torch.cuda.mem_get_info` / `cupy.cuda.runtime.memGetInfo`."]
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
