"""``fit(capture=True)``: the static-buffer step, and its recording as a device graph.

Without a GPU no backend here records: the static-buffer path runs unrecorded, and it must give
bit-identical results to the ordinary path (numpy, torch CPU; array-api-strict has no in-place
writes and is refused). The recording protocol — check step, record, replay, re-record after an
option change, refusal of what a replay would get wrong — is driven by a fake recorder whose
``capture`` leaves memory as it found it (as a CUDA recording does: it runs nothing) and whose
``replay`` writes into the static outputs. The CuPy and torch recorders are checked against
stand-ins of the library calls they make; running them for real needs a GPU (docs/training.md).
"""

from __future__ import annotations

import dataclasses
import sys
import types
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import nnxp
from nnxp import backend
from nnxp.callbacks import Callback
from nnxp.layers import BatchNorm1d, Dense, Dropout, Tanh
from nnxp.optim.base import Hyperparameters, Optimizer, hyperparameter
from nnxp.optim.flat import FlatUnit
from nnxp.validation import check_nonneg

N, F, C = 23, 4, 3  # batches of 5: four of 5 and a last one of 3 (two shapes)


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    return rng.normal(size=(N, F)), rng.integers(0, C, size=N), rng.uniform(0.5, 2, size=N)


def _weights(model: nnxp.Sequential) -> np.ndarray:
    return np.concatenate([np.ravel(nnxp.to_numpy(p)) for layer in model.layers
                           for p in list(layer.params.values())
                           + list(getattr(layer, "buffers", {}).values())])


def _fit(model: nnxp.Sequential, optimizer: Any, **kwargs: Any) -> nnxp.History:
    X, y, w = _data()
    return model.fit(X, y, optimizer=optimizer, epochs=2, batch_size=5, sample_weight=w,
                     verbose=0, metrics=["accuracy"], **kwargs)


def _full_model() -> nnxp.Sequential:
    return nnxp.Sequential([Dense(F, 6), BatchNorm1d(6), Tanh(), Dropout(0.2), Dense(6, C)],
                           seed=3)


def test_no_backend_here_records(bk: Any) -> None:
    recorder = backend.graph_capture(bk.xp, bk.device)
    if bk.spec == "torch:cuda":
        assert recorder is not None and recorder.kind == "torch.cuda.CUDAGraph"
    elif bk.name == "cupy":  # on a CuPy that records cuBLAS calls
        assert (recorder is None) == (backend.cupy_capture_problem(bk.device) is not None)
    else:
        assert recorder is None


def test_static_buffers_give_bit_identical_results(bk: Any) -> None:
    if backend.graph_capture(bk.xp, bk.device) is not None:
        pytest.skip("a recorder records here (the model's Dropout is refused); make gpu-check's "
                    "capture part compares recorded and unrecorded fits")
    if not backend.supports_inplace(bk.xp):
        with pytest.raises(ValueError, match="capture=True copies every batch into static "
                                             "input buffers, which needs a backend whose "
                                             "arrays can be written in place"):
            _fit(_full_model(), nnxp.optim.Adam(lr=0.01), capture=True)
        return
    runs = []
    for capture in (False, True):
        model = _full_model()
        history = _fit(model, nnxp.optim.Adam(lr=0.01, clip_norm=1.0), capture=capture)
        runs.append((_weights(model), history.history["loss"], history.history["accuracy"],
                     history.capture))
    (w0, loss0, acc0, report0), (w1, loss1, acc1, report1) = runs
    assert np.array_equal(w0, w1)
    assert loss0 == loss1 and acc0 == acc1
    assert report0 is None
    assert report1 == {"recorder": None, "graphs": 0, "replays": 0, "static_steps": 10,
                       "not_recorded": None}


def _recorded_against_plain(make_optimizer: Any) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """The weights and histories of the BatchNorm1d model fitted without and with capture."""
    fitted = []
    for capture in (False, True):
        model = _bn_model()
        history = _fit(model, make_optimizer(), capture=capture)
        fitted.append((_weights(model), history))
    (w0, h0), (w1, h1) = fitted
    return w0, w1, h0, h1


def test_a_real_recording_matches_the_unrecorded_fit(bk: Any) -> None:
    """On a GPU backend that records (torch CUDA; CuPy where it records cuBLAS calls): SGD with
    momentum on a BatchNorm1d model, recorded and replayed, ends where the unrecorded fit does,
    to rounding (the same kernels; cuBLAS may choose other algorithms inside a recording).
    ``make gpu-check`` runs it; without a GPU it skips."""
    recorder = backend.graph_capture(bk.xp, bk.device)
    if recorder is None:
        pytest.skip(f"nothing records on {bk.spec}")
    w0, w1, h0, h1 = _recorded_against_plain(lambda: nnxp.optim.SGD(lr=0.1, momentum=0.9))
    np.testing.assert_allclose(w1, w0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h1.history["loss"], h0.history["loss"], rtol=1e-5)
    # epoch 1: batches of 5 checked twice (the momentum buffers are new at the first), then
    # recorded and replayed twice; the last batch of 3 is checked. Epoch 2: four replays, and
    # the last batch recorded and replayed (the fake recorder of the tests below counts alike)
    assert h1.capture == {"recorder": recorder.kind, "graphs": 2, "replays": 7,
                          "static_steps": 3, "not_recorded": None}


# ----------------------------------------------------------------------------------------------
# The recording protocol, with a fake recorder
# ----------------------------------------------------------------------------------------------


def _arrays(model: nnxp.Sequential) -> list[Any]:
    """Every array that outlives a step: parameters, buffers, optimizer state (flat or not)."""
    found: list[Any] = [a for layer in model.layers
                        for store in (layer.params, getattr(layer, "buffers", {}))
                        for a in store.values()]
    optimizer = model.optimizer
    records = list(getattr(optimizer, "state", {}).values())
    records += [unit.state for unit in _flat_units(optimizer) if unit.state is not None]
    for state in records:
        found += [getattr(state, f.name) for f in dataclasses.fields(state)
                  if backend.is_array(getattr(state, f.name))]
    found += [a for table in optimizer.step_tables() for a in table.arrays()]
    return found


def _flat_units(optimizer: Any) -> list[Any]:
    # the test's fake reaches into the optimizer's units: a replay must not move their counts
    return [unit for units in (getattr(optimizer, "_units", None) or ()) for unit in units
            if isinstance(unit, FlatUnit)]


def _host_counts(model: nnxp.Sequential) -> list[tuple[Any, str, Any]]:
    """The Python-side values a step changes: step counts, batch counts."""
    optimizer = model.optimizer
    saved: list[tuple[Any, str, Any]] = [(optimizer, "iterations", optimizer.iterations)]
    records = list(optimizer.state.values())
    records += [unit.state for unit in _flat_units(optimizer) if unit.state is not None]
    saved += [(r, f.name, getattr(r, f.name)) for r in records for f in dataclasses.fields(r)
              if not backend.is_array(getattr(r, f.name))]
    saved += [(layer, "num_batches_tracked", layer.num_batches_tracked)
              for layer in model.layers if isinstance(layer, BatchNorm1d)]
    saved += [(table, "host_k", table.host_k) for table in optimizer.step_tables()]
    return saved


def _host_fields(record: Any) -> tuple[tuple[str, Any], ...]:
    """A state record's host values (step counts, NAdam's running product), by name."""
    return tuple((f.name, getattr(record, f.name)) for f in dataclasses.fields(record)
                 if not backend.is_array(getattr(record, f.name))
                 and getattr(record, f.name) is not None)


class FakeRecorder(backend.GraphRecorder):
    """Records the way a GPU does: ``capture`` leaves every array as it found it (a CUDA
    recording runs nothing on the device) and returns static outputs; ``replay`` runs the step
    and writes its results into those outputs, as a graph's kernels write into the same memory
    every time — and puts back every Python-side count the step moved, since a real replay runs
    no Python (the loop must advance them itself)."""

    kind = "fake"

    def __init__(self, model: nnxp.Sequential) -> None:
        self.model = model
        self.graphs: list[backend.CapturedGraph] = []

    def capture(self, fn: Any) -> tuple[backend.CapturedGraph, Any]:
        xp = self.model.xp
        saved = [(a, xp.asarray(a, copy=True)) for a in _arrays(self.model)]
        outputs = [xp.asarray(o, copy=True) for o in fn()]
        for a, copy in saved:
            a[...] = copy
        held = [id(a) for a, _ in saved]

        def launch() -> None:
            # a real graph reads and writes the arrays it was recorded on, whatever the model
            # holds now: replaying after they were replaced would train the old memory
            assert [id(a) for a in _arrays(self.model)] == held, "replay on replaced arrays"
            host = _host_counts(self.model)
            for static, fresh in zip(outputs, fn()):
                static[...] = fresh
            for owner, name, value in host:
                setattr(owner, name, value)

        graph = backend.CapturedGraph(launch)
        self.graphs.append(graph)
        return graph, outputs


def _update(param: Any, grad: Any, state: Any, *, lr: float, xp: Any,
            inplace: bool) -> tuple[Any, Any]:
    if inplace:
        param -= lr * grad
        return param, state
    return param - lr * grad, state


class InPlaceSGD(Optimizer):
    """Plain SGD that keeps nothing on the host between steps: what a recorded step needs."""

    @dataclass(frozen=True)
    class Hyperparameters(Hyperparameters):
        lr: float = hyperparameter(0.1, check_nonneg)

    @dataclass
    class State:
        pass

    init_state = staticmethod(lambda param, *, xp: InPlaceSGD.State())
    update = staticmethod(_update)


def _recording(monkeypatch: Any, model: nnxp.Sequential) -> FakeRecorder:
    recorder = FakeRecorder(model)
    monkeypatch.setattr(backend, "graph_capture", lambda xp, device: recorder)
    return recorder


def _mlp() -> nnxp.Sequential:
    return nnxp.Sequential([Dense(F, 6), Tanh(), Dense(6, C)], seed=3)


class HalveLr(Callback):
    def on_epoch_begin(self, epoch: int, logs: Any) -> None:
        if epoch > 1:
            for group in self.model.optimizer.param_groups:
                group["lr"] = group["lr"] * 0.5


def test_a_recorded_step_replays_the_ordinary_step(monkeypatch: Any) -> None:
    with nnxp.use_backend("numpy"):
        plain = _mlp()
        h0 = _fit(plain, InPlaceSGD(lr=0.2), callbacks=[HalveLr()])
        model = _mlp()
        recorder = _recording(monkeypatch, model)
        h1 = _fit(model, InPlaceSGD(lr=0.2), capture=True, callbacks=[HalveLr()])
    assert np.array_equal(_weights(plain), _weights(model))
    assert h0.history["loss"] == h1.history["loss"]
    assert h0.history["accuracy"] == h1.history["accuracy"]
    # epoch 1: shape (5, 4) checked at step 1, recorded at step 2, replayed at 2-4; the last
    # batch (3, 4) is checked (its only step). Epoch 2: the halved lr is a change of options,
    # so each shape is checked again (an eager step: a new option may make state on its
    # first use), then (5, 4) is recorded again and replayed at steps 2-4.
    assert h1.capture == {"recorder": "fake", "graphs": 2, "replays": 6, "static_steps": 4,
                          "not_recorded": None}
    assert [g.replays for g in recorder.graphs] == [3, 3]
    assert model.optimizer.iterations == plain.optimizer.iterations == 10


class StepCountingSGD(InPlaceSGD):
    """A user's optimizer that keeps a host count and does not say whether it reads it."""

    @dataclass
    class State:
        step: int = 0

    @staticmethod
    def init_state(param: Any, *, xp: Any) -> Any:
        return StepCountingSGD.State()

    @staticmethod
    def update(param: Any, grad: Any, state: Any, *, lr: float, xp: Any,
               inplace: bool) -> tuple[Any, Any]:
        state.step += 1
        return _update(param, grad, state, lr=lr, xp=xp, inplace=inplace)


def _per_parameter(optimizer: Any) -> Any:
    optimizer.flat = False
    return optimizer


def _bn_model(momentum: float | None = 0.1) -> nnxp.Sequential:
    return nnxp.Sequential([Dense(F, 6), BatchNorm1d(6, momentum=momentum), Tanh(),
                            Dense(6, C)], seed=3)


@pytest.mark.parametrize("make, optimizer, reason", [
    (_mlp, lambda: StepCountingSGD(), r"StepCountingSGD state\[0\]\.step is a host value "
                                      r"that changed from 1 to 2"),
    # one update per parameter computes Adam's numbers on the host: no tables serve it
    (_mlp, lambda: _per_parameter(nnxp.optim.Adam()),
     r"Adam's update reads its host-side state 'step'"),
    (lambda: _bn_model(None), lambda: nnxp.optim.SGD(lr=0.1),
     r"layers\[1\] \(BatchNorm1d\) extra state\['num_batches_tracked'\] is a host value "
     r"that changed from 0 to 1"),
])
def test_what_a_replay_would_get_wrong_is_found_and_not_recorded(
        monkeypatch: Any, make: Any, optimizer: Any, reason: str) -> None:
    with nnxp.use_backend("numpy"):
        plain = make()
        _fit(plain, optimizer())
        model = make()
        _recording(monkeypatch, model)
        with pytest.warns(RuntimeWarning, match="the step cannot be recorded: " + reason):
            history = _fit(model, optimizer(), capture=True)
    assert np.array_equal(_weights(plain), _weights(model))  # ran unrecorded, correctly
    assert history.capture is not None
    assert history.capture["graphs"] == 0 and history.capture["static_steps"] == 10


def test_random_layers_are_refused_before_any_step(monkeypatch: Any) -> None:
    with nnxp.use_backend("numpy"):
        model = _full_model()
        before = _weights(model)
        _recording(monkeypatch, model)
        with pytest.raises(ValueError, match=r"capture=True: layers\[3\] \(Dropout\) draws "
                                             "random numbers"):
            _fit(model, InPlaceSGD(), capture=True)
        assert np.array_equal(_weights(model), before)


def test_capture_option_errors() -> None:
    X, y, _ = _data()
    with nnxp.use_backend("numpy"):
        model = _mlp()
        with pytest.raises(TypeError, match="capture must be True or False, got str 'yes'"):
            model.fit(X, y, capture="yes", verbose=0)
        with pytest.raises(ValueError, match="capture=True needs a first-order optimizer; LBFGS"):
            model.fit(X, y, capture=True, optimizer=nnxp.optim.LBFGS(), verbose=0)
        with pytest.raises(ValueError, match="capture=True together with distributed"):
            model.fit(X, y, capture=True, distributed=True, verbose=0)
        with pytest.raises(ValueError, match="capture=True together with accumulate=2"):
            model.partial_fit(X, y, capture=True, accumulate=2)


# ----------------------------------------------------------------------------------------------
# The GPU recorders against stand-ins of the library calls they make
# ----------------------------------------------------------------------------------------------


def test_torch_recorder_uses_cuda_graph(monkeypatch: Any) -> None:
    torch = pytest.importorskip("torch")
    calls: list[Any] = []

    class Graph:
        def replay(self) -> None:
            calls.append("replay")

    class Recording:
        def __init__(self, graph: Any, **kwargs: Any) -> None:
            calls.append(("record", type(graph).__name__, kwargs))

        def __enter__(self) -> None:
            calls.append("begin")

        def __exit__(self, *exc: Any) -> None:
            calls.append("end")

    class OnDevice:
        def __init__(self, device: Any) -> None:
            calls.append(("device", str(device)))

        def __enter__(self) -> None:
            pass

        def __exit__(self, *exc: Any) -> None:
            calls.append("device restored")

    made: list[Any] = []

    class Stream:
        def __init__(self, name: Any) -> None:
            self.name = name if isinstance(name, str) else "side"
            made.append(self)

        def wait_stream(self, other: Any) -> None:
            calls.append(f"{self.name} waits for {other.name}")

    class OnStream:
        def __init__(self, stream: Any) -> None:
            self.stream = stream

        def __enter__(self) -> None:
            calls.append(f"on {self.stream.name}")

        def __exit__(self, *exc: Any) -> None:
            calls.append(f"off {self.stream.name}")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", Recording)
    monkeypatch.setattr(torch.cuda, "device", OnDevice)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", OnStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: Stream("current"))
    recorder = backend.graph_capture(torch, torch.device("cuda", 1))
    assert recorder is not None and recorder.kind == "torch.cuda.CUDAGraph"
    assert recorder.warm_up(lambda: calls.append("warm-up") or 7) == 7
    assert calls == ["side waits for current", "on side", "warm-up", "off side",
                     "current waits for side"]
    calls.clear()
    graph, outputs = recorder.capture(lambda: calls.append("fn") or "outputs")
    assert outputs == "outputs"
    # recorded on the warm-up's side stream, one per recorder (not torch's per-process
    # default capture stream, made on whichever GPU records first)
    side = [stream for stream in made if stream.name == "side"]
    assert len(side) == 1
    assert calls == [("device", "cuda:1"), ("record", "Graph", {"stream": side[0]}), "begin",
                     "fn", "end", "device restored"]
    assert recorder.warm_up(lambda: 8) == 8
    assert len([stream for stream in made if stream.name == "side"]) == 1
    calls.clear()

    def interrupted() -> None:
        calls.append("step queued")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a check step that raises on the side stream:
        recorder.warm_up(interrupted)  # the current stream still waits for what it queued
    assert calls == ["side waits for current", "on side", "step queued", "off side",
                     "current waits for side"]
    graph.replay()
    graph.replay()
    assert calls[-2:] == ["replay", "replay"] and graph.replays == 2


def _fake_cupy(monkeypatch: Any, calls: list[Any], set_stream: Any) -> Any:
    """A stand-in for CuPy's stream capture API (``cupy.cuda``), logging into ``calls``."""

    class Ctx:
        def __init__(self, name: str) -> None:
            self.name = name

        def __enter__(self) -> Any:
            calls.append(f"enter {self.name}")
            return self

        def __exit__(self, *exc: Any) -> None:
            calls.append(f"exit {self.name}")

    class Stream(Ctx):
        ptr = 7

        def __init__(self, non_blocking: bool = False) -> None:
            super().__init__("stream")
            calls.append(("Stream", non_blocking))

        def wait_event(self, event: Any) -> None:
            calls.append(("wait", event))

        def record(self) -> str:
            return "event"

        def begin_capture(self) -> None:
            calls.append("begin_capture")

        def end_capture(self) -> Any:
            calls.append("end_capture")
            return types.SimpleNamespace(launch=lambda stream: calls.append(("launch", stream)))

    class Pool:
        def malloc(self, size: int) -> None:  # pragma: no cover - never allocates here
            raise AssertionError

    current = Stream()
    cuda = types.SimpleNamespace(
        Device=lambda device: Ctx(f"device {device}"), MemoryPool=Pool, Stream=Stream,
        get_current_stream=lambda: current, get_cublas_handle=lambda: "handle",
        cublas=types.SimpleNamespace(setStream=set_stream),
        using_allocator=lambda malloc: Ctx("private pool"))
    fake = types.ModuleType("cupy")
    fake.cuda = cuda  # type: ignore[attr-defined]
    fake.__version__ = "14.2.0"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_name_of_namespace", lambda xp: "cupy")
    return current


def test_cupy_refusing_cublas_in_a_recording_records_nothing(monkeypatch: Any) -> None:
    """CuPy (up to 14.2 at least) raises in cublas.setStream on a capturing stream, so a step's
    first matrix product would end the recording: nothing records on such a CuPy."""
    calls: list[Any] = []

    def refuse(handle: Any, stream: int) -> None:
        calls.append(("setStream", handle, stream))
        raise NotImplementedError("calling cuBLAS API during stream capture is currently "
                                  "unsupported")

    _fake_cupy(monkeypatch, calls, refuse)
    calls.clear()
    problem = backend.cupy_capture_problem(0)
    assert problem is not None and problem.startswith("CuPy 14.2.0 refuses cuBLAS calls")
    assert calls == ["enter device 0", ("Stream", True), "begin_capture",
                     ("setStream", "handle", 7), "end_capture", "exit device 0"]
    assert backend.graph_capture(object(), 0) is None

    def broken(handle: Any, stream: int) -> None:
        raise RuntimeError("no handle")

    _fake_cupy(monkeypatch, calls, broken)
    assert backend.cupy_capture_problem(0) == (
        "asking CuPy whether it records cuBLAS calls failed: RuntimeError: no handle")


def test_cupy_recorder_uses_stream_capture(monkeypatch: Any) -> None:
    calls: list[Any] = []
    set_streams: list[Any] = []
    current = _fake_cupy(monkeypatch, calls, lambda handle, stream: set_streams.append(stream))
    recorder = backend.graph_capture(object(), 0)
    assert set_streams == [7, 7]  # the capturing stream, then back to the current one
    assert recorder is not None and recorder.kind == "cupy.cuda.Graph"
    calls.clear()
    graph, outputs = recorder.capture(lambda: calls.append("fn") or ("loss", "out"))
    assert outputs == ("loss", "out")
    assert calls == ["enter device 0", ("Stream", True), ("wait", "event"), "enter stream",
                     "enter private pool", "begin_capture", "fn", "end_capture",
                     "exit private pool", "exit stream", "exit device 0"]
    graph.replay()
    assert calls[-1] == ("launch", current) and graph.replays == 1


@pytest.mark.parametrize("name", ["numpy", "torch"])
@pytest.mark.parametrize("optimizer", [
    lambda: nnxp.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda: nnxp.optim.SGD(lr=0.1, momentum=0.5, dampening=0.1),
    lambda: nnxp.optim.SGD(lr=0.1),
    lambda: nnxp.optim.RMSprop(lr=0.01, momentum=0.5, centered=True),
    lambda: nnxp.optim.Adagrad(lr=0.1),
    lambda: nnxp.optim.Adadelta(),
    lambda: nnxp.optim.Adam(lr=0.01, weight_decay=1e-3, amsgrad=True),
    lambda: nnxp.optim.AdamW(lr=0.01),
    lambda: nnxp.optim.Adamax(lr=0.01),
    lambda: nnxp.optim.Adagrad(lr=0.1, lr_decay=0.1),
    lambda: nnxp.optim.NAdam(lr=0.01, weight_decay=1e-3),
    lambda: nnxp.optim.NAdam(lr=0.01, weight_decay=1e-3, decoupled_weight_decay=True),
], ids=["sgd-nesterov-wd", "sgd-dampening", "sgd", "rmsprop", "adagrad", "adadelta", "adam",
        "adamw", "adamax", "adagrad-lr-decay", "nadam", "nadam-decoupled"])
def test_shipped_optimizers_and_batch_norm_are_recorded(monkeypatch: Any, name: str,
                                                        optimizer: Any) -> None:
    """Recorded and replayed (graphs and replays > 0) with BatchNorm1d, the default gate, a
    smaller last batch and a schedule halving lr (re-recording), bit-identical to capture=False:
    weights, running statistics, losses, and the host counts a replay advances by hand."""
    if name == "torch":
        pytest.importorskip("torch")
    X, y, w = _data()
    runs = []
    with nnxp.use_backend(name):
        for capture in (False, True):
            model = _bn_model()
            if capture:
                recorder = _recording(monkeypatch, model)
            history = model.fit(X, y, optimizer=optimizer(), epochs=3, batch_size=5,
                                sample_weight=w, verbose=0, metrics=["accuracy"],
                                callbacks=[HalveLr()], capture=capture)
            opt = model.optimizer
            counts = (opt.iterations, sorted((i, _host_fields(r)) for i, r in opt.state.items()),
                      sorted(_host_fields(u.state) for u in _flat_units(opt)),
                      model.layers[1].num_batches_tracked)
            runs.append((_weights(model), history.history["loss"],
                         history.history["accuracy"], counts, history.capture))
    (w0, loss0, acc0, counts0, _), (w1, loss1, acc1, counts1, report) = runs
    assert np.array_equal(w0, w1)
    assert loss0 == loss1 and acc0 == acc1
    assert counts0 == counts1 and counts0[0] == 15 and counts0[3] == 15  # NAdam's Π too
    assert report["not_recorded"] is None
    # lr halved twice: each epoch checks the full batches' shape again with an eager step and
    # records it once; the smaller last batch (one step per epoch) is always a check step
    assert report["graphs"] >= 3 and report["replays"] >= 8
    assert report["graphs"] == len(recorder.graphs)
    assert report["replays"] + report["static_steps"] == 15


def test_a_diverging_recorded_run_stops_where_the_plain_run_does(monkeypatch: Any) -> None:
    """The gate in a recorded step: one array updated in place, flags kept by the loop; a
    non-finite step (a huge input in epoch 2) is found at the same step, with the same weights,
    running statistics and step counts as without recording."""
    X, y, w = _data()
    X[17, 0] = 1e30  # its batch variance overflows float32 in BatchNorm1d: loss not finite
    results = []
    with nnxp.use_backend("numpy"):
        for capture in (False, True):
            model = _bn_model()
            if capture:
                _recording(monkeypatch, model)
            with pytest.raises(nnxp.TrainingDivergedError) as error:
                model.fit(X, y, optimizer=nnxp.optim.SGD(lr=0.1, momentum=0.9), epochs=2,
                          batch_size=5, verbose=0, shuffle=False, capture=capture)
            opt = model.optimizer
            results.append((_weights(model), str(error.value), opt.iterations,
                            sorted((i, r.step) for i, r in opt.state.items()),
                            model.layers[1].num_batches_tracked))
    (w0, message0, *counts0), (w1, message1, *counts1) = results
    assert np.isfinite(w0).all() and np.array_equal(w0, w1)
    assert message0 == message1 and "step 4 " in message0
    assert counts0 == counts1


def test_batch_norm_keeps_its_running_statistic_arrays_where_it_can(bk: Any) -> None:
    """In place on numpy/cupy/torch (the arrays a recorded step reads and writes outlive the
    steps), replaced on array-api-strict; a skipped (gated) step and an error mid-step put the
    values back into the same arrays."""
    X, y, _ = _data()
    model = _bn_model()
    layer = model.layers[1]
    before = dict(layer.buffers)
    model.fit(X, y, epochs=2, batch_size=5, verbose=0, optimizer=nnxp.optim.SGD(lr=0.1))
    kept = all(layer.buffers[k] is v for k, v in before.items())
    assert kept == backend.supports_inplace(bk.xp) == layer.buffers_in_place
    assert layer.num_batches_tracked == 10
    values = {k: nnxp.to_numpy(v).copy() for k, v in layer.buffers.items()}
    arrays = dict(layer.buffers)

    def fail(x: Any, *, training: bool = True) -> Any:
        raise RuntimeError("mid-step")

    model.layers[2].forward = fail  # after BatchNorm1d has updated its statistics
    with pytest.raises(RuntimeError, match="mid-step"):
        model.fit(X, y, epochs=1, batch_size=5, verbose=0)
    for k, v in layer.buffers.items():
        assert np.array_equal(nnxp.to_numpy(v), values[k])
        assert v is arrays[k]  # written back in place, or the old array put back
    assert layer.num_batches_tracked == 10


class ReplaceArrays(Callback):
    """After the given batches, assigns new arrays to a weight and to a BatchNorm running
    statistic (what a callback restoring a snapshot does)."""

    def __init__(self, when: tuple[int, ...]) -> None:
        self.batches, self.when = 0, when

    def on_batch_end(self, batch: int, logs: Any) -> None:
        self.batches += 1
        if self.batches in self.when:
            xp = self.model.xp
            dense, bn = self.model.layers[0], self.model.layers[1]
            dense.params["W"] = xp.asarray(dense.params["W"] * 0.5, copy=True)
            bn.buffers["running_mean"] = xp.asarray(bn.buffers["running_mean"] + 1.0,
                                                    copy=True)


@pytest.mark.parametrize("when", [(3, 7), (1,), (2,), (3, 4)],
                         ids=["after-replays", "after-check", "before-recording", "twice"])
def test_arrays_replaced_by_a_callback_are_taken_up_not_replayed_over(
        monkeypatch: Any, when: tuple[int, ...]) -> None:
    """A graph holds the arrays it was recorded on: after a callback replaced a weight and a
    running statistic — after replays, after the check step, between the check step and the
    recording — the step is checked and recorded (again) on the arrays the model holds, and
    the run equals the unrecorded one bit for bit (the fake recorder fails a replay whose
    arrays were replaced, as a real graph would silently train the old memory)."""
    X, y, w = _data()
    runs = []
    with nnxp.use_backend("numpy"):
        for capture in (False, True):
            model = _bn_model()
            if capture:
                recorder = _recording(monkeypatch, model)
            history = model.fit(X, y, optimizer=nnxp.optim.SGD(lr=0.1, momentum=0.9),
                                epochs=2, batch_size=5, sample_weight=w, verbose=0,
                                callbacks=[ReplaceArrays(when)], capture=capture)
            runs.append((_weights(model), history.history["loss"], history.capture))
    (w0, loss0, _), (w1, loss1, report) = runs
    assert np.array_equal(w0, w1) and loss0 == loss1
    assert report["not_recorded"] is None
    assert report["graphs"] == len(recorder.graphs) >= 2  # recorded again after a replacement
    assert report["replays"] > 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_step_table_numbers_are_the_host_numbers_bit_for_bit(bk: Any, dtype: str) -> None:
    """A step table's row, read with the device counter, gives the update the very numbers the
    host computes (rounded to the dtype as a Python float is): Adam, Adamax, Adagrad with a
    learning-rate decay and NAdam (its running product carried from row to row), 40 steps,
    bit-identical in place."""
    from nnxp.optim.steptable import StepTable

    if not backend.supports_inplace(bk.xp):
        pytest.skip("tables serve recorded steps, which need in-place arrays")
    rng = np.random.default_rng(5)
    opts = nnxp.optim
    cases = [(opts.Adam, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}, {}),
             (opts.Adamax, {"lr": 0.01, "betas": (0.8, 0.99)}, {"eps": 1e-6}),
             (opts.Adagrad, {"lr": 0.1, "lr_decay": 0.05}, {}),
             (opts.NAdam, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6,
                        "momentum_decay": 0.05}, {})]
    for cls, table_options, more in cases:
        values = rng.normal(size=(2, 6))
        runs = []
        for tabled in (False, True):
            param = bk.asarray(values[0], dtype=dtype)
            state = cls.init_state(param, xp=bk.xp)
            table = StepTable(cls.step_scalar_rows, bk.xp, param.dtype, bk.device)
            for step in range(40):
                grad = bk.asarray(values[1] * (step % 7 - 3), dtype=dtype)
                extra: dict[str, Any] = {}
                if tabled:
                    if not table.current(state.step, table_options):
                        table.fill(state, table_options)
                    extra = {"scalars": table.scalars()}
                param, state = cls.update(param, grad, state, **table_options, **more,
                                          xp=bk.xp, inplace=True, **extra)
                if tabled:
                    table.advance()
            runs.append(bk.to_numpy(param))
        assert np.array_equal(runs[0], runs[1]), cls.__name__


@pytest.mark.parametrize("make", [lambda: nnxp.optim.Adam(lr=0.01),
                                  lambda: nnxp.optim.NAdam(lr=0.01)], ids=["adam", "nadam"])
def test_step_tables_are_refilled_in_place_between_replays(monkeypatch: Any, make: Any) -> None:
    """With tables of 4 rows, 15 recorded steps refill them between replays (NAdam's from the
    running product the loop advanced by hand), into the same arrays (the graphs keep reading
    them), and stay bit-identical to capture=False, host state included."""
    from nnxp.optim import steptable

    monkeypatch.setattr(steptable, "LENGTH", 4)
    X, y, w = _data()
    runs = []
    fills: list[Any] = []
    original = steptable.StepTable.fill
    monkeypatch.setattr(steptable.StepTable, "fill",
                        lambda self, *a: (fills.append(id(self.rows)), original(self, *a))[1])
    with nnxp.use_backend("numpy"):
        for capture in (False, True):
            model = _bn_model()
            if capture:
                _recording(monkeypatch, model)
            opt = make()
            fills.clear()
            history = model.fit(X, y, optimizer=opt, epochs=3, batch_size=5, sample_weight=w,
                                verbose=0, capture=capture)
            runs.append((_weights(model), history.history["loss"], history.capture,
                         list(fills), sorted((i, _host_fields(r)) for i, r in opt.state.items())))
            assert not opt.step_tables()  # off again after fit
    (w0, loss0, _, fills0, host0), (w1, loss1, report, fills1, host1) = runs
    assert np.array_equal(w0, w1) and loss0 == loss1 and host0 == host1
    assert not fills0 and len(fills1) >= 15 // 4
    assert len(set(fills1[1:])) == 1  # after the first fill, always the same array
    assert report["not_recorded"] is None and report["replays"] >= 8


@pytest.mark.parametrize("change", ["momentum_decay", "loaded product"])
def test_recording_nadam_keeps_its_running_product_as_the_steps_left_it(
        monkeypatch: Any, change: str) -> None:
    """NAdam's Π after a recorded fit equals the eager run's bit for bit, also when it no
    longer equals the product recomputed from step 1 (the momentum decay changed between fits,
    or a checkpoint stored a rounded Π): a recording takes back exactly what its one Python
    run moved, and then one more eager epoch agrees too."""
    X, y, w = _data()
    runs = []
    with nnxp.use_backend("numpy"):
        for capture in (False, True):
            model = _mlp()
            opt = nnxp.optim.NAdam(lr=0.01, betas=(0.99, 0.999), momentum_decay=0.5)
            model.fit(X, y, optimizer=opt, epochs=1, batch_size=5, sample_weight=w, verbose=0)
            if change == "momentum_decay":
                opt.param_groups[0]["momentum_decay"] = 2.0
            else:
                saved = opt.state_dict()
                for record in saved["state"].values():
                    record["mu_product"] = float(np.float32(record["mu_product"]))
                opt.load_state_dict(saved)
            if capture:
                recorder = _recording(monkeypatch, model)
            history = model.fit(X, y, optimizer=opt, epochs=2, batch_size=5, sample_weight=w,
                                verbose=0, capture=capture)
            monkeypatch.undo()
            model.fit(X, y, optimizer=opt, epochs=1, batch_size=5, sample_weight=w, verbose=0)
            runs.append((_weights(model), sorted((i, _host_fields(r))
                                                 for i, r in opt.state.items()),
                         history.capture))
    (w0, host0, _), (w1, host1, report) = runs
    assert np.array_equal(w0, w1) and host0 == host1
    assert report["not_recorded"] is None and report["graphs"] == len(recorder.graphs) > 0


def test_fit_turns_off_only_the_step_tables_it_turned_on(monkeypatch: Any) -> None:
    X, y, w = _data()
    with nnxp.use_backend("numpy"):
        for before in (False, True):
            model, opt = _mlp(), nnxp.optim.Adam(lr=0.01)
            opt.bind(model.parameters())
            opt.use_step_tables(before)
            _recording(monkeypatch, model)
            history = model.fit(X, y, optimizer=opt, epochs=1, batch_size=5, sample_weight=w,
                                verbose=0, capture=True)
            assert history.capture["replays"] > 0
            assert opt.uses_step_tables is before


def test_use_step_tables_takes_a_flag_only() -> None:
    opt = nnxp.optim.Adam()
    with pytest.raises(TypeError, match=r"on must be True or False, got str 'no'"):
        opt.use_step_tables("no")  # type: ignore[arg-type]
    assert not opt.uses_step_tables
    assert opt.use_step_tables(True) and opt.uses_step_tables
    assert not opt.use_step_tables(False) and not opt.uses_step_tables


class _KeepsArrays(nnxp.metrics.Metric):
    """A metric that keeps the batches it is given and reduces them at the end (as an AUC
    would): the mean target and the mean of the outputs' first column."""

    name = "kept"

    def update(self, state: Any, outputs: Any, targets: Any, *, xp: Any) -> Any:
        return [*(state or []), (outputs, targets)]

    def result(self, state: Any, *, xp: Any) -> Any:
        ys = xp.concat([xp.astype(t, xp.float64) for _, t in state])
        outs = xp.concat([xp.astype(o[:, 0], xp.float64) for o, _ in state])
        return xp.mean(ys) + xp.mean(outs)


def test_a_metric_that_keeps_its_batches_gets_copies(bk: Any) -> None:
    """With capture a step's outputs and targets are static buffers, which the next step
    overwrites; a metric that may keep them (``holds_batch_arrays``, True unless declared
    otherwise) gets copies, and computes what it computes without capture."""
    if not backend.supports_inplace(bk.xp):
        pytest.skip("capture=True needs in-place writes")
    plain, captured = _metric_with_and_without_capture(_KeepsArrays)
    assert plain == captured
    assert nnxp.metrics.Accuracy.holds_batch_arrays is False  # reduced on the spot: no copy


def _metric_with_and_without_capture(make: Any) -> list[list[float]]:
    """The per-epoch values of metric ``make()`` in fits of the MLP without and with capture."""
    X, y, _ = _data()
    results = []
    for capture in (False, True):
        metric = make()
        history = _mlp().fit(X, y, optimizer=nnxp.optim.SGD(lr=0.1), epochs=2, batch_size=5,
                             metrics=[metric], verbose=0, capture=capture)
        results.append(history.history[metric.name])
    return results


class _AccuracyKeepingBatches(nnxp.metrics.Accuracy):
    """Accuracy that also keeps its batches (for a confusion matrix, say): overrides ``update``
    without declaring ``holds_batch_arrays``, so it inherits no False."""

    name = "kept_accuracy"

    def update(self, state: Any, outputs: Any, targets: Any, *, xp: Any) -> Any:
        return [*(state or []), (outputs, targets)]

    def result(self, state: Any, *, xp: Any) -> Any:
        hits = [xp.astype(xp.argmax(o, axis=1) == t, xp.float64) for o, t in state]
        return xp.mean(xp.concat(hits))


def test_a_declaration_holds_for_the_update_that_makes_it(bk: Any) -> None:
    from nnxp.metrics import Accuracy, MeanSquaredError, may_hold_batch_arrays

    assert not may_hold_batch_arrays(Accuracy())
    assert not may_hold_batch_arrays(MeanSquaredError())  # its parent's update, declared
    assert may_hold_batch_arrays(_KeepsArrays())  # the base class's default
    assert may_hold_batch_arrays(_AccuracyKeepingBatches())  # update overridden, undeclared
    declared = _AccuracyKeepingBatches()
    declared.holds_batch_arrays = False  # on the object: believed
    assert not may_hold_batch_arrays(declared)
    if not backend.supports_inplace(bk.xp):
        return
    plain, captured = _metric_with_and_without_capture(_AccuracyKeepingBatches)
    assert plain == captured
