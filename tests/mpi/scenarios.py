"""Fault, mismatch, resume and torch scenarios for ``mpiexec -n 2``; the first argument names
one. Each prints ``DONE <scenario>`` on rank 0 when it finishes normally."""

import os
import sys

import numpy as np
from mpi4py import MPI

import nnxp
from nnxp.callbacks import Callback, ModelCheckpoint
from nnxp.distributed import DataParallel, DistributedError
from nnxp.layers import Dense, ReLU

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
scenario = sys.argv[1]
rng = np.random.default_rng(0)
X = rng.normal(size=(64, 5))
y = rng.integers(0, 2, size=64)


def model(width=8):
    return nnxp.Sequential([Dense(5, width, dtype="float64"), ReLU(),
                            Dense(width, 2, dtype="float64")], seed=3)


class RaiseOnRank1(Callback):
    def on_epoch_end(self, epoch, logs):
        if rank == 1 and epoch == 2:
            raise RuntimeError("injected failure")


class DieOnRank1(Callback):
    def on_epoch_end(self, epoch, logs):
        if rank == 1 and epoch == 2:
            os._exit(3)  # no clean-up, no MPI_Finalize: a crashed process


class HangOnRank1(Callback):
    def on_epoch_end(self, epoch, logs):
        if rank == 1 and epoch == 2:
            import time
            time.sleep(60)


if scenario == "raise":
    model().fit(X, y, epochs=5, batch_size=8, verbose=0, callbacks=[RaiseOnRank1()],
                distributed=True)
elif scenario == "die":
    model().fit(X, y, epochs=5, batch_size=8, verbose=0, callbacks=[DieOnRank1()],
                distributed=True)
elif scenario == "hang":
    model().fit(X, y, epochs=5, batch_size=8, verbose=0, callbacks=[HangOnRank1()],
                distributed=DataParallel(timeout=3))
elif scenario in ("model", "data"):
    m = model(width=9 if scenario == "model" and rank == 1 else 8)
    Xr = X[:60] if scenario == "data" and rank == 1 else X
    try:
        m.fit(Xr, y[:Xr.shape[0]], epochs=1, batch_size=8, verbose=0, distributed=True)
    except DistributedError as exc:
        print(f"rank {rank}: {exc}", flush=True)
    comm.Barrier()
elif scenario == "resume":
    path = sys.argv[2]
    full = model()
    full.fit(X, y, epochs=4, batch_size=8, verbose=0, distributed=True,
             optimizer=nnxp.optim.Adam(lr=0.01))
    first = model()
    first.fit(X, y, epochs=2, batch_size=8, verbose=0, distributed=True,
              optimizer=nnxp.optim.Adam(lr=0.01),
              callbacks=[ModelCheckpoint(path)])
    comm.Barrier()
    assert os.path.exists(path)
    resumed = model()
    resumed.fit(X, y, epochs=4, batch_size=8, verbose=0, distributed=True, resume_from=path)
    for a, b in zip(full.layers, resumed.layers):
        for k in a.params:
            assert np.array_equal(np.asarray(a.params[k]), np.asarray(b.params[k])), \
                f"rank {rank}: resumed run differs at {k}"
elif scenario == "torch":
    with nnxp.use_backend("torch"):
        m = model()
        h = m.fit(X, y, epochs=2, batch_size=8, verbose=0, distributed=True)
        with nnxp.use_backend("torch"):
            ref = model()
        if rank == 0:
            ref.fit(X, y, epochs=2, batch_size=16, verbose=0)
            d = max(float(np.max(np.abs(nnxp.backend.to_numpy(a.params[k])
                                        - nnxp.backend.to_numpy(b.params[k]))))
                    for a, b in zip(m.layers, ref.layers) for k in a.params)
            print(f"torch max_abs_diff={d:.3g}", flush=True)
            assert d < 1e-12
if rank == 0:
    print(f"DONE {scenario}", flush=True)
