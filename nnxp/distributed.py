"""Data-parallel training on MPI: ``fit(..., distributed=True)`` under ``mpiexec -n N``.

Every rank holds a full replica of the model and the full data set; each epoch's shuffled
order is drawn identically on every rank (rank 0's shuffling generator is broadcast at
start-up), and every *global* batch of ``N * batch_size`` consecutive positions of that order
is split into ``N`` disjoint, contiguous shards, rank ``r`` taking the ``r``-th. After the
backward pass the gradients are averaged so that every rank holds the gradient of the loss
over the global batch, and every rank applies the same optimizer step: the replicas stay
identical, and the run computes what one process computes with ``batch_size * N`` (to
floating-point rounding: the sums over the batch are split in ``N`` parts).

Averaging. A local gradient is the mean over the ``n_r`` local samples; it is scaled by
``n_r / N_b`` (``N_b`` the global batch) and the scaled gradients are summed across ranks,
which is the mean over the global batch even when the last batch does not split evenly. The
parameters are packed, last layer first, into buckets of at most ``bucket_mb`` MiB (one flat
buffer when the model is smaller, as every MLP here is); a bucket is packed and its
``MPI_Iallreduce`` started as soon as the backward pass has produced the gradients of its
last-needed layer, so communication overlaps the backward of the earlier layers where the
MPI library progresses non-blocking collectives in the background (MPICH and Open MPI
progress them mostly inside MPI calls: the overlap on CPU is small; see
``docs/distributed.md``).

Batch normalisation uses per-rank batch statistics (like ``torch.nn.parallel.
DistributedDataParallel`` without ``SyncBatchNorm``); the running statistics are averaged
across ranks at the end of every epoch, so the replicas evaluate and save identically.

Faults. Every wait is bounded: collectives are polled against ``timeout`` seconds, and an
exception on one rank (or a timeout) prints the rank and the error and calls ``MPI_Abort``,
which makes ``mpiexec`` stop every rank; mismatched models, data or options are detected at
start-up on every rank, and the error names the rank that differs.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterator
from typing import Any

from . import backend
from .accumulation import GradientSum, part_bounds, share
from .typing import Array

__all__ = ["DataParallel", "DistributedError", "Replica", "rank", "world_size"]

_MISSING = ("nnxp.distributed needs mpi4py and an MPI library: pip install 'nnxp[mpi]' "
            "(mpi4py and mpich), then launch with mpiexec -n N")


class DistributedError(RuntimeError):
    """Ranks disagree (model, data, options) or one of them stopped answering."""


def _mpi() -> Any:
    try:
        from mpi4py import MPI  # noqa: PLC0415 - optional: the mpi extra
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"{_MISSING} ({exc})") from exc
    return MPI


def rank() -> int:
    """This process's rank in ``MPI.COMM_WORLD`` (imports mpi4py)."""
    return int(_mpi().COMM_WORLD.Get_rank())


def world_size() -> int:
    """The number of ranks in ``MPI.COMM_WORLD`` (imports mpi4py)."""
    return int(_mpi().COMM_WORLD.Get_size())


class DataParallel:
    """The options of data-parallel training; ``fit(distributed=True)`` uses the defaults.

    Parameters
    ----------
    timeout
        Seconds any rank waits for the others at a collective before it aborts the job
        (default 300, or the ``NNXP_DIST_TIMEOUT`` environment variable).
    bucket_mb
        Largest gradient bucket in MiB (default 25, as torch DDP); a layer is never split.
    comm
        An mpi4py communicator (default ``MPI.COMM_WORLD``).
    abort_on_error
        Abort every rank when one raises (the default; otherwise the exception propagates
        on that rank only, and the others stop at their next collective's timeout).
    """

    def __init__(self, *, timeout: float | None = None, bucket_mb: float = 25.0,
                 comm: Any = None, abort_on_error: bool = True) -> None:
        if timeout is None:
            timeout = float(os.environ.get("NNXP_DIST_TIMEOUT", "300"))
        if not timeout > 0 or not bucket_mb > 0:
            raise ValueError(f"timeout and bucket_mb must be positive, got {timeout}, "
                             f"{bucket_mb}")
        self.timeout = float(timeout)
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.comm = comm
        self.abort_on_error = bool(abort_on_error)

    def __repr__(self) -> str:
        return (f"DataParallel(timeout={self.timeout}, bucket_mb="
                f"{self.bucket_bytes / 2**20:g})")


def _digest(arrays: list[Any]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        host = backend.to_numpy(a)
        h.update(str((host.shape, str(host.dtype))).encode())
        h.update(host.tobytes())
    return h.hexdigest()[:16]


class Replica:
    """One rank's side of data-parallel training; made by ``fit`` (see the module docstring)."""

    def __init__(self, model: Any, X: Array, y: Array, *, optimizer: Any, batch_size: int,
                 epochs: int, shuffle: bool, sample_weight: Any, resumed: bool,
                 options: DataParallel | None = None, verbose: int = 0,
                 accumulate: int = 1) -> None:
        opts = options if options is not None else DataParallel()
        self.MPI = MPI = _mpi()
        self.comm = opts.comm if opts.comm is not None else MPI.COMM_WORLD
        self.rank, self.size = int(self.comm.Get_rank()), int(self.comm.Get_size())
        self.timeout, self.abort_on_error = opts.timeout, opts.abort_on_error
        self.model = model
        self.comm_seconds = 0.0  # time spent waiting for gradient all-reduces (this rank)
        self.steps = 0
        if getattr(optimizer, "requires_closure", False):
            raise ValueError(f"distributed training needs a first-order optimizer; "
                             f"{type(optimizer).__name__} re-evaluates the loss in a closure")
        self._rendezvous("start-up")
        self._check_same(model, X, y, optimizer=optimizer, batch_size=batch_size,
                         epochs=epochs, shuffle=shuffle, sample_weight=sample_weight,
                         accumulate=accumulate)
        self._broadcast_state(model, resumed)
        self._plan_buckets(model, opts.bucket_bytes)
        self.path = self._choose_transport(model)
        if self.rank == 0 and verbose:
            print(f"nnxp.distributed: {self.size} ranks, per-rank batch {batch_size} (global "
                  f"{batch_size * self.size}); gradients in {len(self.buckets)} bucket(s) of "
                  f"<= {opts.bucket_bytes / 2**20:g} MiB via {self.path}", file=sys.stderr)
        self._local = self._global = 0
        self._pending: list[tuple[Any, Any, int]] = []
        self._shards: deque[tuple[int, int]] = deque()  # (local, global) sizes not yet stepped

    # --- start-up ---------------------------------------------------------------------------

    def _rendezvous(self, what: str) -> None:
        """Every rank reaches this point within ``timeout`` seconds, or this rank aborts."""
        self._wait([self.comm.Ibarrier()], what)

    def _wait(self, requests: list[Any], what: str) -> None:
        MPI = self.MPI
        deadline = time.monotonic() + self.timeout
        pause = 0.0
        while not MPI.Request.Testall(requests):
            if time.monotonic() > deadline:
                self.fail(DistributedError(
                    f"nnxp.distributed: rank {self.rank} waited {self.timeout:g} s at {what}: "
                    "another rank has stopped, hung or died"))
            time.sleep(pause)
            pause = min(pause * 2 or 1e-5, 1e-3)

    def _check_same(self, model: Any, X: Array, y: Array, **options: Any) -> None:
        n_check = min(X.shape[0], 1024)
        optimizer = options.pop("optimizer")
        sw = options.pop("sample_weight")
        mine = {
            "model": [(type(layer).__name__,
                       [(k, tuple(p.shape), backend.dtype_name(p.dtype))
                        for k, p in layer.params.items()]) for layer in model.layers],
            "loss": repr(model.loss),
            "data": (tuple(X.shape), tuple(y.shape), backend.dtype_name(X.dtype),
                     _digest([X[:n_check, ...], y[:n_check, ...]])),
            "sample weights": None if sw is None else _digest([sw]),
            "optimizer": (type(optimizer).__name__, repr(optimizer.get_config())),
            "options": repr(sorted(options.items())),
            "backend": backend.backend_name_of(X),
        }
        everyone = self.comm.allgather(mine)
        for r, theirs in enumerate(everyone):
            for key, value in theirs.items():
                if value != everyone[0][key]:
                    raise DistributedError(
                        f"nnxp.distributed: rank {r} disagrees with rank 0 on the {key}: "
                        f"{value!r} on rank {r}, {everyone[0][key]!r} on rank 0")

    def _arrays(self, model: Any) -> list[tuple[dict[str, Any], str]]:
        return [(store, k) for layer in model.layers
                for store in (layer.params, getattr(layer, "buffers", None) or {})
                for k in store]

    def _broadcast_state(self, model: Any, resumed: bool) -> None:
        """Rank 0's weights, buffers and shuffling generator on every rank, checked equal."""
        slots = self._arrays(model)
        before = self.comm.allgather(_digest([store[k] for store, k in slots]))
        if resumed and len(set(before)) > 1:
            bad = next(r for r, d in enumerate(before) if d != before[0])
            raise DistributedError(f"nnxp.distributed: rank {bad} restored different weights "
                                   "from the checkpoint than rank 0")
        xp, device = model.xp, model.device
        for store, k in slots:
            host = backend.to_numpy(store[k]).copy()
            self.comm.Bcast(host, root=0)
            store[k] = backend.asarray(host, xp=xp, device=device)
        model.data_rng.state = self.comm.bcast(model.data_rng.state, root=0)
        after = self.comm.allgather(_digest([store[k] for store, k in slots]))
        if len(set(after)) > 1:
            bad = next(r for r, d in enumerate(after) if d != after[0])
            raise DistributedError(f"nnxp.distributed: rank {bad} holds different weights "
                                   "from rank 0 after the broadcast")
        self.initial_weights_differed = len(set(before)) > 1

    def _plan_buckets(self, model: Any, cap: int) -> None:
        """Buckets of whole layers, last layer first: ``[[(layer, key, shape, size)...]]``;
        ``trigger[id(layer)]`` is the bucket a layer completes (its earliest layer)."""
        self.buckets: list[list[tuple[Any, str, tuple[int, ...], int]]] = []
        self.trigger: dict[int, int] = {}
        current: list[tuple[Any, str, tuple[int, ...], int]] = []
        nbytes = 0
        last_layer = None
        for layer in reversed(model.layers):
            if not layer.params:
                continue
            entries = [(layer, k, tuple(p.shape), math.prod(p.shape))
                       for k, p in layer.params.items()]
            size = sum(e[3] * backend.itemsize(layer.params[e[1]].dtype) for e in entries)
            if current and nbytes + size > cap:
                self.buckets.append(current)
                self.trigger[id(last_layer)] = len(self.buckets) - 1
                current, nbytes = [], 0
            current += entries
            nbytes += size
            last_layer = layer
        if current:
            self.buckets.append(current)
            self.trigger[id(last_layer)] = len(self.buckets) - 1

    def _choose_transport(self, model: Any) -> str:
        """NCCL for cupy models when CuPy's NCCL bindings load on every rank; else direct
        buffers (numpy, torch CPU, array-api-strict on the CPU, CUDA arrays with a CUDA-aware
        MPI); else staging through host memory. The path is returned to log."""
        xp, device = model.xp, model.device
        name = backend.backend_name_of(model.layers[-1].params[next(iter(
            model.layers[-1].params))]) if model.layers[-1].params else "numpy"
        on_gpu = "cuda" in str(device).lower() or name == "cupy"
        self.direct = False
        self.nccl: Any = None
        if name == "cupy" and all(self.comm.allgather(backend.nccl_available())):
            self.nccl = self._nccl_communicator(model)
            self.direct = True
            return f"NCCL ({name}, CuPy's cupy.cuda.nccl, on the current CUDA stream)"
        cuda_aware = bool(getattr(self.MPI, "Query_cuda_support", lambda: False)())
        if not on_gpu or cuda_aware:
            probe = xp.ones((2,), dtype=model.dtype, device=device)
            try:
                self.comm.Allreduce(self.MPI.IN_PLACE, probe, op=self.MPI.SUM)
                self.direct = True
            except Exception:  # no buffer protocol / DLPack for this array: stage
                self.direct = False
            flags = self.comm.allgather(self.direct)
            self.direct = all(flags)
        if self.direct:
            return f"direct MPI buffers ({name}{', CUDA-aware MPI' if on_gpu else ''})"
        return f"host staging ({name}: copied to host memory and back every step)"

    def _nccl_communicator(self, model: Any) -> Any:
        """Rank 0 makes the NCCL unique id, MPI broadcasts it, every rank joins with it on the
        model's GPU. ``NcclCommunicator`` blocks until all ranks have joined; the rendezvous
        before it bounds the wait for a rank that never arrives."""
        uid = backend.nccl_unique_id() if self.rank == 0 else None
        uid = self.comm.bcast(uid, root=0)
        self._rendezvous("the NCCL set-up")
        with backend.device_scope(model.xp, model.device):
            return backend.nccl_communicator(self.size, uid, self.rank)

    # --- the step ---------------------------------------------------------------------------

    def batches(self, X: Array, y: Array, batch_size: int, w: Array | None,
                order: Array | None, *, xp: Any) -> Iterator[tuple[Array, Array, Array | None]]:
        """This rank's shard of every global batch of ``size * batch_size`` positions."""
        n, g = X.shape[0], batch_size * self.size
        take = backend.row_taker(xp)  # a permutation's indices are non-negative
        self._shards.clear()
        for start in range(0, n, g):
            m = min(start + g, n) - start
            lo, hi = (start + b for b in part_bounds(m, self.size, self.rank))
            self._local, self._global = hi - lo, m
            self._shards.append((hi - lo, m))
            if order is None:
                yield X[lo:hi, ...], y[lo:hi, ...], None if w is None else w[lo:hi]
            else:
                idx = order[lo:hi]
                yield take(X, idx), take(y, idx), None if w is None else take(w, idx)

    def step(self, model: Any, xb: Array, yb: Array, optimizer: Any,
             before_update: Any = None, wb: Array | None = None) -> tuple[Array, Array]:
        """``training._step`` with the gradients averaged across ranks before the update."""
        xp = model.xp
        self._pending = []
        if self._local == 0:  # a short last batch left this rank nothing: contribute zeros
            out = model.forward(xb, training=False)
            value = _zero_contribution(model, self.layer_ready)
        else:
            out = model.forward(xb, training=True)
            value, cache = model.loss.forward(  # weights checked once in fit
                out, yb, xp=xp, sample_weight=wb, validate_sample_weight=False)
            if model.has_penalty:
                value = value + model.penalty()
            model.backward(model.loss.backward(cache, xp=xp), need_input_grad=False,
                           on_layer_grads=self.layer_ready)
        self._shards.popleft()
        self._update(model, value, optimizer, before_update)
        return value, out

    def accumulated_step(self, model: Any, micro: list[tuple[Array, Array, Array | None]],
                         optimizer: Any, before_update: Any = None,
                         ) -> tuple[Array, list[Array]]:
        """``fit(accumulate=k, distributed=...)``: this rank's shards of ``k`` global batches
        summed locally with the weights ``n_rj / N`` (``N`` the samples of the whole step on
        every rank), then one all-reduce of the sum and one update. The loss returned is this
        rank's mean over its samples of the step (the epoch's logs weight it by them)."""
        xp = model.xp
        sizes = [self._shards.popleft() for _ in micro]
        total = sum(m for _, m in sizes)
        local = sum(n for n, _ in sizes)
        grads = GradientSum(model, total)
        value: Array | None = None
        outs: list[Array] = []
        for (xb, yb, wb), (n, _) in zip(micro, sizes):
            if n == 0:  # a short last batch left this rank nothing
                outs.append(model.forward(xb, training=False))
                continue
            out = model.forward(xb, training=True)
            part, cache = model.loss.forward(  # weights checked once in fit
                out, yb, xp=xp, sample_weight=wb, validate_sample_weight=False)
            model.backward(model.loss.backward(cache, xp=xp), need_input_grad=False)
            grads.add(n)
            weighted = part * (n / local)
            value = weighted if value is None else value + weighted
            outs.append(out)
        if value is None:  # nothing on this rank in the whole step: contribute zeros
            value = _zero_contribution(model)
        else:
            grads.write()
        if model.has_penalty:
            value = value + model.penalty()
        self._pending = []
        self._local = self._global = 1  # the sum is weighted already: all-reduce it as it is
        for layer in reversed(model.layers):
            self.layer_ready(layer)
        self._update(model, value, optimizer, before_update)
        return value, outs

    def _update(self, model: Any, value: Array, optimizer: Any, before_update: Any) -> None:
        """The end of a step, once the backward pass has queued every bucket: wait for the
        all-reduced gradients, then ``before_update``, the update and the constraints."""
        self.finish()
        if before_update is not None:
            before_update(value)
        optimizer.step()
        model.apply_constraints()
        self.steps += 1

    def layer_ready(self, layer: Any) -> None:
        """Called by ``Sequential.backward`` after each layer: start the bucket it completes."""
        b = self.trigger.get(id(layer))
        if b is None:
            return
        xp = self.model.xp
        flat = xp.concat([xp.reshape(lay.grads[k], (-1,)) for lay, k, _, _ in self.buckets[b]])
        flat = flat * share(self._local, self._global)  # the exact mean: nnxp.accumulation
        if self.nccl is not None:  # enqueued on the current stream: see finish()
            self._pending.append((backend.nccl_allreduce_sum(self.nccl, flat), None, b))
            return
        buf = flat if self.direct else backend.to_numpy(flat).copy()
        self._pending.append((buf, self.comm.Iallreduce(self.MPI.IN_PLACE, buf,
                                                        op=self.MPI.SUM), b))

    def finish(self) -> None:
        """Wait for every bucket and write the averaged gradients back into ``layer.grads``.

        NCCL buckets have no request: the all-reduce is enqueued on the current CUDA stream, and
        the unpacking below and the optimizer step are enqueued after it on the same stream, so
        stream order makes them see the sum without the host waiting (no synchronisation)."""
        started = time.perf_counter()
        requests = [req for _, req, _ in self._pending if req is not None]
        if requests:
            self._wait(requests, f"the gradient all-reduce of step {self.steps + 1}")
        self.comm_seconds += time.perf_counter() - started
        xp, device = self.model.xp, self.model.device
        for buf, _, b in self._pending:
            flat = buf if self.direct else backend.asarray(buf, xp=xp, device=device)
            offset = 0
            for layer, k, shape, size in self.buckets[b]:
                layer.grads[k] = xp.reshape(flat[offset:offset + size], shape)
                offset += size
        self._pending = []

    # --- the epoch's logs -------------------------------------------------------------------

    def reduce_epoch(self, loss_sum: Array, states: list[Any], metrics: list[Any],
                     model: Any) -> tuple[Array, list[Any]]:
        """The summed loss and the metric states over every rank's shard (one gather); the
        batch-norm running statistics averaged across ranks."""
        xp, device = model.xp, model.device
        self._rendezvous("the end of the epoch")

        def host(state: Any) -> Any:
            if state is None:
                return None
            return tuple(backend.to_numpy(c) if backend.is_array(c) else c for c in state)

        mine = (backend.to_float(loss_sum), [host(s) for s in states])
        everyone = self.comm.allgather(mine)
        total = math.fsum(loss for loss, _ in everyone)
        merged: list[Any] = []
        for i, metric in enumerate(metrics):
            state = None
            for _, theirs in everyone:
                s = theirs[i]
                if s is None:
                    continue
                state = s if state is None else metric.merge(state, s)
            merged.append(None if state is None else tuple(
                xp.reshape(backend.asarray(c, xp=xp, device=device), tuple(c.shape))
                if hasattr(c, "shape") else c
                for c in state))
        for layer in model.layers:
            buffers = getattr(layer, "buffers", None) or {}
            for k in ("running_mean", "running_var"):
                if k in buffers:
                    h = backend.to_numpy(buffers[k]).copy()
                    self.comm.Allreduce(self.MPI.IN_PLACE, h, op=self.MPI.SUM)
                    buffers[k] = backend.asarray(h / self.size, xp=xp, device=device)
        return xp.asarray(total, dtype=xp.float64, device=device), merged

    # --- faults -----------------------------------------------------------------------------

    def fail(self, error: BaseException) -> None:
        """Report ``error`` with this rank and stop every rank (``MPI_Abort``)."""
        if not self.abort_on_error and not isinstance(error, DistributedError):
            raise error
        text = "".join(traceback.format_exception_only(type(error), error)).strip()
        print(f"nnxp.distributed: rank {self.rank} of {self.size} failed: {text}\n"
              f"nnxp.distributed: aborting all {self.size} ranks", file=sys.stderr, flush=True)
        # MPI_Abort makes the launcher kill every rank at once; give its output forwarder a
        # moment to read the message first (under load it was sometimes lost)
        time.sleep(0.5)
        self.comm.Abort(1)


def _zero_contribution(model: Any, ready: Any = None) -> Array:
    """A rank without samples in a step: zero gradients for every parameter (last layer
    first, announcing each layer to ``ready`` when given, as a backward pass would) and a 0-d
    zero loss, so that its all-reduce adds nothing."""
    xp = model.xp
    for layer in reversed(model.layers):
        for k, p in layer.params.items():
            layer.grads[k] = xp.zeros_like(p)
        if ready is not None:
            ready(layer)
    return xp.zeros((), dtype=model.dtype, device=model.device)
