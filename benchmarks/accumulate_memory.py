"""Peak memory of ``fit(accumulate=k)`` on the big MLP (numpy, tracemalloc), one run.

Rows: steps of 256 samples made as 1×256, 4×64 and 16×16 micro-batches (and 4×64 with the
functional, not in-place, sum), and steps of 2048 samples as 1×2048 and 8×256, where the
activations outweigh the parameters. Run:
``PYTHONPATH=. python benchmarks/accumulate_memory.py`` (writes results/accumulate.md/.json).
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

import nnxp
from nnxp import accumulation, bench

STEPS = 3


def measure(batch: int, k: int, *, inplace: bool = True) -> dict[str, Any]:
    step_samples = batch * k
    widths = bench.MODELS["big"]["widths"]
    with nnxp.use_backend("numpy"):
        rng = np.random.default_rng(0)
        X = rng.normal(size=((STEPS + 1) * step_samples, widths[0])).astype(np.float32)
        y = rng.integers(0, widths[-1], size=X.shape[0])
        model = bench.build_mlp(widths)
        opt = nnxp.optim.SGD(lr=0.01, momentum=0.9)
        model.fit(X[:step_samples], y[:step_samples], optimizer=opt, epochs=1,
                  batch_size=batch, accumulate=k, verbose=0, shuffle=False,
                  keep_finite_weights=False)  # warm-up: state made, grads alive
        real = accumulation.backend.supports_inplace
        if not inplace:
            accumulation.backend.supports_inplace = lambda xp: False  # type: ignore[assignment]
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            model.fit(X[step_samples:], y[step_samples:], optimizer=opt, epochs=1,
                      batch_size=batch, accumulate=k, verbose=0, shuffle=False,
                      keep_finite_weights=False)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
            accumulation.backend.supports_inplace = real  # type: ignore[assignment]
        params = sum(int(np.prod(p.shape)) * 4 for layer in model.layers
                     for p in layer.params.values())
    return {"micro_batch": batch, "accumulate": k, "inplace": inplace,
            "peak_mib": peak / 2**20, "params_mib": params / 2**20}


def main() -> None:
    rows = [measure(256, 1), measure(64, 4), measure(16, 16), measure(64, 4, inplace=False),
            measure(2048, 1), measure(256, 8)]
    out = Path(__file__).parent / "results"
    (out / "accumulate.json").write_text(json.dumps(rows, indent=1))
    lines = ["# fit(accumulate=k): peak memory above the live weights, big MLP, numpy",
             "", f"SGD(momentum=0.9), {STEPS} optimizer steps of micro-batch × k samples, "
             "tracemalloc peak during fit (keep_finite_weights=False) minus what was allocated "
             "before it (weights, optimizer state, data).", "",
             "| micro-batch × k | accumulation | peak (MiB) | parameters (MiB) |",
             "|---|---|---:|---:|"]
    for r in rows:
        how = "—" if r["accumulate"] == 1 else "in place" if r["inplace"] else "functional"
        lines.append(f"| {r['micro_batch']} × {r['accumulate']} | {how} | "
                     f"{r['peak_mib']:.1f} | "
                     f"{r['params_mib']:.1f} |")
    (out / "accumulate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
