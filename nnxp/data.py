"""Data larger than device memory: memory-mapped arrays and chunked data sets, streamed.

``fit``, ``partial_fit``, ``predict``, ``predict_proba``, ``evaluate`` and ``validation_data``
accept, besides arrays:

* a NumPy memory map as ``X`` (``np.load(path, mmap_mode="r")`` or ``np.memmap``), with ``y``
  (and ``sample_weight``) as memory maps or in-memory arrays of the same length; it is cut
  into chunks of rows (:meth:`Chunks.from_arrays`, the chunk size chosen from the device
  budget);
* a :class:`Chunks`: an explicit sequence of parts, each ``X``, ``(X, y)`` or
  ``(X, y, sample_weight)``, every array a NumPy array, a memory map or the path of a ``.npy``
  file (opened as a memory map, read chunk by chunk).

Whether the data is streamed is decided once per call: when its bytes (in the model's dtype,
targets and weights included) are at most half of :func:`nnxp.backend.available_memory`
(the configured budget, :func:`nnxp.set_memory_budget`, and the free memory the GPU
library reports, the smaller of the two) — or when neither is known (CPU backends without a
budget) — it is read once and moved to the device as an in-memory array would be. Otherwise a
:class:`Stream` copies one chunk at a time, the copy of the next overlapping with compute on
cupy and torch CUDA (:func:`nnxp.backend.chunk_uploader`).

The epoch order of a stream (``shuffle=True``) is documented in :meth:`Stream.epoch_plan`;
batches run across chunk boundaries (see :meth:`Stream.batches`), so with ``shuffle=False`` a
streamed epoch is, batch for batch, the in-memory one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

from . import backend
from .typing import Array
from .validation import check_features, check_positive

__all__ = ["Chunks", "Stream", "prepare", "is_streamable", "DATA_SHARE"]

DATA_SHARE = 0.5
"""Data up to this fraction of the available device memory is moved to the device whole; the
rest of the memory is left to parameters, gradients, optimizer state and activations."""

CHUNK_SHARE = 1 / 8
"""A memory map's default chunk takes at most this fraction of the available device memory
(two chunks are on the device at once while the next one is copied)."""

DEFAULT_CHUNK_ROWS = 65536
"""Rows per chunk of a memory map when no device memory is known (no budget, CPU backend) and
the data is streamed anyway (``Chunks.from_arrays`` without ``chunk_size``)."""


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _host(x: Any) -> Any:
    """Targets or weights given beside a memory map: NumPy arrays and memory maps as they are,
    anything else (lists, other libraries' arrays) brought to the host."""
    return x if x is None or backend.host_info(x) is not None else backend.host_array(x)


def _open(x: Any, what: str) -> Any:
    """A part's array: paths opened as memory maps; host NumPy arrays kept; anything else is an
    error (a device array is not streamed: it is already on a device)."""
    if _is_path(x):
        return backend.open_npy(x)
    if backend.host_info(x) is None:
        raise TypeError(f"{what} must be a NumPy array, a memory map or the path of a .npy file, "
                        f"got {type(x).__name__}")
    return x


class Chunks:
    """A data set given as a sequence of chunks, streamed to the device one at a time.

    Parameters
    ----------
    parts
        A non-empty sequence; each item is ``X``, ``(X, y)`` or ``(X, y, sample_weight)``, every
        array a NumPy array, a memory map, or a path (``str`` / ``os.PathLike``) to a ``.npy``
        file, opened with ``mmap_mode="r"`` (nothing is read until the chunk is needed). All
        parts have the same form (all with ``y`` or none, all with weights or none) and the same
        number of features; ``X`` is 2-D ``(rows, n_features)``; ``y`` has the part's number of
        rows first; weights are 1-D, one per row.

    Notes
    -----
    A part is the unit of transfer: its arrays are read, cast to the model's dtype on the host
    and copied to the device together (one host-to-device copy per array per part), so a part
    should hold many batches. Construction reads only the ``.npy`` headers; the model-dependent
    checks (feature count, dtype, target values, finiteness) run when ``fit`` / ``predict``
    receive the chunks, before any training step.
    """

    def __init__(self, parts: Sequence[Any]) -> None:
        if isinstance(parts, (str, bytes, os.PathLike)) or not isinstance(parts, Sequence) \
                or backend.host_info(parts) is not None:
            raise TypeError("Chunks(parts): parts must be a list or tuple of chunks (X, (X, y) "
                            f"or (X, y, sample_weight)), got {type(parts).__name__}")
        if len(parts) == 0:
            raise ValueError("Chunks(parts): parts is empty; give at least one chunk")
        self.parts: list[tuple[Any, Any, Any]] = []
        arity = None
        for i, part in enumerate(parts):
            items = tuple(part) if isinstance(part, (tuple, list)) else (part,)
            if not 1 <= len(items) <= 3:
                raise ValueError(f"Chunks: part {i} must be X, (X, y) or (X, y, sample_weight), "
                                 f"got a sequence of {len(items)} items")
            if arity is None:
                arity = len(items)
            elif len(items) != arity:
                raise ValueError(f"Chunks: every part must have the same form; part 0 has "
                                 f"{arity} item(s), part {i} has {len(items)}")
            names = ("X", "y", "sample_weight")
            arrays = [_open(a, f"Chunks part {i} {names[j]}") for j, a in enumerate(items)]
            arrays += [None] * (3 - len(arrays))
            self.parts.append((arrays[0], arrays[1], arrays[2]))
        self._check_shapes()

    @classmethod
    def from_arrays(cls, X: Any, y: Any = None, sample_weight: Any = None, *,
                    chunk_size: int | None = None) -> Chunks:
        """Row ranges of ``X`` (and ``y``, ``sample_weight``) of ``chunk_size`` rows each (the last
        may be shorter), as views: slicing a memory map reads nothing.

        ``chunk_size=None`` takes :data:`DEFAULT_CHUNK_ROWS`; ``fit`` and ``predict`` choose it
        from the device memory instead (see :func:`default_chunk_rows`).
        """
        rows = DEFAULT_CHUNK_ROWS if chunk_size is None else chunk_size
        check_positive(rows, argument="chunk_size", integer=True)
        arrays = [_open(a, name) for a, name in ((X, "X"), (y, "y"), (sample_weight,
                                                                        "sample_weight"))
                  if a is not None]
        if y is None and sample_weight is not None:
            raise ValueError("Chunks.from_arrays: sample_weight needs y")
        shapes = [backend.host_info(a) for a in arrays]
        if len(shapes[0][0]) == 0:  # type: ignore[index]
            raise ValueError("X must be 2-D (n_samples, n_features), got a 0-d array")
        n = shapes[0][0][0]  # type: ignore[index]
        for name, info in zip(("y", "sample_weight"), shapes[1:]):
            if len(info[0]) == 0 or info[0][0] != n:  # type: ignore[index]
                raise ValueError(f"{name} must have one row per sample of X: expected {n} rows, "
                                 f"got shape {info[0]}")  # type: ignore[index]
        starts = range(0, n, rows) if n else range(1)
        return cls([tuple(a[s:min(s + rows, n)] for a in arrays) for s in starts])

    # --- what the parts hold (from headers: nothing is read) -----------------------------

    def _check_shapes(self) -> None:
        width = None
        for i, (X, y, w) in enumerate(self.parts):
            shape, dtype = backend.host_info(X)  # type: ignore[misc]
            if len(shape) != 2:
                raise ValueError(f"Chunks part {i} X must be 2-D (rows, n_features), got shape "
                                 f"{shape}")
            if width is None:
                width = shape[1]
            elif shape[1] != width:
                raise ValueError(f"Chunks part {i} X has {shape[1]} features per row, but part 0 "
                                 f"has {width}: every chunk must have the same width")
            for name, a in (("y", y), ("sample_weight", w)):
                if a is None:
                    continue
                a_shape, _ = backend.host_info(a)  # type: ignore[misc]
                if len(a_shape) == 0 or a_shape[0] != shape[0]:
                    raise ValueError(f"Chunks part {i} {name} must have {shape[0]} rows (one per "
                                     f"row of its X), got shape {a_shape}")
                if name == "sample_weight" and len(a_shape) != 1:
                    raise ValueError(f"Chunks part {i} sample_weight must be 1-D ({shape[0]},), "
                                     f"got shape {a_shape}")

    @property
    def lengths(self) -> list[int]:
        """Rows per part."""
        return [backend.host_info(X)[0][0] for X, _, _ in self.parts]  # type: ignore[index]

    @property
    def n_samples(self) -> int:
        return sum(self.lengths)

    @property
    def n_features(self) -> int:
        return backend.host_info(self.parts[0][0])[0][1]  # type: ignore[index]

    @property
    def has_targets(self) -> bool:
        return self.parts[0][1] is not None

    @property
    def has_weights(self) -> bool:
        return self.parts[0][2] is not None

    def __len__(self) -> int:
        return len(self.parts)

    def __repr__(self) -> str:
        form = "X" + (", y" if self.has_targets else "") + (", w" if self.has_weights else "")
        return (f"Chunks({len(self.parts)} parts of ({form}), {self.n_samples} samples, "
                f"{self.n_features} features)")

    def nbytes(self, itemsize: int) -> int:
        """Bytes of the data once cast to floats of ``itemsize`` bytes (targets as they are
        stored, at least 8 bytes for labels that become int64)."""
        return sum(self.part_nbytes(itemsize))

    def part_nbytes(self, itemsize: int) -> list[int]:
        """:meth:`nbytes` of each part."""
        sizes = []
        for X, y, w in self.parts:
            shape, _ = backend.host_info(X)  # type: ignore[misc]
            total = shape[0] * shape[1] * itemsize
            if y is not None:
                y_shape, _ = backend.host_info(y)  # type: ignore[misc]
                total += math.prod(y_shape) * 8
            if w is not None:
                total += shape[0] * itemsize
            sizes.append(total)
        return sizes


def is_streamable(X: Any) -> bool:
    """Whether ``X`` takes the streaming path: a :class:`Chunks` or a memory map."""
    return isinstance(X, Chunks) or backend.is_memory_map(X)


def default_chunk_rows(row_bytes: int, available: int | None, batch_size: int | None) -> int:
    """Rows per chunk of a memory map: at most :data:`CHUNK_SHARE` of ``available`` bytes
    (:data:`DEFAULT_CHUNK_ROWS` when unknown), rounded down to a whole number of batches when
    it holds at least one, so that no batch runs across two chunks (a smaller chunk stays
    smaller: batches then gather the rows of several chunks on the device)."""
    rows = DEFAULT_CHUNK_ROWS if available is None else max(1, int(available * CHUNK_SHARE)
                                                            // max(row_bytes, 1))
    if batch_size is not None and rows >= batch_size:
        rows = rows // batch_size * batch_size
    return rows


# ----------------------------------------------------------------------------------------------
# Checking the data against a model, and deciding whether it fits
# ----------------------------------------------------------------------------------------------


def _check_meta(chunks: Chunks, *, n_features: int | None, dtype: Any, argument: str) -> None:
    """The checks that need only the headers: width and dtype of X against the model."""
    if n_features is not None and chunks.n_features != n_features:
        raise ValueError(f"{argument} has {chunks.n_features} features per sample but the model "
                         f"expects {n_features}")
    target = backend.dtype_name(dtype)
    for i, (X, _, w) in enumerate(chunks.parts):
        for name, a in (("", X), (" sample_weight", w)):
            if a is None:
                continue
            got = backend.host_info(a)[1]  # type: ignore[index]
            if not backend.can_cast_safely(got, target):
                where = f" (chunk {i})" if len(chunks) > 1 else ""
                raise TypeError(f"{argument}{name}{where} must hold real numbers that cast "
                                f"safely to the model's {target}, got dtype {got}")


class _Host:
    """The host namespace and the model's dtype there (for the per-chunk checks)."""

    def __init__(self, dtype: Any) -> None:
        self.xp = backend.host_namespace()
        self.dtype = backend.resolve_dtype(backend.dtype_name(dtype), self.xp)


def prepare(model: Any, X: Any, y: Any = None, sample_weight: Any = None, *,
            targets: bool = True, batch_size: int | None = None,
            argument: str = "X", memory_budget: Any = None) -> tuple[Any, Any, Any]:
    """Streamable data (:func:`is_streamable`) checked against ``model``: ``(Stream, None,
    None)`` when it does not fit the device, else the host arrays ``(X, y, w)`` to go the
    in-memory way (a memory map that fits is returned as it is; the parts of a
    :class:`Chunks` are read and joined).

    Everything about the data is checked here, before any training step: shapes and dtypes
    from the headers first; then, for a stream, one pass over the chunks on the host (one
    chunk in memory at a time) checks the values — finite features, valid targets, finite
    non-negative weights — as the in-memory checks would.
    """
    if isinstance(X, Chunks):
        if y is not None:
            raise TypeError(f"{argument} is an nnxp.data.Chunks: give the targets inside its "
                            "parts, (X, y), not as y")
        if sample_weight is not None:
            raise TypeError("sample_weight cannot be given with an nnxp.data.Chunks: put the "
                            "weights inside its parts, (X, y, sample_weight)")
        chunks = X
        if targets and not chunks.has_targets:
            raise ValueError(f"{argument} is an nnxp.data.Chunks without targets: training and "
                             "evaluation need parts (X, y)")
    else:
        info = backend.host_info(X)
        if info is not None and len(info[0]) != 2:
            hint = " (reshape a single sample with x[None, :])" if len(info[0]) == 1 else ""
            raise ValueError(f"{argument} must be 2-D (n_samples, n_features), got a memory map "
                             f"of shape {info[0]}{hint}")
        if targets and y is None:
            raise TypeError("y is required, got None")
        if targets:
            y = _host(y)
            sample_weight = None if sample_weight is None else _host(sample_weight)
        else:
            y = sample_weight = None
        whole = info[0][0] if info is not None else 1
        chunks = Chunks.from_arrays(X, y, sample_weight,
                                    chunk_size=max(whole, 1))  # one part; re-cut below
    _check_meta(chunks, n_features=model.n_features, dtype=model.dtype, argument=argument)
    itemsize = backend.itemsize(model.dtype)
    available = backend.available_memory(memory_budget, xp=model.xp, device=model.device).nbytes
    fits = available is None or chunks.nbytes(itemsize) <= available * DATA_SHARE
    if fits:
        if not isinstance(X, Chunks):
            return X, y, sample_weight
        return _join(chunks, model.dtype)
    if not isinstance(X, Chunks):
        row_bytes = chunks.nbytes(itemsize) // max(chunks.n_samples, 1)
        chunks = Chunks.from_arrays(
            X, y, sample_weight, chunk_size=default_chunk_rows(row_bytes, available, batch_size))
    stream = Stream(chunks, model, targets=targets, argument=argument)
    stream.check_values()
    return stream, None, None


def _join(chunks: Chunks, dtype: Any) -> tuple[Any, Any, Any]:
    """A Chunks that fits: its parts read (X cast on the host) and joined."""
    host = _Host(dtype)
    xs = [backend.read_rows(X, 0, n, dtype=dtype) for (X, _, _), n in
          zip(chunks.parts, chunks.lengths)]
    X = host.xp.concat(xs, axis=0) if len(xs) > 1 else xs[0]
    y = w = None
    if chunks.has_targets:
        ys = [backend.read_rows(p[1], 0, n) for p, n in zip(chunks.parts, chunks.lengths)]
        y = host.xp.concat(ys, axis=0) if len(ys) > 1 else ys[0]
    if chunks.has_weights:
        ws = [backend.read_rows(p[2], 0, n, dtype=dtype)
              for p, n in zip(chunks.parts, chunks.lengths)]
        w = host.xp.concat(ws, axis=0) if len(ws) > 1 else ws[0]
    return X, y, w


# ----------------------------------------------------------------------------------------------
# The stream
# ----------------------------------------------------------------------------------------------


class Stream:
    """Checked chunked data on its way to a model's device, one chunk at a time.

    What ``fit``/``predict``/``evaluate`` use for data that does not fit (:func:`prepare`
    builds it). ``shape`` is ``(n_samples, n_features)``; :meth:`batches` yields the device
    batches of an epoch.
    """

    def __init__(self, chunks: Chunks, model: Any, *, targets: bool = True,
                 argument: str = "X") -> None:
        self.chunks = chunks
        self.xp, self.device, self.dtype = model.xp, model.device, model.dtype
        self.loss, self.n_outputs = model.loss, model.n_outputs
        self.targets = targets and chunks.has_targets
        self.weights = self.targets and chunks.has_weights
        self.argument = argument
        self.host = _Host(model.dtype)
        self.lengths = chunks.lengths
        self.shape = (sum(self.lengths), chunks.n_features)
        self.uploads = 0  # chunks copied to the device so far (for tests and benchmarks)

    def __repr__(self) -> str:
        return f"Stream({self.chunks!r})"

    def device_bytes(self) -> int:
        """The most bytes of data the stream holds on the device at once: two chunks, the one
        being trained on and the next one on its way (:meth:`device_chunks`)."""
        sizes = sorted(self.chunks.part_nbytes(backend.itemsize(self.dtype)), reverse=True)
        return sum(sizes[:2])

    # --- the host side: reading one chunk ---------------------------------------------------

    def _where(self, i: int) -> str:
        return f"{self.argument} (chunk {i} of {len(self.lengths)})" if len(self.lengths) > 1 \
            else self.argument

    def _targets_on_host(self, y: Any, i: int) -> Any:
        try:
            return self.loss.check_targets(y, self.n_outputs or 1, xp=self.host.xp,
                                           device="cpu", n_samples=self.lengths[i],
                                           dtype=self.host.dtype)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"y of {self._where(i)}: {exc}") from None

    def read(self, i: int, order: Any = None) -> tuple[Any, Any, Any]:
        """Chunk ``i`` on the host, rows in ``order`` (a permutation of its rows) when given:
        X and the weights cast to the model's dtype, the targets as the loss expects them."""
        X, y, w = self.chunks.parts[i]
        n = self.lengths[i]
        xh = backend.read_rows(X, 0, n, order, self.dtype)
        yh = self._targets_on_host(backend.read_rows(y, 0, n, order), i) if self.targets \
            else None
        wh = backend.read_rows(w, 0, n, order, self.dtype) if self.weights else None
        return xh, yh, wh

    def check_values(self) -> None:
        """One pass over every chunk on the host: finite features, valid targets and weights.
        Raises with the chunk named; at most one chunk is in memory at a time."""
        xp = self.host.xp
        positive = False
        for i, n in enumerate(self.lengths):
            X, y, w = self.chunks.parts[i]
            check_features(backend.read_rows(X, 0, n), n_features=self.shape[1],
                           dtype=self.host.dtype, xp=xp, device="cpu", argument=self._where(i))
            if self.targets:
                self._targets_on_host(backend.read_rows(y, 0, n), i)
            if self.weights:
                wh = backend.read_rows(w, 0, n, dtype=self.dtype)
                if not backend.host_all_finite(wh):
                    raise ValueError(f"sample_weight of {self._where(i)} contains NaN or "
                                     "infinite values; weights must be finite")
                if not backend.host_all_positive(wh, allow_zero=True):
                    raise ValueError(f"sample_weight of {self._where(i)} must be >= 0")
                positive = positive or not backend.host_all_positive(-wh, allow_zero=True)
        if self.weights and not positive:
            raise ValueError(f"sample_weight is zero for all {self.shape[0]} samples: nothing "
                             "would be learned; give at least one sample a positive weight")

    # --- the epoch order --------------------------------------------------------------------

    def epoch_plan(self, rng: Any) -> list[tuple[int, Any]]:
        """The shuffled order of one epoch, drawn on the host from ``rng`` (the model's
        ``data_rng``): first a permutation of the chunk indices (the order the chunks are
        visited), then, for each chunk in that order, a permutation of its rows.

        Each sample is visited exactly once per epoch, and a seed gives the same order on
        every backend. Unlike a full shuffle, two samples of the same chunk always land in the
        same or neighbouring batches' stretch of the epoch: a batch mixes at most the rows of
        the chunks it spans, so data stored sorted (by class, by time) should be shuffled once
        on disk, or cut into many small chunks, for batches to be representative.
        """
        order = rng.host_permutation(len(self.lengths))
        return [(int(i), rng.host_permutation(self.lengths[int(i)])) for i in order]

    # --- the device side ------------------------------------------------------------------

    def device_chunks(self, plan: list[tuple[int, Any]] | None = None
                      ) -> Iterator[tuple[Any, Any, Any]]:
        """The chunks on the device, in ``plan``'s order (in storage order without one): the
        copy of the next chunk is started once the current one has been handed out, so that it
        overlaps with the work queued on the current one (cupy, torch CUDA)."""
        plan = [(i, None) for i in range(len(self.lengths))] if plan is None else plan
        uploader = backend.chunk_uploader(self.xp, self.device)
        try:
            with backend.device_scope(self.xp, self.device):
                handle = uploader.start(self.read(*plan[0]))
                for k in range(len(plan)):
                    arrays = uploader.finish(handle)
                    self.uploads += 1
                    yield arrays
                    if k + 1 < len(plan):
                        handle = uploader.start(self.read(*plan[k + 1]))
        finally:
            uploader.close()

    def batches(self, batch_size: int, plan: list[tuple[int, Any]] | None = None
                ) -> Iterator[tuple[Array, Any, Any]]:
        """The batches of one epoch: the chunks (in ``plan``'s order) laid end to end and cut
        every ``batch_size`` samples, so a batch may run across a chunk boundary (its rows are
        then joined on the device) and only the epoch's last batch may be smaller — the same
        batches as in memory. Yields ``(X, y, sample_weight)``, the last two None when absent.
        """
        xp = self.xp
        carry: list[tuple[Any, Any, Any]] = []  # rows left over from the previous chunks
        held = 0
        for X, y, w in self.device_chunks(plan):
            n, start = X.shape[0], 0
            if held:
                take = min(batch_size - held, n)
                carry.append((X[:take, ...], _rows(y, 0, take), _rows(w, 0, take)))
                held += take
                start = take
                if held < batch_size:
                    continue
                yield _join_device(carry, xp)
                carry, held = [], 0
            while n - start >= batch_size:
                stop = start + batch_size
                yield X[start:stop, ...], _rows(y, start, stop), _rows(w, start, stop)
                start = stop
            if start < n:
                carry = [(X[start:n, ...], _rows(y, start, n), _rows(w, start, n))]
                held = n - start
        if held:
            yield _join_device(carry, xp)

    def head(self, k: int) -> Array:
        """The first ``k`` rows of X (from the first chunks) on the device: the diagnostics'
        probe batch."""
        parts, got = [], 0
        for i, n in enumerate(self.lengths):
            take = min(n, k - got)
            parts.append(backend.read_rows(self.chunks.parts[i][0], 0, take, dtype=self.dtype))
            got += take
            if got >= k:
                break
        host = parts[0] if len(parts) == 1 else self.host.xp.concat(parts, axis=0)
        return backend.asarray(host, xp=self.xp, device=self.device)


def _rows(a: Any, start: int, stop: int) -> Any:
    return None if a is None else a[start:stop, ...]


def _join_device(parts: list[tuple[Any, Any, Any]], xp: Any) -> tuple[Any, Any, Any]:
    if len(parts) == 1:
        return parts[0]
    out = []
    for j in range(3):
        arrays = [p[j] for p in parts]
        out.append(None if arrays[0] is None else xp.concat(arrays, axis=0))
    return out[0], out[1], out[2]
