"""Run under ``mpiexec -n 2``: data-parallel training equals one process with twice the batch.

Every rank trains distributed with per-rank batch ``B``; rank 0 then trains, alone, a fresh
copy with batch ``2 B`` on the same data and seed and compares the weights (float64).
Prints one line per optimizer: ``<name> max_abs_diff=<d>``; exits 1 when a difference
exceeds 1e-12. The ``accumulate`` lines: per-rank batch ``B`` with ``accumulate=2`` against one
process with batch ``4 B`` (one all-reduce per step of two micro-batches).
"""

import sys

import numpy as np
from mpi4py import MPI

import nnxp
from nnxp.layers import Dense, ReLU
from nnxp.optim import SGD, Adam

B = 8
# 100 = 6 global batches of 16 and a last one of 4; with argv[1] = 97 the last batch has one
# sample, so one rank has none in the last step (it contributes zero gradients)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
rng = np.random.default_rng(0)
X = rng.normal(size=(N, 6))
y = rng.integers(0, 3, size=N)
w = rng.uniform(0.5, 2.0, size=N)


def model():
    return nnxp.Sequential([Dense(6, 16, dtype="float64"), ReLU(),
                            Dense(16, 3, dtype="float64")], seed=1)


OPTS = {"sgd": lambda: SGD(lr=0.1), "momentum": lambda: SGD(lr=0.1, momentum=0.9),
        "adam": lambda: Adam(lr=0.01)}
comm = MPI.COMM_WORLD
worst = 0.0
CASES = [(name, make, weighted, 1) for name, make in OPTS.items() for weighted in (False, True)]
CASES += [("accumulate " + name, OPTS[name], True, 2) for name in ("momentum", "adam")]
for name, make, weighted, acc in CASES:
    m = model()
    h = m.fit(X, y, optimizer=make(), epochs=3, batch_size=B, verbose=0,
              sample_weight=w if weighted else None, distributed=True, accumulate=acc)
    if comm.Get_rank() == 0:
        ref = model()
        hr = ref.fit(X, y, optimizer=make(), epochs=3, batch_size=B * comm.Get_size() * acc,
                     verbose=0, sample_weight=w if weighted else None)
        d = max(float(np.max(np.abs(np.asarray(a.params[k]) - np.asarray(b.params[k]))))
                for a, b in zip(m.layers, ref.layers) for k in a.params)
        dl = max(abs(a - b) for a, b in zip(h["loss"], hr["loss"]))
        da = max(abs(a - b) for a, b in zip(h["accuracy"], hr["accuracy"]))
        print(f"{name}{' weighted' if weighted else ''} max_abs_diff={d:.3g} "
              f"loss_diff={dl:.3g} accuracy_diff={da:.3g}", flush=True)
        worst = max(worst, d, dl, da)
    # every rank holds the same weights
    mine = np.concatenate([np.asarray(p).ravel() for lay in m.layers
                           for p in lay.params.values()])
    other = comm.bcast(mine, root=0)
    assert np.array_equal(mine, other), f"rank {comm.Get_rank()} drifted from rank 0"
ok = comm.bcast(worst <= 1e-12, root=0)
if comm.Get_rank() == 0:
    print("OK" if ok else f"FAIL worst={worst}", flush=True)
sys.exit(0 if ok else 1)
