"""The memory plan (nnxp.summary.memory_plan), the refusal at the start of fit, the memory
budget and the free-device-memory query (nnxp.backend)."""

from __future__ import annotations

import gc
import subprocess
import sys
import tracemalloc
import types
from typing import Any

import numpy as np
import pytest

import nnxp
from nnxp import backend, optim
from nnxp.layers import BatchNorm1d, Dense, Dropout, LayerNorm, ReLU, Tanh
from nnxp.summary import UPDATE_TEMPORARIES, memory_plan
from nnxp.training import MemoryPlanError, check_memory_plan


def _mlp(width: int) -> nnxp.Sequential:
    return nnxp.Sequential([Dense(width, width), ReLU(), Dense(width, width), ReLU(),
                            Dense(width, 10)], seed=0)


def _normed(width: int) -> nnxp.Sequential:
    return nnxp.Sequential([Dense(width, width), BatchNorm1d(width), Tanh(), Dropout(0.3),
                            Dense(width, width, activation="gelu"), LayerNorm(width),
                            Dense(width, 10)], seed=0)


CASES = [
    ("mlp", 256, 64, lambda: optim.SGD(lr=0.01)),
    ("mlp", 256, 64, lambda: optim.Adam()),
    ("mlp", 128, 256, lambda: optim.SGD(lr=0.01, momentum=0.9)),
    ("normed", 192, 256, lambda: optim.RMSprop(centered=True, momentum=0.9)),
    ("normed", 192, 128, lambda: optim.Adagrad()),
]


@pytest.mark.parametrize(("kind", "width", "batch", "make_opt"), CASES)
def test_plan_is_within_ten_percent_of_the_measured_peak(kind, width, batch, make_opt) -> None:
    """The plan's total against tracemalloc's peak over training steps on NumPy (NumPy reports
    its allocations to tracemalloc): everything the steps allocate, model included."""
    build = _mlp if kind == "mlp" else _normed
    rng = np.random.default_rng(0)
    X = rng.random((batch, width), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    with nnxp.use_backend("numpy"):
        plan = memory_plan(build(width), batch, optimizer=make_opt())
        gc.collect()
        tracemalloc.start()
        try:
            model, opt = build(width), make_opt()
            xb = np.array(X, copy=True)  # the batch, as fit's loop holds it
            for _ in range(3):
                model.train_on_batch(xb, y, optimizer=opt)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    total = plan.memory["total"]
    assert abs(total - peak) <= 0.10 * peak, (total, peak, plan.memory)


def _measured_temporaries(opt: Any) -> float:
    layer = types.SimpleNamespace(params={"W": np.ones((256, 256), np.float32)},
                                  grads={"W": np.full((256, 256), 0.5, np.float32)})
    opt.bind([(layer, "W")])
    opt.step()  # the state exists from here on
    tracemalloc.start()
    try:
        opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / (256 * 256 * 4)


OPTIMIZER_CASES = [
    ("SGD", {"lr": 0.1}), ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    ("Adam", {}), ("Adam", {"amsgrad": True}), ("Adam", {"weight_decay": 0.1}), ("AdamW", {}),
    ("Adamax", {}), ("NAdam", {}), ("Adagrad", {}), ("RMSprop", {}),
    ("RMSprop", {"centered": True, "momentum": 0.9}), ("Adadelta", {}),
]


@pytest.mark.parametrize(("name", "options"), OPTIMIZER_CASES)
def test_update_temporaries_match_the_kernels(name, options) -> None:
    """The table of UPDATE_TEMPORARIES is what each in-place update really allocates."""
    with nnxp.use_backend("numpy"):
        measured = _measured_temporaries(getattr(optim, name)(**options))
    planned = UPDATE_TEMPORARIES[name](options)
    assert measured == pytest.approx(planned, abs=0.05), (measured, planned)


@pytest.mark.parametrize(("make", "arrays"), [
    (lambda: optim.SGD(lr=0.1), 0), (lambda: optim.SGD(lr=0.1, momentum=0.9), 1),
    (lambda: optim.Adam(), 2), (lambda: optim.Adam(amsgrad=True), 3), (lambda: optim.AdamW(), 2),
    (lambda: optim.RMSprop(), 1), (lambda: optim.RMSprop(centered=True, momentum=0.5), 3),
    (lambda: optim.Adagrad(), 1), (lambda: optim.Adadelta(), 2), (lambda: optim.NAdam(), 2),
    (lambda: optim.Adamax(), 2), (lambda: optim.LBFGS(history_size=5), 14),
])
def test_optimizer_state_comes_from_the_optimizers_declared_state(make, arrays) -> None:
    model = _mlp(8)
    n = model.count_params()
    plan = memory_plan(model, 4, optimizer=make())  # never bound: planned before fit
    assert plan.memory["optimizer_state"] == 4 * n * arrays
    assert model.optimizer is None


def test_parameter_groups_plan_their_own_state() -> None:
    model = _mlp(8)
    first = model.layers[0]
    opt = optim.SGD(lr=0.1, param_groups=[{"params": [(first, "W"), (first, "b")],
                                           "momentum": 0.9}])
    opt.bind(model.parameters())
    plan = memory_plan(model, 4, optimizer=opt)
    rows = [r for r in plan.rows if r["index"] is not None]
    assert rows[0]["optimizer_bytes"] == 4 * (8 * 8 + 8)
    assert rows[2]["optimizer_bytes"] == 0


def test_rows_count_each_cached_array_once_and_name_every_column() -> None:
    model = nnxp.Sequential([Dense(5, 16), ReLU(), Dropout(0.5), Dense(16, 3)], seed=0)
    plan = memory_plan(model, 10, optimizer=optim.SGD(lr=0.1, momentum=0.9))
    rows = {r["layer"]: r for r in plan.rows}
    assert rows["input batch"]["activation_bytes"] == 10 * 5 * 4  # Dense(5, 16) keeps it
    assert rows["Dense(5, 16)"]["activation_bytes"] == 0  # its output: ReLU keeps its own
    assert rows["ReLU()"]["activation_bytes"] == 10 * 16 * 4
    # Dropout: the mask, and its output (the next Dense's input), once each
    assert rows["Dropout(p=0.5)"]["activation_bytes"] == 2 * 10 * 16 * 4
    assert rows["Dense(16, 3)"]["activation_bytes"] == 10 * 3 * 4  # the outputs, for metrics
    assert rows["loss cache"]["activation_bytes"] == 10 * 2 * 3 * 4
    assert rows["Dense(5, 16)"]["param_bytes"] == rows["Dense(5, 16)"]["grad_bytes"] == 4 * 96
    assert rows["Dense(5, 16)"]["optimizer_bytes"] == 4 * 96
    mem = plan.memory
    assert mem["activations"] == sum(r["activation_bytes"] for r in plan.rows)
    assert mem["total"] == sum(mem[k] for k in ("parameters", "gradients", "buffers",
                                                "optimizer_state", "activations",
                                                "workspace"))
    assert plan.total_for(10) == mem["total"]
    assert plan.activation_per_sample * 10 + plan.activation_fixed == mem["activations"]


def test_mixed_precision_plan() -> None:
    model = _mlp(16)
    n = model.count_params()
    full = memory_plan(model, 8)
    half = memory_plan(model, 8, precision="float16")
    bf = memory_plan(model, 8, precision="bfloat16")
    assert half.memory["parameters"] == n * (4 + 2)  # float32 masters + float16 copies
    assert half.memory["gradients"] == full.memory["gradients"] == 4 * n
    rows = {r["layer"]: r for r in half.rows}
    assert rows["input batch"]["activation_bytes"] == 8 * 16 * 2
    assert rows["loss cache"]["activation_bytes"] == 8 * 2 * 10 * 4  # float32 loss
    assert bf.memory == half.memory
    text = model.summary(8, precision="float16", print_summary=False)
    assert "mixed precision float16 (master float32)" in text
    with pytest.raises(ValueError, match="precision"):
        memory_plan(model, 8, precision="float8")


def test_unknown_layer_is_flagged_as_estimated() -> None:
    class Twice(nnxp.layers.Identity):
        def forward(self, x, *, training=True):
            return super().forward(x, training=training) * 2

    model = nnxp.Sequential([Dense(4, 4), Twice(), Dense(4, 2)], seed=0)
    text = model.summary(3, print_summary=False)
    assert "Twice() ~" not in text  # a subclass of a known layer uses its rule
    plan = memory_plan(nnxp.Sequential([Dense(4, 4), _Opaque(), Dense(4, 2)], seed=0), 3)
    assert any(r["estimated"] for r in plan.rows)
    assert any("not known" in note for note in plan.notes)


class _Opaque(nnxp.layers.Layer):
    def forward(self, x, *, training=True):
        self._cache = x if training else None
        return x + 1

    def backward(self, dy):
        self._cache = None
        return dy


def test_largest_batch_size_is_the_boundary() -> None:
    plan = memory_plan(_mlp(32), 16, optimizer=optim.Adam())
    limit = plan.total_for(100) + 5
    best = plan.largest_batch_size(limit)
    assert best >= 100
    assert plan.total_for(best) <= limit < plan.total_for(best + 1)
    assert plan.largest_batch_size(plan.total_for(1) - 1) == 0


# --- fit refuses up front -------------------------------------------------------------------


def test_fit_refuses_a_plan_over_the_budget_before_any_step() -> None:
    model = _mlp(32)
    before = [np.array(p) for layer in model.layers for p in layer.params.values()]
    X = np.random.default_rng(0).random((64, 32), dtype=np.float32)
    y = np.arange(64) % 10
    opt = optim.Adam()
    plan = memory_plan(model, 64, optimizer=opt)
    labels = 64 * 8  # fit's int64 copy of the labels, which the budget covers too
    # fit keeps no copy of the weights: the plan and the labels are all it needs
    budget = plan.total_for(20) + labels
    with pytest.raises(MemoryPlanError) as err:
        model.fit(X, y, optimizer=opt, batch_size=64, epochs=1, verbose=0, memory_budget=budget)
    message = str(err.value)
    needed = plan.memory["total"] + labels
    assert f"needs {needed:,} bytes" in message and f"but {budget:,} bytes" in message
    assert "the memory_budget argument" in message
    assert "512 B for the training data fit placed on the device" in message
    best = plan.largest_batch_size(budget, extra=labels)
    assert f"the largest batch size that fits is {best}" in message and 20 <= best < 64
    assert opt.iterations == 0
    after = [np.array(p) for layer in model.layers for p in layer.params.values()]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    # the suggested batch size trains
    model.fit(X, y, optimizer=opt, batch_size=best, epochs=1, verbose=0, memory_budget=budget)
    assert opt.iterations > 0
    # accumulation adds one set of gradients to the plan of its micro-batches
    with pytest.raises(MemoryPlanError, match="the gradient sum of accumulate=2"):
        model.fit(X, y, optimizer=opt, batch_size=best, epochs=1, verbose=0,
                  memory_budget=budget, accumulate=2)
    model.fit(X, y, optimizer=opt, batch_size=best, epochs=1, verbose=0, accumulate=2,
              memory_budget=plan.total_for(best) + plan.memory["gradients"] + labels)


def test_configured_budget_and_environment(monkeypatch) -> None:
    model = _mlp(16)
    X, y = np.zeros((8, 16), np.float32), np.arange(8) % 10
    previous = nnxp.set_memory_budget("1KiB")
    try:
        assert nnxp.get_memory_budget() == 1024
        with pytest.raises(MemoryPlanError, match="the configured budget.*no batch size fits"):
            model.fit(X, y, epochs=1, verbose=0)
        model.fit(X, y, epochs=1, verbose=0, memory_budget="1GB")  # the argument wins
    finally:
        nnxp.set_memory_budget(previous)
    model.fit(X, y, epochs=1, verbose=0)  # a CPU backend without a budget: no check
    out = subprocess.run([sys.executable, "-c", "import nnxp; print(nnxp.get_memory_budget())"],
                         env={**__import__("os").environ, "NNXP_MEMORY_BUDGET": "1.5 GiB"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(int(1.5 * 2**30))


@pytest.mark.parametrize(("value", "expected"), [
    (1000, 1000), ("2e3", 2000), ("8GiB", 8 * 2**30), ("512 MB", 512 * 10**6), ("1.5k", 1500),
])
def test_parse_bytes(value, expected) -> None:
    assert backend.parse_bytes(value) == expected


@pytest.mark.parametrize(("value", "error", "message"), [
    ("lots", ValueError, "memory_budget must be a number of bytes.*'lots'"),
    ("5 parsecs", ValueError, "'5 parsecs'"), (0, ValueError, "at least 1 byte"),
    (True, TypeError, "memory_budget"), ([1], TypeError, "got list"),
])
def test_bad_budgets_name_the_argument(value, error, message) -> None:
    with pytest.raises(error, match=message):
        nnxp.set_memory_budget(value)
    with pytest.raises(error, match=message):
        _mlp(4).fit(np.zeros((4, 4), np.float32), np.zeros(4, int), epochs=1, verbose=0,
                    memory_budget=value)


def test_free_memory_of_a_gpu_backend_limits_fit(monkeypatch) -> None:
    monkeypatch.setattr(backend, "free_device_memory", lambda xp=None, device=None: 30_000)
    model = _mlp(32)
    with pytest.raises(MemoryPlanError, match=r"but 30,000 bytes .*\(free device memory\)"):
        model.fit(np.zeros((64, 32), np.float32), np.zeros(64, int), epochs=1, verbose=0)
    limit = backend.available_memory(20_000)
    assert limit.nbytes == 20_000 and "device has 30,000 bytes free" in limit.source
    assert backend.available_memory(10**9).nbytes == 30_000  # free memory is the smaller


def test_free_device_memory_on_fake_gpus(monkeypatch) -> None:
    calls: list[Any] = []

    class Pool:
        def free_bytes(self) -> int:
            return 300

    class Device:
        def __init__(self, dev: Any) -> None:
            calls.append(("device", dev))

        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: Any) -> None:
            return None

    cupy = types.SimpleNamespace(
        cuda=types.SimpleNamespace(Device=Device, runtime=types.SimpleNamespace(
            memGetInfo=lambda: (7000, 9000))),
        get_default_memory_pool=Pool)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(backend, "_default", backend.BackendInfo("cupy", None, 1))
    assert backend.free_device_memory() == 7300
    assert calls == [("device", 1)]
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(backend, "_default", backend.BackendInfo(
        "torch", None, types.SimpleNamespace(type="cuda")))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (5000, 8000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda dev: 900)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev: 400)
    assert backend.free_device_memory() == 5500
    monkeypatch.setattr(backend, "_default", backend.BackendInfo("torch", None, "cpu"))
    assert backend.free_device_memory() is None


def _layers_for_temporaries() -> dict[str, Any]:
    L = nnxp.layers
    w = 128
    return {"Dense": L.Dense(w, w), "ReLU": L.ReLU(), "Sigmoid": L.Sigmoid(), "Tanh": L.Tanh(),
            "LeakyReLU": L.LeakyReLU(), "ELU": L.ELU(), "SELU": L.SELU(), "GELU": L.GELU(),
            "GELU(tanh)": L.GELU("tanh"), "SiLU": L.SiLU(), "Softplus": L.Softplus(),
            "Softmax": L.Softmax(), "PReLU": L.PReLU(), "RReLU": L.RReLU(),
            "BatchNorm1d": L.BatchNorm1d(w), "LayerNorm": L.LayerNorm(w),
            "Dropout": L.Dropout(0.3), "Identity": L.Identity(), "Standardize": L.Standardize(w),
            "PiecewiseLinear": L.PiecewiseLinear(), "Step": L.Step(), "Sign": L.Sign(),
            "Maxout": L.Maxout(w, w, k=2)}


@pytest.mark.parametrize("name", sorted(_layers_for_temporaries()))
def test_layer_temporaries_match_the_kernels(name) -> None:
    """LAYER_TEMPORARIES against tracemalloc, with arrays of 128 KiB (below NumPy's 256 KiB
    threshold for reusing temporaries in place, so the count is what a GPU allocates)."""
    from nnxp.summary import LAYER_TEMPORARIES

    with nnxp.use_backend("numpy"):
        layer = _layers_for_temporaries()[name]
        rng = np.random.default_rng(0)
        x = rng.random((256, 128), dtype=np.float32)
        dy = rng.random((256, 128), dtype=np.float32)
        unit = x.nbytes
        layer.forward(x, training=True)
        layer.backward(dy)
        tracemalloc.start()
        try:
            out = layer.forward(x, training=True)
            after_forward, forward_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            dx = layer.backward(dy)
            _, backward_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        weights = sum(g.nbytes for g in layer.grads.values())
        new_dx = 0 if dx is dy else dx.nbytes
    del out
    fwd = (forward_peak - after_forward) / unit
    bwd = (backward_peak - after_forward - new_dx - weights) / unit
    planned_fwd, planned_bwd = LAYER_TEMPORARIES[name]
    assert planned_fwd - 0.05 <= fwd <= planned_fwd + 0.35, (fwd, planned_fwd)
    assert planned_bwd - 0.05 <= bwd <= planned_bwd + 0.35, (bwd, planned_bwd)


def test_data_fit_places_on_the_device_counts_against_a_budget() -> None:
    """A budget covers what fit allocates: the copy of the training data it makes (float64
    inputs cast to the model's float32) is added to the plan; inputs used as they are (already
    float32 NumPy on the numpy backend) are the caller's memory and are not."""
    model = _mlp(32)
    rng = np.random.default_rng(0)
    X32 = rng.random((64, 32), dtype=np.float32)
    y = np.arange(64) % 10
    opt = optim.SGD(lr=0.01)
    plan = memory_plan(model, 64, optimizer=opt)
    budget = plan.memory["total"] + 1024  # the step and the labels fit, a copy of X does not
    model.fit(X32, y, optimizer=opt, batch_size=64, epochs=1, verbose=0, memory_budget=budget)
    # X cast to float32 (8 KiB) and the labels as int64 (512 B)
    with pytest.raises(MemoryPlanError, match=r"plus 8\.5 KiB for the training data fit "
                                              r"placed on the device"):
        model.fit(X32.astype(np.float64), y, optimizer=opt, batch_size=64, epochs=1,
                  verbose=0, memory_budget=budget)
    with pytest.raises(MemoryPlanError, match="the training data fit placed on the device"):
        model.fit(X32, y, optimizer=opt, batch_size=64, epochs=1, verbose=0,
                  memory_budget=budget, validation_data=(X32.astype(np.float64), y))


def test_a_stream_counts_its_two_device_chunks() -> None:
    from nnxp import data

    rng = np.random.default_rng(1)
    parts = [(rng.random((n, 8), dtype=np.float32), np.arange(n) % 3) for n in (40, 30, 50)]
    model = nnxp.Sequential([Dense(8, 3)], seed=0)
    stream = data.Stream(data.Chunks(parts), model)
    # the two largest chunks: 50 and 40 rows of 8 float32 features and an 8-byte label
    assert stream.device_bytes() == (50 + 40) * (8 * 4 + 8)
    plan = memory_plan(model, 16, optimizer=optim.SGD(lr=0.1))
    budget = plan.memory["total"] + 100
    assert check_memory_plan(model, optim.SGD(lr=0.1), batch_size=16,
                             memory_budget=budget) is not None
    with pytest.raises(MemoryPlanError, match=r"the two chunks of the data stream.*"
                                              r"or stream smaller chunks \(two of the largest "
                                              r"take 3\.5 KiB: cut the nnxp\.data\.Chunks"):
        check_memory_plan(model, optim.SGD(lr=0.1), batch_size=16, memory_budget=budget,
                          stream_bytes=stream.device_bytes())
