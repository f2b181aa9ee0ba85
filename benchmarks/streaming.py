"""Seconds per epoch: a memory-mapped data set streamed in chunks vs the same data in memory.

The data set (a ``.npy`` file written to a temporary folder, read back with
``np.load(mmap_mode="r")``) is 4x larger than the device-memory budget set with
``nnxp.set_memory_budget``, so ``fit`` streams it (:mod:`nnxp.data`): chunks of at most
1/8 of the budget, copied one at a time. The peer is the in-memory run in the same process on
the same backend: the array loaded into memory, no budget. Per backend and mode, ``ROUNDS`` fits
alternate and the fastest epoch counts (the machine is shared: the minimum is the least
disturbed); the ratio is the streamed epoch over the in-memory one (above 1: streaming costs
that much). The streamed fit's set-up (the one checking pass over the file: finiteness and
labels, chunk by chunk) is reported separately. The file is in the page cache after the first
round: the figures are for warm reads (a cold read from disk adds the disk's time).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/streaming.py [--rounds 3] [--out PREFIX]

(one BLAS thread: on a shared machine, multithreaded BLAS times swing by 2-3x between rounds;
the thread setting is recorded in the results)

writes PREFIX.json and PREFIX.md (default benchmarks/results/issue11-streaming).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

import nnxp
from nnxp.layers import Dense

N, F, HIDDEN, C = 32768, 256, 256, 10
BATCH = 256


def _fit(model_args: dict, X, y, *, shuffle: bool) -> tuple[float, float]:
    """(fastest epoch seconds, set-up seconds) of one 2-epoch fit."""
    model = nnxp.Sequential([Dense(F, HIDDEN, activation="relu"), Dense(HIDDEN, C)], **model_args)
    started = time.perf_counter()
    h = model.fit(X, y, epochs=2, batch_size=BATCH, shuffle=shuffle, verbose=0)
    total = time.perf_counter() - started
    return min(h["epoch_time"]), total - sum(h["epoch_time"])


def _data_path(Xm, ym, budget: int, shuffle: bool, rounds: int) -> float:
    """Fastest seconds of one epoch of the stream's batches alone, no training step: reading,
    shuffling, casting, copying the chunks (the cost that overlapping hides on a GPU)."""
    model = nnxp.Sequential([Dense(F, HIDDEN, activation="relu"), Dense(HIDDEN, C)], seed=0)
    nnxp.set_memory_budget(budget)
    try:
        stream, _, _ = nnxp.data.prepare(model, Xm, ym, batch_size=BATCH)
        best = np.inf
        for _ in range(rounds):
            started = time.perf_counter()
            plan = stream.epoch_plan(model.data_rng) if shuffle else None
            for _batch in stream.batches(BATCH, plan):
                pass
            best = min(best, time.perf_counter() - started)
    finally:
        nnxp.set_memory_budget(None)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/issue11-streaming")
    parser.add_argument("--backends", default="numpy,torch",
                        help="comma-separated nnxp backend specs, e.g. torch:cuda,cupy on a GPU")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(os.path.join(tmp, "X.npy"), rng.normal(size=(N, F)).astype(np.float32))
        np.save(os.path.join(tmp, "y.npy"), rng.integers(0, C, size=N).astype(np.int64))
        Xm = np.load(os.path.join(tmp, "X.npy"), mmap_mode="r")
        ym = np.load(os.path.join(tmp, "y.npy"), mmap_mode="r")
        X, y = np.array(Xm), np.array(ym)
        data_bytes = X.nbytes + y.nbytes
        budget = data_bytes // 4
        rows = []
        for name in args.backends.split(","):
            nnxp.set_backend(*name.split(":", 1))
            for shuffle in (True, False):
                best = {"memory": np.inf, "stream": np.inf}
                setup = np.inf
                for _ in range(args.rounds):
                    nnxp.set_memory_budget(None)
                    epoch, _ = _fit({"seed": 0}, X, y, shuffle=shuffle)
                    best["memory"] = min(best["memory"], epoch)
                    nnxp.set_memory_budget(budget)
                    epoch, extra = _fit({"seed": 0}, Xm, ym, shuffle=shuffle)
                    best["stream"] = min(best["stream"], epoch)
                    setup = min(setup, extra)
                    nnxp.set_memory_budget(None)
                data_path = _data_path(Xm, ym, budget, shuffle, args.rounds)
                rows.append({"backend": name, "shuffle": shuffle, "data_path_s": data_path,
                             "memory_s": best["memory"], "stream_s": best["stream"],
                             "ratio": best["stream"] / best["memory"], "stream_setup_s": setup})
                print(rows[-1], flush=True)
        nnxp.set_backend("numpy")
    chunk_rows = nnxp.data.default_chunk_rows(F * 4 + 8, budget, BATCH)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "nnxp": nnxp.__version__, "threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "rounds": args.rounds, "n": N, "features": F,
            "hidden": HIDDEN, "classes": C, "batch_size": BATCH, "data_bytes": data_bytes,
            "budget_bytes": budget, "chunk_rows": chunk_rows, "n_chunks": -(-N // chunk_rows)}
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = [
        "# Streaming a memory-mapped data set 4x larger than the device budget (issue 11)", "",
        f"{N}x{F} float32 + int64 labels = {data_bytes / 2**20:.1f} MiB in a .npy memory map; "
        f"budget {budget / 2**20:.1f} MiB (nnxp.set_memory_budget), so chunks of "
        f"{chunk_rows} rows ({meta['n_chunks']} per epoch); MLP {F}-{HIDDEN}-{C} relu, SGD, "
        f"batch {BATCH}; fastest epoch of {args.rounds} rounds x 2 epochs. "
        "Produced by `benchmarks/streaming.py`.", "",
        ", ".join(f"{k} {meta[k]}" for k in ("machine", "cpus", "python", "numpy", "torch",
                                             "nnxp", "threads") if k in meta), "",
        "| backend | shuffle | in memory s/epoch | streamed s/epoch | streamed / in memory | "
        "data path alone s/epoch (/ in memory) | streamed set-up s (one checking pass) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['shuffle']} | {r['memory_s']:.3f} | "
                     f"{r['stream_s']:.3f} | {r['ratio']:.2f} | {r['data_path_s']:.3f} "
                     f"({r['data_path_s'] / r['memory_s']:.2f}) | {r['stream_setup_s']:.3f} |")
    lines += ["", "The machine is shared (other jobs ran meanwhile): ratios within about 0.3 of 1 "
              "are within the round-to-round noise seen here. The data-path column (the "
              "stream's batches of one epoch without any training step: reading the memory "
              "map, shuffling within chunks, casting, copying) is the load-independent part "
              "of the overhead.", "",
              "CPU backends only: the device is the host, so the copy is a host copy and "
              "nothing overlaps. The GPU rows (cupy, torch CUDA: pinned buffers and a second "
              "stream, the copy of the next chunk overlapping with compute) need a GPU run: "
              "`PYTHONPATH=. python benchmarks/streaming.py --backends torch:cuda,cupy`."]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
