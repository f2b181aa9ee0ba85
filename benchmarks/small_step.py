"""The small MLP's training step: this tree against an earlier revision, torch and NumPy by hand.

Usage::

    python benchmarks/small_step.py REV [--seconds 20] [--fit-seconds 0] [--out PATH]

Issue 13's CPU target is measured by ``benchmarks/targets.py``: the small MLP (64-128-10,
batch 32, ReLU, softmax cross-entropy) trained one step at a time, ``torch time / nnxp time >=
3`` on one thread, every candidate timed ONE call at a time, in turn, round after round. This
script runs the same rounds with the nnxp of revision ``REV`` (unpacked under the name
``nnxp_rev`` by ``compare_revisions.unpack_revision``) as a further candidate, so that the
change and the ratio to torch come from the same rounds, and with this tree's step a second
time ("new again": the A/A row, the resolution of the run).

With ``--fit-seconds S`` it also times one ``fit`` epoch of the same model (the ``bench``
epoch case: 1792 samples, batch 32) old against new, with the divergence gate on (the
default) and off (``keep_finite_weights=False``), with ``compare_revisions.interleave``
(several calls per timing, order shuffled per round); the difference per step is the gate's
cost.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_revisions  # noqa: E402
import peers  # noqa: E402
import targets  # noqa: E402

import nnxp  # noqa: E402
from nnxp import bench  # noqa: E402


def step_candidates(old_pkg: Any, opt: str) -> dict[str, Callable[[], Any]]:
    cands = {"old": compare_revisions.build(old_pkg, "small", opt, "step"),
             "new": compare_revisions.build(nnxp, "small", opt, "step"),
             "new again": compare_revisions.build(nnxp, "small", opt, "step")}
    for name, fn in targets.candidates("small", [opt]):
        if name.startswith(("torch", "numpy-by-hand")):
            cands[name.split(" ")[0]] = fn
    return cands


def fit_epoch(pkg: Any, opt: str, gate: bool) -> Callable[[], Any]:
    """One ``fit`` epoch of ``pkg``'s bench epoch case (1792 samples, batch 32), with the
    divergence gate on (``keep_finite_weights=True``, the default) or off."""
    with pkg.backend.use_backend("numpy"):
        model = pkg.bench.build_mlp(pkg.bench.MODELS["small"]["widths"])
        optimizer = pkg.bench.make_optimizer(opt)
        X, y = pkg.bench.model_inputs("small", model.xp, model.device,
                                      pkg.bench.epoch_samples("small"))
    batch = pkg.bench.MODELS["small"]["batch"]
    return lambda: model.fit(X, y, optimizer=optimizer, epochs=1, batch_size=batch, verbose=0,
                             keep_finite_weights=gate)


def ratios(res: dict[str, Any], pairs: list[tuple[str, str, str]]) -> dict[str, float]:
    out = {}
    for label, a, b in pairs:
        if a in res and b in res:
            for stat in ("median", "min"):
                out[f"{label} {stat}"] = res[a][stat] / res[b][stat]
    return out


PAIRS = [("new/old", "new", "old"), ("A/A", "new again", "new"),
         ("torch/old", "torch", "old"), ("torch/new", "torch", "new"),
         ("torch-fused/new", "torch-fused", "new"),
         ("new/numpy-by-hand", "new", "numpy-by-hand"),
         ("old/numpy-by-hand", "old", "numpy-by-hand")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the git revision to compare against")
    parser.add_argument("--seconds", type=float, default=20.0, help="per optimizer (steps)")
    parser.add_argument("--fit-seconds", type=float, default=0.0,
                        help="per optimizer for the fit epoch (0: skip it)")
    parser.add_argument("--optimizers", default="sgd,adam")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if peers.HAS_TORCH:
        import torch  # noqa: PLC0415

        torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old_pkg = compare_revisions.unpack_revision(args.rev, Path(tmp))
        for opt in args.optimizers.split(","):
            # one call per timing (min_batch=0), in an order shuffled every round: in a fixed
            # order a candidate that follows one running the same Python code (old after new)
            # finds it warm in the caches, 10-15 % at 0.1 ms a step (an A/A pair differed 14 %)
            res = compare_revisions.interleave(step_candidates(old_pkg, opt), args.seconds,
                                               min_batch=0)
            rows.append({"case": f"small {opt} step",
                         "timing": "one call per timing, shuffled order",
                         "results": res, "ratios": ratios(res, PAIRS)})
            if args.fit_seconds > 0:
                cands = {"old": fit_epoch(old_pkg, opt, True), "new": fit_epoch(nnxp, opt, True),
                         "new again": fit_epoch(nnxp, opt, True),
                         "old, no gate": fit_epoch(old_pkg, opt, False),
                         "new, no gate": fit_epoch(nnxp, opt, False)}
                fres = compare_revisions.interleave(cands, args.fit_seconds)
                steps = -(-bench.epoch_samples("small") // bench.MODELS["small"]["batch"])
                gate = {f"{who} gate µs/step {stat}":
                        (fres[who][stat] - fres[f"{who}, no gate"][stat]) / steps * 1e6
                        for who in ("old", "new") for stat in ("median", "min")}
                rows.append({"case": f"small {opt} fit epoch ({steps} steps)",
                             "timing": "calls batched per timing, shuffled order",
                             "results": fres, "ratios": {**ratios(fres, PAIRS), **gate}})
    result = {"revision": args.rev, "machine": bench.machine_info(), "rows": rows,
              "threads": 1}
    text = markdown(result)
    print(text)
    if args.out:
        Path(args.out + ".json").write_text(json.dumps(result, indent=1))
        Path(args.out + ".md").write_text(text)
    return 0


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# Small MLP step: this tree against {result['revision']} (interleaved rounds)", "",
             f"- Machine: {m.get('cpu')}, {m.get('cores')} cores; one thread (BLAS, torch)",
             f"- Command: `python benchmarks/small_step.py {result['revision']} ...`", ""]
    for row in result["rows"]:
        lines += [f"## {row['case']} ({row['timing']})", "",
                  "| candidate | median µs | min µs | rounds |", "|---|---:|---:|---:|"]
        for name, r in row["results"].items():
            lines.append(f"| {name} | {r['median'] * 1e6:.1f} | {r['min'] * 1e6:.1f} | "
                         f"{r['rounds']} |")
        lines += ["", "| ratio | value |", "|---|---:|"]
        for name, v in row["ratios"].items():
            lines.append(f"| {name} | {v:.1f} |" if "µs" in name else f"| {name} | {v:.3f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
