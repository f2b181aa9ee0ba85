"""Data-parallel row: the "big" MLP (784-1024-1024-10, float32, Adam, per-rank batch 256) on
numpy with one BLAS thread per rank, under ``mpiexec -n R``; and the all-reduce time of
messages from 8 B to 8 MiB, to fit the cost model of docs/distributed.md.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpiexec -n 2 python benchmarks/distributed.py

Rank 0 prints one JSON object: per-step time, the share of it spent waiting for the gradient
all-reduce, samples/s, and the measured all-reduce times.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from mpi4py import MPI

import nnxp
from nnxp.distributed import DataParallel
from nnxp.layers import Dense, ReLU

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
B, STEPS = 256, int(sys.argv[1]) if len(sys.argv) > 1 else 24
rng = np.random.default_rng(0)
X = rng.normal(size=(B * size * STEPS, 784)).astype(np.float32)
y = rng.integers(0, 10, size=X.shape[0])


def model() -> nnxp.Sequential:
    return nnxp.Sequential([Dense(784, 1024), ReLU(), Dense(1024, 1024), ReLU(),
                            Dense(1024, 10)], seed=0)


m = model()
m.fit(X[:B * size * 2], y[:B * size * 2], epochs=1, batch_size=B, verbose=0,
      optimizer=nnxp.optim.Adam(lr=1e-3), distributed=DataParallel())  # warm-up
opt = nnxp.optim.Adam(lr=1e-3)
comm.Barrier()
h = m.fit(X, y, epochs=2, batch_size=B, verbose=0, optimizer=opt, distributed=True)
step = min(h["epoch_time"]) / STEPS
# the replica of the last fit is not kept: time the gradient all-reduce on its own as well
n_params = m.count_params()
buf = np.zeros(n_params, dtype=np.float32)
times = {}
for nbytes in (8, 1024, 65536, 1 << 20, 8 << 20, buf.nbytes):
    a = np.zeros(max(nbytes // 4, 1), dtype=np.float32)
    reps = 20 if nbytes < (1 << 20) else 5
    comm.Barrier()
    t = time.perf_counter()
    for _ in range(reps):
        comm.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM)
    times[nbytes] = (time.perf_counter() - t) / reps
# the in-step communication wait, from a short instrumented run
from nnxp import training  # noqa: E402

captured = {}
orig = training.dist.Replica.finish


def finish(self):  # type: ignore[no-untyped-def]
    orig(self)
    captured["comm"], captured["steps"] = self.comm_seconds, self.steps + 1


training.dist.Replica.finish = finish
comm.Barrier()
h2 = m.fit(X, y, epochs=1, batch_size=B, verbose=0, optimizer=opt, distributed=True)
wait = captured["comm"] / captured["steps"]
if rank == 0:
    print(json.dumps({"ranks": size, "per_rank_batch": B, "params": n_params,
                      "grad_bytes": buf.nbytes, "step_s": step,
                      "samples_per_s": B * size / step,
                      "comm_wait_s": wait, "comm_share": wait / (h2["epoch_time"][0] / STEPS),
                      "allreduce_s": {str(k): v for k, v in times.items()}}))
