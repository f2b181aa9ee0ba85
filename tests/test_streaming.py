"""Data larger than device memory (nnxp.data): memory maps and Chunks streamed chunk by chunk.

Streaming is forced on every backend by a small device-memory budget
(:func:`nnxp.set_memory_budget`); the in-memory run is the oracle.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nnxp
from nnxp import backend, data
from nnxp.layers import Dense

N, F, C = 203, 6, 3  # 203: no chunk or batch size below divides it


@pytest.fixture
def budget() -> Iterator[Any]:
    """Set a budget for the test; the previous one is restored afterwards."""
    old = backend.get_memory_budget()

    def set_(n: int | None) -> None:
        backend.set_memory_budget(n)

    yield set_
    backend.set_memory_budget(old)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, F)).astype(np.float32)
    X[:, 0] = np.arange(N)  # an id per sample, to follow samples through the shuffle
    X[:, 0] /= N
    y = rng.integers(0, C, size=N).astype(np.int64)
    w = rng.uniform(0.5, 1.5, size=N).astype(np.float32)
    for name, a in (("X", X), ("y", y), ("w", w)):
        np.save(tmp_path / f"{name}.npy", a)
    return {"X": X, "y": y, "w": w, "dir": tmp_path,
            "Xm": np.load(tmp_path / "X.npy", mmap_mode="r"),
            "ym": np.load(tmp_path / "y.npy", mmap_mode="r"),
            "wm": np.load(tmp_path / "w.npy", mmap_mode="r")}


def _model() -> nnxp.Sequential:
    return nnxp.Sequential([Dense(F, 16, activation="relu"), Dense(16, C)], seed=3)


def _weights(model: nnxp.Sequential) -> list[np.ndarray]:
    return [nnxp.to_numpy(p) for layer in model.layers for p in layer.params.values()]


def _assert_same(a: nnxp.Sequential, b: nnxp.Sequential) -> None:
    for p, q in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(p, q)


def _chunked(f: dict[str, Any], rows: int, *, weights: bool = False) -> data.Chunks:
    return data.Chunks.from_arrays(f["Xm"], f["ym"], f["wm"] if weights else None,
                                   chunk_size=rows)


# ----------------------------------------------------------------------------------------------
# Same result as in memory
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [5, 16, 48, 100, N],
                         ids=["chunk<batch", "chunk=batch", "chunk=3batches", "partial-last",
                              "one-chunk"])
def test_unshuffled_stream_is_bit_identical_to_in_memory(bk: Any, files: Any, budget: Any,
                                                         rows: int) -> None:
    ref = _model()
    ref.fit(files["X"], files["y"], epochs=2, batch_size=16, shuffle=False, verbose=0)
    budget(12_000)  # below twice the data (6.5 kB): it streams; above the model's plan
    model = _model()
    h = model.fit(_chunked(files, rows), None, epochs=2, batch_size=16, shuffle=False,
                  verbose=0)
    _assert_same(ref, model)
    assert h["loss"] == ref.history["loss"]


def test_memory_map_streams_and_matches_in_memory(bk: Any, files: Any, budget: Any,
                                                  monkeypatch: Any) -> None:
    ref = _model()
    ref.fit(files["X"], files["y"], epochs=1, batch_size=8, shuffle=False, verbose=0,
            sample_weight=files["w"])
    budget(12_000)
    streams: list[data.Stream] = []
    real = data.Stream.__init__

    def spy(self: Any, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        streams.append(self)

    monkeypatch.setattr(data.Stream, "__init__", spy)
    model = _model()
    model.fit(files["Xm"], files["ym"], epochs=1, batch_size=8, shuffle=False, verbose=0,
              sample_weight=files["wm"])
    _assert_same(ref, model)
    assert len(streams) == 1 and len(streams[0].lengths) > 3  # streamed, in several chunks
    assert streams[0].uploads == len(streams[0].lengths)  # one copy per chunk


def test_weights_inside_chunks_match_in_memory(files: Any, budget: Any) -> None:
    ref = _model()
    ref.fit(files["X"], files["y"], epochs=1, batch_size=10, shuffle=False, verbose=0,
            sample_weight=files["w"])
    budget(12_000)
    model = _model()
    model.fit(_chunked(files, 33, weights=True), None, epochs=1, batch_size=10, shuffle=False,
              verbose=0)
    _assert_same(ref, model)


def test_predict_evaluate_on_a_memory_map_equal_the_loaded_array(bk: Any, files: Any,
                                                                 budget: Any) -> None:
    model = _model()
    model.fit(files["X"], files["y"], epochs=1, verbose=0)
    want = {name: nnxp.to_numpy(getattr(model, name)(files["X"], batch_size=50))
            for name in ("predict", "predict_proba")}
    scores = model.evaluate(files["X"], files["y"], batch_size=50)
    budget(12_000)
    for name, value in want.items():
        got = nnxp.to_numpy(getattr(model, name)(files["Xm"], batch_size=50))
        np.testing.assert_array_equal(got, value)
        got = nnxp.to_numpy(getattr(model, name)(_chunked(files, 37), batch_size=50))
        np.testing.assert_array_equal(got, value)
    assert model.evaluate(files["Xm"], files["ym"], batch_size=50) == scores
    assert model.evaluate(_chunked(files, 70), None, batch_size=50) == scores


def test_streamed_validation_data_equals_in_memory(files: Any, budget: Any) -> None:
    ref = _model()
    ref.fit(files["X"], files["y"], epochs=2, batch_size=16, verbose=0,
            validation_data=(files["X"], files["y"]))
    budget(12_000)
    model = _model()
    h = model.fit(files["X"], files["y"], epochs=2, batch_size=16, verbose=0,
                  validation_data=(files["Xm"], files["ym"]))
    assert h["val_loss"] == ref.history["val_loss"]
    assert h["val_accuracy"] == ref.history["val_accuracy"]


def test_data_that_fits_moves_once_as_before(files: Any, budget: Any) -> None:
    model = _model()
    X, y, w = data.prepare(model, files["Xm"], files["ym"])
    assert X is files["Xm"] and y is files["ym"] and w is None  # no budget: the usual path
    budget(10**9)
    X, _, _ = data.prepare(model, files["Xm"], files["ym"])
    assert X is files["Xm"]
    X, y, _ = data.prepare(model, _chunked(files, 50), None)
    np.testing.assert_array_equal(X, files["X"])
    np.testing.assert_array_equal(y, files["y"])
    budget(12_000)
    assert isinstance(data.prepare(model, files["Xm"], files["ym"])[0], data.Stream)


def test_chunks_of_npy_paths_and_partial_fit(files: Any, budget: Any) -> None:
    d = files["dir"]
    parts = []
    # parts small enough that two of them on the device fit the budget beside the step
    bounds = [(0, 35), (35, 70), (70, 100), (100, 135), (135, 170), (170, N)]
    for i, (a, b) in enumerate(bounds):
        np.save(d / f"X{i}.npy", files["X"][a:b])
        np.save(d / f"y{i}.npy", files["y"][a:b])
        parts.append((d / f"X{i}.npy", str(d / f"y{i}.npy")))
    chunks = data.Chunks(parts)
    assert chunks.lengths == [35, 35, 30, 35, 35, 33] and chunks.n_features == F
    ref = _model()
    ref.partial_fit(files["X"], files["y"], batch_size=32, shuffle=False)
    budget(12_000)
    model = _model()
    model.partial_fit(chunks, batch_size=32, shuffle=False)  # y omitted: inside the chunks
    _assert_same(ref, model)
    assert model.evaluate(chunks) == ref.evaluate(files["X"], files["y"])


# ----------------------------------------------------------------------------------------------
# The shuffle: chunks in a random order, rows in a random order within each chunk
# ----------------------------------------------------------------------------------------------


def test_shuffled_epoch_visits_every_sample_once_chunk_by_chunk(bk: Any, files: Any,
                                                                budget: Any) -> None:
    budget(12_000)
    model = _model()
    stream, _, _ = data.prepare(model, _chunked(files, 40), None)
    assert isinstance(stream, data.Stream)
    for _ in range(2):  # two epochs
        plan = stream.epoch_plan(model.data_rng)
        assert sorted(i for i, _ in plan) == list(range(6))
        ids = np.concatenate([nnxp.to_numpy(xb)[:, 0] for xb, _, _ in stream.batches(16, plan)])
        seen = np.rint(ids * N).astype(int)
        assert sorted(seen.tolist()) == list(range(N))  # each sample exactly once
        chunk_of = seen // 40
        runs = [c for k, c in enumerate(chunk_of) if k == 0 or c != chunk_of[k - 1]]
        assert runs == [i for i, _ in plan]  # chunk by chunk, in the plan's order
        assert not np.array_equal(seen, np.arange(N))
        labels = np.concatenate([nnxp.to_numpy(yb) for _, yb, _ in stream.batches(16, plan)])
        np.testing.assert_array_equal(labels, files["y"][seen])  # targets follow their rows


def test_shuffled_streaming_is_reproducible_from_the_seed(files: Any, budget: Any) -> None:
    budget(12_000)
    a, b, c = _model(), _model(), _model()
    for m in (a, b):
        m.fit(_chunked(files, 40), None, epochs=2, batch_size=16, verbose=0)
    c.fit(_chunked(files, 40), None, epochs=2, batch_size=16, shuffle=False, verbose=0)
    _assert_same(a, b)
    assert any(not np.array_equal(p, q) for p, q in zip(_weights(a), _weights(c)))


# ----------------------------------------------------------------------------------------------
# Host memory: a chunk or two, never the file
# ----------------------------------------------------------------------------------------------


def test_streaming_a_memory_map_reads_about_a_chunk_at_a_time(tmp_path: Path,
                                                              budget: Any) -> None:
    n, f = 16384, 64  # 4 MiB of float32
    X = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32,
                                  shape=(n, f))
    X[:] = np.random.default_rng(0).normal(size=(n, f)).astype(np.float32)
    X.flush()
    del X
    np.save(tmp_path / "y.npy", (np.arange(n) % 2).astype(np.int64))
    Xm = np.load(tmp_path / "big.npy", mmap_mode="r")
    ym = np.load(tmp_path / "y.npy", mmap_mode="r")
    file_bytes = n * f * 4
    budget(file_bytes // 4)  # the benchmark's setting: the data is 4x the budget
    model = nnxp.Sequential([Dense(f, 8, activation="relu"), Dense(8, 2)], seed=0)
    chunk_bytes = int(file_bytes // 4 * data.CHUNK_SHARE)
    model.fit(Xm[:512], ym[:512], epochs=1, batch_size=256, verbose=0)  # one-off allocations
    tracemalloc.start()
    try:
        model.fit(Xm, ym, epochs=1, batch_size=256, verbose=0)
        model.predict(Xm, batch_size=256)  # (a batch is on the "device", here host memory)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a chunk read, its shuffled copy and the next chunk: a few chunks, not the 4 MiB file
    assert peak < 4 * chunk_bytes + 200_000, (peak, chunk_bytes)
    assert peak < file_bytes / 4


# ----------------------------------------------------------------------------------------------
# Errors, before any training step
# ----------------------------------------------------------------------------------------------


def _save(d: Path, name: str, a: np.ndarray) -> np.ndarray:
    np.save(d / name, a)
    return np.load(d / name, mmap_mode="r")


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda f, d: (_save(d, "a.npy", np.zeros(N, np.float32)), f["ym"]), ValueError,
     r"X must be 2-D .*shape \(203,\)"),
    (lambda f, d: (_save(d, "a.npy", np.zeros((N, F + 1), np.float32)), f["ym"]), ValueError,
     "X has 7 features per sample but the model expects 6"),
    (lambda f, d: (_save(d, "a.npy", np.zeros((N, F), np.complex64)), f["ym"]), TypeError,
     "cast safely to the model's float32, got dtype complex64"),
    (lambda f, d: (f["Xm"], f["ym"][:-3]), ValueError,
     r"y must have one row per sample of X: expected 203 rows, got shape \(200,\)"),
    (lambda f, d: (data.Chunks([(f["X"][:10], f["y"][:10]),
                                (f["X"][10:20, :4], f["y"][10:20])]), None), ValueError,
     "part 1 X has 4 features per row, but part 0 has 6"),
    (lambda f, d: (data.Chunks([(f["X"][:10], f["y"][:10]), (f["X"][10:20], f["y"][10:19])]),
                   None), ValueError, r"part 1 y must have 10 rows .*got shape \(9,\)"),
    (lambda f, d: (data.Chunks([(f["X"][:10], f["y"][:10]), f["X"][10:20]]), None), ValueError,
     "same form"),
    (lambda f, d: (_save(d, "a.npy", np.where(np.arange(N)[:, None] == 150, np.nan, f["X"])),
                   f["ym"]), ValueError, r"X \(chunk 3 of 6\) contains 6 NaN"),
    (lambda f, d: (f["Xm"], _save(d, "b.npy", np.full(N, C))), ValueError,
     r"y of X \(chunk 0 of 6\)"),
    (lambda f, d: (data.Chunks([f["X"][:10]]), None), ValueError, "without targets"),
    (lambda f, d: (data.Chunks([(f["X"], f["y"])]), f["y"]), TypeError,
     "give the targets inside its parts"),
], ids=["1-D", "features", "complex", "y-length", "widths", "chunk-y-length", "mixed-form",
        "nan-in-chunk-3", "label-out-of-range", "chunks-without-y", "y-beside-chunks"])
def test_bad_streamed_data_is_refused_before_any_step(files: Any, budget: Any, make: Any,
                                                      error: type, match: str) -> None:
    budget(12_000)
    model = _model()
    before = _weights(model)
    with pytest.raises(error, match=match):
        X, y = make(files, files["dir"])
        model.fit(X, y, epochs=1, batch_size=40, verbose=0)
    for p, q in zip(before, _weights(model)):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize(("options", "match"), [
    ({"validation_split": 0.2}, "validation_split=0.2 cannot be used with streamed data"),
    ({"distributed": True}, "distributed training does not stream"),
    ({"sample_weight": np.ones(N)}, "put the weights inside its parts"),
])
def test_unsupported_options_with_streamed_data_are_refused(files: Any, budget: Any,
                                                            options: Any, match: str) -> None:
    budget(12_000)
    with pytest.raises((ValueError, TypeError), match=match):
        _model().fit(_chunked(files, 50), None, epochs=1, verbose=0, **options)


def test_chunks_constructor_errors(files: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="parts is empty"):
        data.Chunks([])
    with pytest.raises(TypeError, match="must be a list or tuple"):
        data.Chunks(files["X"])
    with pytest.raises(TypeError, match="Chunks part 0 X must be a NumPy array"):
        data.Chunks([([1.0, 2.0], files["y"])])
    with pytest.raises(ValueError, match="as a .npy array"):
        data.Chunks([tmp_path / "missing.npy"])
    with pytest.raises(ValueError, match="chunk_size must be"):
        data.Chunks.from_arrays(files["Xm"], files["ym"], chunk_size=0)


# ----------------------------------------------------------------------------------------------
# The device-memory budget
# ----------------------------------------------------------------------------------------------


def test_device_memory_budget_api(budget: Any) -> None:
    assert backend.free_device_memory() is None  # CPU backends cannot tell
    budget(None)
    assert backend.available_memory().nbytes is None
    assert nnxp.set_memory_budget(12345) is None
    assert nnxp.get_memory_budget() == 12345 == backend.available_memory().nbytes
    assert backend.available_memory(1000).nbytes == 1000  # fit(memory_budget=) for one call
    assert nnxp.set_memory_budget(None) == 12345
    for bad in (0, -1, "1 parsec"):
        with pytest.raises(ValueError, match="memory_budget must be"):
            nnxp.set_memory_budget(bad)
    with pytest.raises(TypeError, match="memory_budget must be"):
        nnxp.set_memory_budget(True)
    with pytest.raises(TypeError, match="memory_budget must be"):
        nnxp.set_memory_budget(1.5)


def test_default_chunk_rows() -> None:
    assert data.default_chunk_rows(100, 80_000, 32) == 96  # 10,000 bytes: 100 rows -> 3 batches
    assert data.default_chunk_rows(100, 8000, 32) == 10  # less than a batch: kept
    assert data.default_chunk_rows(100, None, None) == data.DEFAULT_CHUNK_ROWS


# ----------------------------------------------------------------------------------------------
# The overlapping uploaders, with fake GPU libraries (no GPU here)
# ----------------------------------------------------------------------------------------------


class _Log(list):  # type: ignore[type-arg]
    pass


class _FakeEvent:
    def __init__(self, log: _Log, name: str) -> None:
        self.log, self.name = log, name

    def record(self, stream: Any) -> None:
        self.log.append(("record", self.name, stream.name))

    def synchronize(self) -> None:
        self.log.append(("host waits", self.name))


class _FakeStream:
    def __init__(self, log: _Log, name: str) -> None:
        self.log, self.name = log, name

    def wait_event(self, event: Any) -> None:
        self.log.append(("wait_event", self.name, event.name))

    def record(self) -> _FakeEvent:  # cupy: Stream.record() returns an event
        event = _FakeEvent(self.log, f"e{sum(1 for e in self.log if e[0] == 'record')}")
        event.record(self)
        return event


class _FakeTensor:
    def __init__(self, log: _Log, host: np.ndarray, where: str) -> None:
        self.log, self.host, self.where = log, host, where

    def pin_memory(self) -> _FakeTensor:
        self.log.append(("pin", self.host.shape))
        return _FakeTensor(self.log, self.host.copy(), "pinned")

    def to(self, device: Any, non_blocking: bool = False) -> _FakeTensor:
        assert self.where == "pinned" and non_blocking
        self.log.append(("copy", self.host.shape, self.log.stream))
        return _FakeTensor(self.log, self.host, str(device))

    def record_stream(self, stream: Any) -> None:
        self.log.append(("record_stream", self.host.shape, stream.name))


def _fake_torch(log: _Log) -> Any:
    class Cuda:
        @staticmethod
        def Stream(device: Any) -> _FakeStream:  # noqa: N802
            return _FakeStream(log, "copy")

        @staticmethod
        def current_stream(device: Any) -> _FakeStream:
            return _FakeStream(log, "compute")

        class stream:  # noqa: N801 - torch.cuda.stream(s) is a context manager
            def __init__(self, s: Any) -> None:
                self.s = s

            def __enter__(self) -> None:
                log.stream = self.s.name

            def __exit__(self, *exc: Any) -> None:
                log.stream = "compute"

        @staticmethod
        def Event() -> _FakeEvent:  # noqa: N802
            return _FakeEvent(log, f"e{sum(1 for e in log if e[0] == 'record')}")

    class Torch:
        cuda = Cuda

        @staticmethod
        def from_numpy(a: np.ndarray) -> _FakeTensor:
            return _FakeTensor(log, a, "host")

    log.stream = "compute"
    return Torch


def test_torch_cuda_uploader_pins_copies_on_a_second_stream_and_waits_on_device() -> None:
    log = _Log()
    up = backend.TorchCudaUploader(None, "cuda:0", torch=_fake_torch(log))
    assert up.overlaps
    x, y = np.ones((4, 3), np.float32), np.arange(4)
    handles = [up.start((x, y, None)) for _ in range(3)]
    out = up.finish(handles[0])
    assert out[2] is None and out[0].where == "cuda:0"
    np.testing.assert_array_equal(out[0].host, x)
    up.close()
    first = log[:log.index(("record", "e0", "copy")) + 1]
    assert first == [("pin", (4, 3)), ("pin", (4,)), ("copy", (4, 3), "copy"),
                     ("copy", (4,), "copy"), ("record", "e0", "copy")]
    # the third chunk waits (on the host) for the first copy only: two in flight at most
    third = log.index(("record", "e2", "copy"))
    assert log.index(("host waits", "e0")) < third and ("host waits", "e1") not in log[:third]
    # the compute stream waits on the device, and the allocator learns who reads the memory
    assert ("wait_event", "compute", "e0") in log
    assert ("record_stream", (4, 3), "compute") in log and ("record_stream", (4,), "compute") in log
    assert log[-2:] == [("host waits", "e1"), ("host waits", "e2")]  # close drains


def test_cupy_uploader_pins_copies_on_a_second_stream_and_waits_on_device() -> None:
    log = _Log()

    class FakeDevice:
        def __init__(self, d: Any) -> None:
            pass

        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: Any) -> None:
            return None

    class DevArray:
        def __init__(self, shape: Any, dtype: Any) -> None:
            self.shape, self.dtype, self.data = shape, dtype, None

        def set(self, pinned: Any, stream: Any) -> None:
            log.append(("copy", pinned.shape, stream.name))
            self.data = np.array(pinned)

    class Cuda:
        Device = FakeDevice

        @staticmethod
        def Stream(non_blocking: bool) -> _FakeStream:  # noqa: N802
            assert non_blocking
            return _FakeStream(log, "copy")

        @staticmethod
        def get_current_stream() -> _FakeStream:
            return _FakeStream(log, "compute")

    class Cupy:
        cuda = Cuda

        @staticmethod
        def empty(shape: Any, dtype: Any) -> DevArray:
            return DevArray(shape, dtype)

    class Cupyx:
        @staticmethod
        def empty_pinned(shape: Any, dtype: Any) -> np.ndarray:
            log.append(("pin", shape))
            return np.empty(shape, dtype)

    up = backend.CupyUploader(None, 0, cupy=Cupy, cupyx=Cupyx)
    x = np.arange(6.0).reshape(3, 2)
    out = up.finish(up.start((x, None, None)))
    np.testing.assert_array_equal(out[0].data, x)
    assert log == [("pin", (3, 2)), ("copy", (3, 2), "copy"), ("record", "e0", "copy"),
                   ("wait_event", "compute", "e0")]
    up.close()
    assert log[-1] == ("host waits", "e0")


def test_uploader_choice(bk: Any, monkeypatch: Any) -> None:
    up = backend.chunk_uploader(bk.xp, bk.device)
    assert up.overlaps == (bk.name == "cupy" or str(bk.device).startswith("cuda"))
    monkeypatch.setenv("NNXP_SYNC_UPLOADS", "1")
    assert not backend.chunk_uploader(bk.xp, bk.device).overlaps


def test_next_chunk_is_copied_after_the_current_chunks_work_is_queued(
        files: Any, budget: Any, monkeypatch: Any) -> None:
    """The order that lets the copy overlap with compute: chunk k+1 is read and its copy started
    only once the batches of chunk k have been handed out (their steps queued on a GPU), and
    each chunk is finished (the compute stream made to wait) before its batches are used."""
    log: list[str] = []

    class Recording(backend.ChunkUploader):
        def start(self, arrays: Any) -> Any:
            log.append("start")
            return super().start(arrays)

        def finish(self, handle: Any) -> tuple[Any, ...]:
            log.append("finish")
            return super().finish(handle)

        def close(self) -> None:
            log.append("close")

    monkeypatch.setattr(backend, "chunk_uploader", lambda xp, device: Recording(xp, device))
    budget(12_000)
    model = _model()
    stream, _, _ = data.prepare(model, _chunked(files, 64), None)  # 64, 64, 64, 11 rows
    for _ in stream.batches(32):
        log.append("batch")
    assert log == (["start", "finish", "batch", "batch", "start"]
                   + ["finish", "batch", "batch", "start"] * 2
                   + ["finish", "close", "batch"])  # the 11-row tail after the last chunk
