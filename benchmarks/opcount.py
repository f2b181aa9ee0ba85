"""Operations per training step, nnxp against torch eager, and the flat layout's speed (issue 13).

Usage::

    python benchmarks/opcount.py [--rev main] [--seconds 8] [--out benchmarks/results/opcount]

1. **Operations.** For the reference MLPs (big 784-1024-1024-10 at batch 256, small 64-128-10
   at batch 32; ReLU, softmax cross-entropy) with SGD and Adam, the ATen operations of one
   steady-state training step on torch CPU (forward, loss, backward, optimizer step; counted
   with torch's dispatcher by ``tests/opcounting.py``, the counter ``tests/test_opcount.py``
   holds to its budgets) — nnxp's, nnxp's at ``--rev`` (unpacked as in
   ``compare_revisions.py``), and torch eager's single-tensor (``foreach=False``), foreach and
   fused (Adam) steps — and, per row, the operators with the largest shares.
2. **Flat layout, timed** (``--seconds`` > 0). The same steps on numpy and torch CPU, one
   thread, with the grouped updates over flat buffers (the default) and with one update per
   parameter (``optimizer.flat = False``), interleaved round by round in one process: the
   median time per step of each and their ratio. This is the measurement behind
   ``nnxp.optim.flat.FLAT_BACKENDS`` (``docs/design.md``, "Flat parameter buffers").

Writes ``OUT.md`` and ``OUT.json``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import opcounting  # noqa: E402  (tests/opcounting.py)
import torch  # noqa: E402

import nnxp  # noqa: E402
from nnxp import bench  # noqa: E402

ROWS = [("big", "sgd"), ("big", "adam"), ("small", "sgd"), ("small", "adam")]
TOP = 6  # operators listed per row


def count_rows(rev_pkg: Any = None) -> list[dict[str, Any]]:
    rows = []
    for model, opt in ROWS:
        ops = opcounting.count_step(opcounting.nnxp_step(model, opt))
        row: dict[str, Any] = {"model": model, "optimizer": opt, "nnxp": sum(ops.values()),
                               "nnxp_ops": dict(ops.most_common()),
                               "nnxp_views": sum(n for name, n in ops.items()
                                                 if name in opcounting.VIEW_OPS),
                               "nnxp_launches": opcounting.launches(ops)}
        if rev_pkg is not None:
            old = opcounting.count_step(opcounting.nnxp_step(model, opt, rev_pkg))
            row["rev"], row["rev_ops"] = sum(old.values()), dict(old.most_common())
            row["rev_launches"] = opcounting.launches(old)
        for mode in opcounting.TORCH_MODES[opt]:
            theirs = opcounting.count_step(opcounting.torch_step(model, opt, mode))
            row[f"torch_{mode}"] = sum(theirs.values())
            row[f"torch_{mode}_ops"] = dict(theirs.most_common())
            row[f"torch_{mode}_launches"] = opcounting.launches(theirs)
        rows.append(row)
    return rows


def _step(spec: str, model: str, opt_name: str, flat: bool | None) -> Any:
    with nnxp.use_backend(spec) as info:
        cfg = bench.MODELS[model]
        net = bench.build_mlp(cfg["widths"])
        opt = bench.make_optimizer(opt_name)
        opt.flat = flat
        opt.bind(net.parameters())
        x, y = bench.model_inputs(model, info.xp, info.device)
    return lambda: bench.train_step(net, opt, x, y)


def time_rows(seconds: float) -> list[dict[str, Any]]:
    """Median time per step with flat buffers and per parameter, interleaved."""
    torch.set_num_threads(1)
    cases = [(spec, model, opt) for spec in ("numpy", "torch") for model, opt in ROWS]
    per_case = seconds / len(cases)
    out = []
    for spec, model, opt in cases:
        runs = {"flat": _step(spec, model, opt, None), "per-parameter": _step(spec, model, opt,
                                                                              False)}
        for run in runs.values():  # warm-up: state, layout, caches
            for _ in range(3):
                run()
        times: dict[str, list[float]] = {k: [] for k in runs}
        start = time.perf_counter()
        while time.perf_counter() - start < per_case or len(times["flat"]) < 5:
            order = list(runs)
            random.shuffle(order)
            for name in order:
                t0 = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        out.append({"backend": spec, "model": model, "optimizer": opt,
                    "rounds": len(times["flat"]),
                    "flat_ms": 1e3 * med["flat"], "per_parameter_ms": 1e3 * med["per-parameter"],
                    "ratio": med["flat"] / med["per-parameter"]})
    return out


def _top(ops: dict[str, int]) -> str:
    return ", ".join(f"`{k}` {v}" for k, v in list(ops.items())[:TOP])


def render(rows: list[dict[str, Any]], timed: list[dict[str, Any]], rev: str | None) -> str:
    lines = ["# Operations per training step (issue 13)", "",
             "ATen operations of one steady-state training step (forward, softmax "
             "cross-entropy, backward, optimizer step) on torch CPU, counted with torch's "
             "dispatcher (`tests/opcounting.py`; views included — on a GPU each other "
             "operation is roughly one kernel launch). Written by `python benchmarks/opcount.py"
             + (f" --rev {rev}" if rev else "") + "`; `tests/test_opcount.py` holds nnxp's "
             "column to its budgets.", ""]
    for suffix, title in (("", "All operators"),
                          ("_launches", "Without views and profiler markers (what launches "
                           "a kernel on a GPU)")):
        head = "| model, optimizer | nnxp |" + (f" nnxp at `{rev}` |" if rev else "") + \
            " torch single-tensor | torch foreach | torch fused |"
        lines += [f"{title}:", "", head, "|---" + "|---:" * (head.count("|") - 2) + "|"]
        for r in rows:
            fused = r.get(f"torch_fused{suffix}", "—")
            cells = [f"{r['model']} MLP, {r['optimizer']}", str(r[f"nnxp{suffix}"])]
            if rev:
                cells.append(str(r[f"rev{suffix}"]))
            cells += [str(r[f"torch_single{suffix}"]), str(r[f"torch_foreach{suffix}"]),
                      str(fused)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Largest shares per row (operator, count per step):", ""]
    for r in rows:
        name = f"{r['model']} MLP, {r['optimizer']}"
        lines.append(f"- **{name}** — nnxp: {_top(r['nnxp_ops'])} "
                     f"({r['nnxp_views']} of {r['nnxp']} are views)")
        if rev:
            lines.append(f"  - nnxp at `{rev}`: {_top(r['rev_ops'])}")
        lines.append(f"  - torch foreach: {_top(r['torch_foreach_ops'])}")
    if timed:
        lines += ["", "## Flat buffers against one update per parameter, timed", "",
                  "Median time per training step, one thread, the two layouts interleaved "
                  "round by round in one process (`optimizer.flat = False` is the per-parameter "
                  "path). ratio < 1: the flat layout is faster.", "",
                  "| backend | model, optimizer | flat (ms) | per parameter (ms) | ratio "
                  "| rounds |",
                  "|---|---|---:|---:|---:|---:|"]
        for t in timed:
            lines.append(f"| {t['backend']} | {t['model']} MLP, {t['optimizer']} | "
                         f"{t['flat_ms']:.3f} | {t['per_parameter_ms']:.3f} | "
                         f"{t['ratio']:.3f} | {t['rounds']} |")
    lines += ["", f"Machine: {platform.machine()}, {platform.python_version()}, torch "
              f"{torch.__version__}, nnxp {nnxp.__version__}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", default=None, help="also count nnxp at this git revision")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="time budget of the flat-layout timing (0: counts only)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "opcount"))
    parser.add_argument("--include", default=None,
                        help="append this markdown file (e.g. the output of "
                             "compare_revisions.py --out) to the report")
    args = parser.parse_args()
    rev_pkg = None
    if args.rev:
        from compare_revisions import unpack_revision
        rev_pkg = unpack_revision(args.rev, Path(tempfile.mkdtemp(prefix="nnxp_rev_")))
    rows = count_rows(rev_pkg)
    timed = time_rows(args.seconds) if args.seconds > 0 else []
    text = render(rows, timed, args.rev)
    if args.include:
        included = Path(args.include).read_text().strip().split("\n")
        text += "\n## " + included[0].lstrip("# ") + f" (`{Path(args.include).name}`)\n"
        text += "\n".join(included[1:]) + "\n"
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(
        {"rev": args.rev, "counts": rows, "timed": timed,
         "versions": {"torch": torch.__version__, "nnxp": nnxp.__version__,
                      "python": platform.python_version()}}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
