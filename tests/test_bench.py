"""The benchmark machinery (nnxp.bench, benchmarks/report.py): it must run, not be fast.

Speed is never asserted here. What is checked: configuration parsing, FLOP and byte counts
against hand counts, that every discovered workload builds and runs on every backend, the
peak-memory accounting, the `nnxp bench` command, and the report's ratios.
"""

from __future__ import annotations

import importlib.util
import json
import math
import types
from pathlib import Path
from typing import Any

import pytest

import nnxp
from nnxp import bench, cli

REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"


def test_sizes_by_name_and_by_list() -> None:
    assert bench.selected_sizes("quick") == [(32, 128)]
    assert (4096, 4096) in bench.selected_sizes("full")
    assert bench.selected_sizes("8x16, 32x64".replace(" ", "")) == [(8, 16), (32, 64)]
    with pytest.raises(ValueError, match="NNXP_BENCH_SIZES.*'huge'"):
        bench.selected_sizes("huge")


def test_sizes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNXP_BENCH_SIZES", "16x8")
    assert bench.selected_sizes() == [(16, 8)]
    monkeypatch.delenv("NNXP_BENCH_SIZES")
    assert bench.selected_sizes() == bench.SIZE_SETS["default"]


def test_backends_absent_ones_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    assert bench.selected_backends("numpy,no_such_lib") == ["numpy"]
    monkeypatch.setenv("NNXP_BENCH_BACKENDS", "numpy")
    assert bench.selected_backends() == ["numpy"]
    assert bench.unavailable_reason("no_such_lib") is not None
    assert bench.is_gpu("torch:cuda") and bench.is_gpu("cupy") and not bench.is_gpu("torch:cpu")


def test_step_flops_by_hand() -> None:
    # 64-128-10 at batch 32: layer 1 needs x W and xᵀ dy; layer 2 also dy Wᵀ
    expected = 2 * (2 * 32 * 64 * 128) + 3 * (2 * 32 * 128 * 10)
    assert bench.step_flops([64, 128, 10], 32) == expected


def test_registries_are_discovered() -> None:
    acts = bench.activation_classes()
    assert "relu" in acts
    assert len({id(c) for c in acts.values()}) == len(acts)  # aliases timed once
    opts = bench.optimizer_classes()
    assert "sgd" in opts and not set(opts) & bench.CLOSURE_OPTIMIZERS
    assert bench.DEFAULT_OPTIMIZER in opts and {"adam", "sgd"} <= set(opts)
    assert set(acts) >= {"relu", "sigmoid", "softmax"}
    with pytest.raises(ValueError, match="optimizer 'nope'"):
        bench.make_optimizer("nope")


def test_every_kernel_case_runs_on_every_backend(bk: Any) -> None:
    cases = bench.kernel_cases(bk.spec, 4, 8)
    names = {(c.workload, c.op, c.impl) for c in cases}
    assert {("dense", "forward", "nnxp"), ("dense", "backward", "matmul-bound"),
            ("batchnorm", "backward", "nnxp"), ("dropout", "backward", "nnxp")} <= names
    assert all((n, "backward", "nnxp") in names for n in bench.activation_classes())
    assert all((n, "forward", "nnxp") in names for n in nnxp.losses.LOSSES)
    assert all((n, "update", "nnxp") in names for n in bench.optimizer_classes())
    for case in cases:
        with nnxp.use_backend(case.backend):
            setup, run = case.build()
            run(setup())
            run(setup())  # twice: a backward needs its setup's fresh forward every time


def test_model_step_case_runs_and_trains(bk: Any) -> None:
    step, bound, epoch = bench.model_cases(bk.spec, "small", "sgd")
    assert (step.impl, bound.impl, epoch.op) == ("nnxp", "matmul-bound", "epoch")
    assert step.flops == bound.flops == bench.step_flops([64, 128, 10], 32)
    with nnxp.use_backend(bk.spec):
        model = bench.build_mlp([64, 128, 10])
        opt = bench.make_optimizer("sgd")
        opt.bind(model.parameters())
        x, y = bench.model_inputs("small", model.xp, model.device)
        first = nnxp.backend.to_float(bench.train_step(model, opt, x, y))
        for _ in range(20):
            last = nnxp.backend.to_float(bench.train_step(model, opt, x, y))
        assert math.isfinite(first) and last < first  # the timed step really trains
        setup, run = bound.build()
        run(setup())


def test_time_case_counts_rounds() -> None:
    case = bench.kernel_cases("numpy", 4, 8)[0]
    timing = bench.time_case(case, budget=0.01, warmup=1)
    assert timing.rounds >= 3 and 0 < timing.min <= timing.median
    assert bench.plan_rounds(0.1, budget=1.0) == 10
    assert bench.plan_rounds(10.0, budget=1.0) == 3


def test_live_set_counts_bytes_by_hand() -> None:
    with nnxp.use_backend("numpy") as info:
        model = bench.build_mlp([6, 5, 3])
        opt = bench.make_optimizer("sgd")
        opt.bind(model.parameters())
        x = bench._data((4, 6), 0, info.xp, info.device)
        y = bench._labels(4, 3, 1, info.xp, info.device)
        parts = bench.live_set(model, opt, x, y)
    n_params = 6 * 5 + 5 + 5 * 3 + 3
    assert parts["params"] == parts["grads"] == 4 * n_params
    assert parts["activations"] >= 4 * 4 * 5  # at least the ReLU output the next layer keeps


def test_live_set_counts_adam_moments() -> None:
    with nnxp.use_backend("numpy") as info:
        model = bench.build_mlp([6, 5, 3])
        opt = bench.make_optimizer("adam")
        opt.bind(model.parameters())
        x = bench._data((4, 6), 0, info.xp, info.device)
        y = bench._labels(4, 3, 1, info.xp, info.device)
        parts = bench.live_set(model, opt, x, y)
    assert parts["optimizer_state"] == 2 * parts["params"]


def test_peak_memory_on_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bench.MODELS, "tiny", {"widths": [32, 64, 10], "batch": 16,
                                               "epoch_samples": 64, "gpu_only": False})
    result = bench.peak_memory("numpy", "tiny", "sgd", steps=2)
    assert result["method"] == "tracemalloc"
    assert result["peak_bytes"] > result["params"] + result["grads"]
    assert 1.0 < result["ratio"] < 10.0
    assert result["data_bytes"] >= 16 * 32 * 4
    bench.peak_memory("numpy", "tiny", "sgd", steps=2, via="fit")  # first-call imports, memos
    in_fit = bench.peak_memory("numpy", "tiny", "sgd", steps=2, via="fit")
    assert in_fit["via"] == "fit" and in_fit["peak_bytes"] > in_fit["params"]
    lean = bench.peak_memory("numpy", "tiny", "sgd", steps=2, via="fit-lean")
    # issue 11: the default fit's divergence guard is a device-side gate, not a copy of the
    # parameters: the two peaks differ by less than one set of parameters (either way: the
    # ungated update's temporary spans a whole flat unit, the gate's one parameter at a time)
    assert abs(in_fit["peak_bytes"] - lean["peak_bytes"]) < in_fit["params"]
    with pytest.raises(ValueError, match="via must be"):
        bench.peak_memory("numpy", "tiny", "sgd", via="epoch")


def test_peak_memory_not_measurable_on_torch_cpu() -> None:
    pytest.importorskip("torch")
    monkey = {"widths": [8, 4], "batch": 2, "epoch_samples": 4, "gpu_only": False}
    bench.MODELS["tiny-torch"] = monkey
    try:
        result = bench.peak_memory("torch:cpu", "tiny-torch", "sgd", steps=1)
    finally:
        del bench.MODELS["tiny-torch"]
    assert result["peak_bytes"] is None and result["ratio"] is None


def test_machine_info_names_cpu_threads_and_versions() -> None:
    info = bench.machine_info()
    assert info["cores"] >= 1 and info["cpu"]
    assert "numpy" in info["versions"] and "array-api-compat" in info["versions"]
    assert "threadpools" in info


def test_cli_bench_quick_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    status = cli.main(["bench", "--quick", "--backends", "numpy", "--sizes", "4x8",
                       "--optimizer", "sgd", "--models", "small", "--json", str(out)])
    assert status == 0
    data = json.loads(out.read_text())
    impls = {(r["key"], r["impl"]) for r in data["rows"]}
    assert ("mlp-small.step[small/sgd]", "matmul-bound") in impls
    assert ("dense.backward[4x8]", "nnxp") in impls
    assert data["memory"][0]["ratio"] > 1.0
    text = capsys.readouterr().out
    assert "| numpy | mlp-small.step[small/sgd] |" in text and "peak memory" in text


def test_cli_bench_rejects_unknown_backend_and_optimizer(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--quick", "--backends", "nothing"]) == 2
    assert "none of the backends" in capsys.readouterr().err
    assert cli.main(["bench", "--quick", "--backends", "numpy", "--optimizer", "nope"]) == 2
    assert "optimizer 'nope'" in capsys.readouterr().err
    assert cli.main(["bench", "--backends", "numpy", "--models", "huge"]) == 2
    assert "unknown model(s) ['huge']" in capsys.readouterr().err


def _report() -> Any:
    spec = importlib.util.spec_from_file_location("nnxp_bench_report", REPORT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench_row(impl: str, backend: str, median: float, device: str = "cpu",
               group: str = "step", flops: float | None = None) -> dict[str, Any]:
    key = "mlp-big.step[big/sgd]"
    return {"name": f"{impl}-{backend}", "stats": {"median": median, "min": median,
                                                   "stddev": 0.0, "rounds": 5},
            "extra_info": {"group": group, "workload": "mlp-big", "op": "step",
                           "size": "big/sgd", "impl": impl, "backend": backend, "key": key,
                           "flops": flops, "device": device}}


def test_report_ratios_and_gpu_speedup(tmp_path: Path) -> None:
    report = _report()
    data = {"benchmarks": [_bench_row("nnxp", "numpy", 0.020, flops=4e9),
                           _bench_row("torch", "torch:cpu", 0.040),
                           _bench_row("matmul-bound", "numpy", 0.015),
                           _bench_row("numpy-by-hand", "numpy", 0.016),
                           _bench_row("nnxp", "cupy", 0.002, device="gpu")],
            "machine_info": {"nnxp": {"cpu": "Test CPU", "cores": 2}}}
    rows = report.load_rows(data)
    text = report.markdown(data, rows)
    line = next(ln for ln in text.splitlines() if ln.startswith("| mlp-big sgd | step | numpy"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # nnxp/torch = 0.5, nnxp/by-hand = 1.25, bound/nnxp = 75 %
    assert cells[-3:] == ["0.50", "1.25", "75%"]
    assert "| mlp-big.step[big/sgd] | cupy | 10.0× |" in text
    assert "Test CPU, 2 cores" in text
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    assert report.main([str(path), "--no-chart"]) == 0
    assert (tmp_path / "r.md").read_text() == text


# --- GPU timing, peak memory and the GPU check (fakes where a GPU would be needed) -----------

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _FakeClock:
    """Stands in for the time module: advances only when a fake call runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_warm_up_never_plans_from_the_cold_call(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    durations = iter([1.0, 0.5, 0.25, 0.125, 0.125, 0.125])

    def run(_: Any) -> None:
        clock.now += next(durations)

    cpu = bench.warm_up(lambda: None, run, lambda: None, warmup=1, budget=10.0)
    assert cpu == [1.0, 0.5]  # at least two calls; the second (warm) one plans
    durations = iter([1.0, 0.5, 0.25, 0.125, 0.125, 0.125])
    gpu = bench.warm_up(lambda: None, run, lambda: None, warmup=1, gpu=True, budget=10.0)
    assert gpu == [1.0, 0.5, 0.25, 0.125, 0.125]  # on a GPU: until calls stop getting faster
    durations = iter([1.0] + [0.5 ** k for k in range(1, 20)])
    capped = bench.warm_up(lambda: None, run, lambda: None, gpu=True, budget=100.0)
    assert len(capped) == bench.GPU_WARMUP_MAX_CALLS


class _FakeEvents:
    """An EventTimer look-alike: runs the call, reports a fixed device time."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls = seconds, 0

    def time(self, fn: Any, *args: Any) -> float:
        fn(*args)
        self.calls += 1
        return self.seconds


def test_short_gpu_calls_are_timed_with_events(monkeypatch: pytest.MonkeyPatch) -> None:
    events = _FakeEvents(7e-6)
    monkeypatch.setattr(bench.backend, "event_timer", lambda: events)
    case = bench.kernel_cases("numpy", 4, 8)[0]  # microseconds: far below EVENTS_BELOW
    timing = bench.time_case(case, budget=0.01)
    assert timing.timer == "cuda-events" and timing.median == timing.min == 7e-6
    assert events.calls == timing.rounds >= 3 and timing.warmup_calls >= 2
    monkeypatch.setattr(bench, "EVENTS_BELOW", 0.0)  # every call is now "long"
    timing = bench.time_case(case, budget=0.01)
    assert timing.timer == "host" and timing.median != 7e-6
    monkeypatch.setattr(bench.backend, "event_timer", lambda: None)  # a CPU backend
    monkeypatch.setattr(bench, "EVENTS_BELOW", 1.0)
    assert bench.time_case(case, budget=0.01).timer == "host"


def test_pytest_benchmark_reports_the_event_time(benchmark: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    conftest = _load("nnxp_bench_conftest", ROOT / "benchmarks" / "conftest.py")
    monkeypatch.setattr(bench.backend, "event_timer", lambda: _FakeEvents(3e-6))
    case = bench.kernel_cases("numpy", 4, 8)[0]
    conftest.run_case(benchmark, case, budget=0.005)
    assert benchmark.extra_info["timer"] == "cuda-events"
    assert benchmark.stats.stats.median == pytest.approx(3e-6)
    assert benchmark.stats.stats.max == pytest.approx(3e-6)


class _Recorder:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def record(self, stream: Any = None) -> None:
        self.log.append(f"record {self.name}")

    def synchronize(self) -> None:
        self.log.append(f"sync {self.name}")


def _fake_cupy(log: list[str], used: list[int]) -> Any:
    import types

    hooks: dict[str, Any] = {}

    class MemoryHook:
        name = "MemoryHook"

        def __enter__(self) -> Any:
            hooks[self.name] = self
            return self

        def __exit__(self, *exc: Any) -> None:
            del hooks[self.name]

    class Pool:
        def used_bytes(self) -> int:
            return used[0]

        def total_bytes(self) -> int:
            return 10 ** 9  # cached blocks: must not be reported

    names = iter(["start", "end"])
    cuda = types.SimpleNamespace(Event=lambda: _Recorder(log, next(names)),
                                 get_elapsed_time=lambda a, b: 2.5, MemoryHook=MemoryHook)
    return types.SimpleNamespace(cuda=cuda, get_default_memory_pool=Pool, hooks=hooks)


def test_event_timer_and_high_water_mark_on_a_fake_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    used = [1000]
    cupy = _fake_cupy(log, used)
    monkeypatch.setitem(__import__("sys").modules, "cupy", cupy)
    monkeypatch.setattr(nnxp.backend, "_default", nnxp.backend.BackendInfo("cupy", None, None))
    assert nnxp.backend.gpu_library() == "cupy"
    seconds = nnxp.backend.event_timer().time(lambda: log.append("call"))  # type: ignore[union-attr]
    assert seconds == 2.5e-3
    assert log == ["record start", "call", "record end", "sync end"]
    with nnxp.backend.memory_high_water() as mem:
        assert mem is not None and mem.peak() == 1000
        (hook,) = cupy.hooks.values()
        for now in (5000, 3000, 8000, 2000):  # allocations come and go
            used[0] = now
            hook.malloc_postprocess(device_id=0, size=1, mem_size=512, mem_ptr=1, pmem_id=1)
        used[0] = 9000
        hook.malloc_postprocess(device_id=0, size=1, mem_size=512, mem_ptr=0, pmem_id=0)
        used[0] = 2000
        assert mem.peak() == 8000 and mem.current() == 2000  # a failed malloc is not counted
        mem.reset()
        assert mem.peak() == 2000
    assert cupy.hooks == {}  # the hook is removed on exit


def test_event_timer_and_high_water_mark_on_a_fake_torch_cuda(
        monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    log: list[str] = []
    names = iter(["start", "end"])

    class Event(_Recorder):
        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            super().__init__(log, next(names))

        def elapsed_time(self, other: Any) -> float:
            return 4.0

    stats = {"peak": 0}
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda dev=None: "stream")
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda dev=None: stats.update(peak=0))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev=None: 100)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda dev=None: stats["peak"])
    monkeypatch.setattr(nnxp.backend, "_default",
                        nnxp.backend.BackendInfo("torch", None, torch.device("cuda")))
    timer = nnxp.backend.event_timer()
    assert timer is not None and timer.time(lambda: log.append("call")) == 4e-3
    assert log == ["record start", "call", "record end", "sync end"]
    stats["peak"] = 777
    with nnxp.backend.memory_high_water() as mem:
        assert mem is not None and mem.peak() == 0  # reset on start
        stats["peak"] = 4096
        assert mem.peak() == 4096 and mem.current() == 100


def test_no_gpu_helpers_on_a_cpu_backend() -> None:
    with nnxp.use_backend("numpy"):
        assert nnxp.backend.gpu_library() is None and nnxp.backend.event_timer() is None
        with nnxp.backend.memory_high_water() as mem:
            assert mem is None
        with pytest.raises(nnxp.backend.BackendError, match="CUDA events need a GPU"):
            nnxp.backend.EventTimer()


GPU_CHECK = ROOT / "benchmarks" / "gpu_check.py"


def test_gpu_check_dry_run_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(GPU_CHECK), "--quick", "--no-install",
                           "--dry-run", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (json_path,) = tmp_path.glob("gpu-*-cpu-dryrun.json")
    res = json.loads(json_path.read_text())
    assert res["dry_run"] and res["specs"] == ["torch:cpu"]
    assert {n: p["status"] for n, p in res["parts"].items()} == dict.fromkeys(
        ["environment", "smoke", "syncs", "bench", "capture", "tests"], "ok")
    assert res["parts"]["smoke"]["rows"][0]["loss_max_rel_diff"] <= 1e-3
    syncs = res["parts"]["syncs"]["rows"]
    assert {r["optimizer"] for r in syncs} == {"sgd", "adam"}
    assert all(r["fit_epoch_syncs"] > 0 for r in syncs)  # fit reads its logs: it is counted
    impls = {r["impl"] for r in res["parts"]["bench"]["rows"]}
    assert impls == {"nnxp", "matmul-bound", "torch", "torch-fused"}
    captured = {(r["spec"], r["optimizer"], r["capture"]): r
                for r in res["parts"]["capture"]["rows"]}
    assert set(captured) == {(s, o, c) for o in ("sgd", "adam")
                             for s, c in (("numpy", False), ("torch:cpu", False),
                                          ("torch:cpu", True))}
    static = captured[("torch:cpu", "adam", True)]
    assert static["report"]["static_steps"] > 0  # no recorder on the CPU: static buffers
    assert static["max_abs_weight_diff_vs_uncaptured"] == 0.0  # bit-identical there
    big = {(r["spec"], r["optimizer"], r["capture"]): r
           for r in res["parts"]["capture"]["big_rows"]}
    assert set(big) == {("torch:cpu", o, c) for o in ("sgd", "adam") for c in (False, True)}
    for r in big.values():
        assert r["model"] == "big" and r["step_ms"] > 0 and r["torch_eager_step_ms"] > 0
        assert r["this_over_torch"] == pytest.approx(r["step_ms"] / r["torch_eager_step_ms"])
        assert r["torch_source"] == "timed in the capture part"  # --quick benches "small" only
    assert big[("torch:cpu", "adam", True)]["max_abs_weight_diff_vs_uncaptured"] == 0.0
    targets = res["parts"]["capture"]["targets"]
    assert {(t["target"], t["optimizer"]) for t in targets} == {
        (t, o) for t in ("small", "big") for o in ("sgd", "adam")}
    assert all(t["status"] == "not measured" and t["note"] == "dry run on torch CPU"
               and t["ratio"] > 0 for t in targets)
    assert res["parts"]["tests"]["counts"]["passed"] > 0
    text = json_path.with_suffix(".md").read_text()
    assert "| smoke | ok |" in text and "nnxp/torch" in text
    assert "## issue 13 GPU targets: not measured (4 not measured)" in text
    assert text.count("| big MLP step with capture at most torch CUDA eager's | torch:cpu |") == 2
    assert "## Recorded step (issue 13): big MLP 784-1024-1024-10 fit" in text


def test_gpu_check_budget_and_failures_still_write_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_check = _load("nnxp_gpu_check", GPU_CHECK)

    def broken(check: Any, cap: float) -> dict[str, Any]:
        raise RuntimeError("part exploded")

    monkeypatch.setattr(gpu_check, "part_smoke", broken)
    status = gpu_check.main(["--dry-run", "--no-install", "--out", str(tmp_path),
                             "--skip", "syncs,bench,capture,tests"])
    assert status == 1  # a failed part fails the run ...
    res = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert res["parts"]["smoke"]["status"] == "failed"
    assert "part exploded" in res["parts"]["smoke"]["note"]
    assert res["parts"]["environment"]["status"] == "ok"  # ... but keeps the other parts
    assert res["parts"]["tests"] == {"status": "skipped", "note": "--skip"}
    out2 = tmp_path / "budget"
    assert gpu_check.main(["--dry-run", "--no-install", "--out", str(out2),
                           "--budget", "0.5"]) == 0
    res = json.loads(next(out2.glob("*.json")).read_text())
    assert res["parts"]["bench"]["status"] == "skipped"
    assert "time budget" in res["parts"]["bench"]["note"]
    assert "| bench | skipped |" in next(out2.glob("*.md")).read_text()


def test_gpu_check_issue13_verdicts_by_hand() -> None:
    gpu_check = _load("nnxp_gpu_check", GPU_CHECK)
    recorded = {"graphs": 2, "replays": 90, "not_recorded": None}

    def run(spec: str, opt: str, ms: float, **more: Any) -> dict[str, Any]:
        return {"spec": spec, "optimizer": opt, "capture": True, "step_ms": ms,
                "report": recorded, **more}

    small = [{"spec": "numpy", "optimizer": "sgd", "capture": False, "step_ms": 0.2},
             run("cupy", "sgd", 0.1, cpu_numpy_step_ms=0.2),
             run("torch:cuda", "sgd", 0.3, cpu_numpy_step_ms=0.2),
             run("cupy", "adam", 0.1, cpu_numpy_step_ms=0.2,
                 report={"graphs": 0, "recorder": None, "not_recorded": None},
                 capture_problem="CuPy 14.2.0 refuses cuBLAS calls")]
    big = [run("cupy", "adam", 0.5, torch_eager_step_ms=1.0),
           {"spec": "torch:cuda", "optimizer": "adam", "capture": True, "error": "boom"},
           run("cupy", "sgd", 0.5)]  # no torch figure
    targets = gpu_check.issue13_targets(small, big, dry_run=False)
    got = {(t["target"], t["spec"], t["optimizer"]): (t["status"], t["ratio"]) for t in targets}
    assert got == {("small", "cupy", "sgd"): ("met", 0.5),
                   ("small", "torch:cuda", "sgd"): ("not met", pytest.approx(1.5)),
                   ("small", "cupy", "adam"): ("not met", 0.5),  # fast, but nothing recorded
                   ("big", "cupy", "adam"): ("met", 0.5),
                   ("big", "torch:cuda", "adam"): ("not measured", None),
                   ("big", "cupy", "sgd"): ("not measured", None)}
    unrecorded = next(t for t in targets if t["optimizer"] == "adam" and t["target"] == "small")
    assert unrecorded["note"] == "nothing was recorded: CuPy 14.2.0 refuses cuBLAS calls"
    assert gpu_check.targets_summary(targets) == (
        "issue 13 GPU targets: not met (2 met, 2 not met, 2 not measured)")
    met = [t for t in targets if t["status"] == "met"]
    assert gpu_check.targets_summary(met) == "issue 13 GPU targets: met (2 met)"
    assert gpu_check.targets_summary([]) == "issue 13 GPU targets: not measured"
    dry = gpu_check.issue13_targets(small[:2], [], dry_run=True)
    assert [(t["status"], t["ratio"]) for t in dry] == [("not measured", 0.5)]
    text = "\n".join(gpu_check.targets_markdown({"targets": targets}))
    assert "## issue 13 GPU targets: not met" in text and "| **not met** |" in text
    bench_row = {"key": "mlp-big.step[big/adam]", "impl": "torch", "backend": "torch:cuda",
                 "median": 0.002, "min": 0.0019, "timer": "events"}
    check = types.SimpleNamespace(results={"parts": {"bench": {"rows": [bench_row]}}})
    peer = gpu_check._torch_eager_step(check, "adam", 0.0, [])  # taken, not timed
    assert peer == {"ms": 2.0, "min_ms": pytest.approx(1.9), "backend": "torch:cuda",
                    "source": "bench part", "timer": "events"}
    assert gpu_check.targets_markdown({"status": "skipped"}) == [
        "", "## issue 13 GPU targets: not measured (capture part skipped)"]


def test_gpu_check_tests_part_cut_short_still_names_failures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    gpu_check = _load("nnxp_gpu_check", GPU_CHECK)
    seen: list[list[str]] = []

    def killed(cmd: list[str], stdout: Any, timeout: float, **kwargs: Any) -> None:
        seen.append(cmd)
        stdout.write("[gw0] [ 1%] PASSED tests/test_a.py::test_x[torch:cuda]\n"
                     "[gw1] [ 2%] FAILED tests/test_a.py::test_x[cupy]\n"
                     "tests/test_b.py::test_y[cupy] ERROR\n")
        raise subprocess.TimeoutExpired(cmd, timeout)

    monkeypatch.setattr(gpu_check.subprocess, "run", killed)
    check = types.SimpleNamespace(dry_run=False, specs=["cupy", "torch:cuda"], out=tmp_path,
                                  stem="gpu", args=types.SimpleNamespace(quick=False,
                                                                         test_workers=0))
    part = gpu_check.part_tests(check, 60.0)
    assert part["status"] == "timeout" and part["note"] == "pytest ran past 55 s"
    assert part["failed"] == ["tests/test_a.py::test_x[cupy]", "tests/test_b.py::test_y[cupy]"]
    assert part["NNXP_TEST_BACKENDS"] == "cupy,torch:cuda"
    assert seen[0][seen[0].index("-k") + 1] == "cupy or cuda" and "-n" not in seen[0]


def test_gpu_check_ratios_by_hand() -> None:
    gpu_check = _load("nnxp_gpu_check", GPU_CHECK)
    key = "mlp-big.step[big/adam]"
    rows = [{"key": key, "impl": "nnxp", "backend": "cupy", "median": 0.004},
            {"key": key, "impl": "matmul-bound", "backend": "cupy", "median": 0.003},
            {"key": key, "impl": "torch", "backend": "torch:cuda", "median": 0.005},
            {"key": key, "impl": "torch-fused", "backend": "torch:cuda", "median": 0.002},
            {"key": key, "impl": "nnxp", "backend": "torch:cuda", "error": "boom"}]
    (row,) = gpu_check.ratios(rows)
    assert row["backend"] == "cupy" and row["nnxp_ms"] == pytest.approx(4.0)
    assert row["nnxp/torch"] == pytest.approx(0.8)
    assert row["nnxp/torch-fused"] == pytest.approx(2.0)
    assert row["bound/nnxp"] == pytest.approx(0.75)


def test_gpu_check_counts_host_reads_where_they_happen() -> None:
    torch = pytest.importorskip("torch")
    gpu_check = _load("nnxp_gpu_check", GPU_CHECK)
    counter = gpu_check.sync_counter("torch:cpu")
    with nnxp.use_backend("torch:cpu"):
        x = nnxp.asarray([1.0, 2.0])
        with counter.active():
            nnxp.backend.to_numpy(x)
            float(torch.ones(()))
        float(torch.ones(()))  # outside: not counted
    assert counter.count == 2
    assert any("backend.py" in site for site in counter.sites)
    assert type(gpu_check.sync_counter("torch:cuda")).__name__ == "TorchSyncDebug"
    assert type(gpu_check.sync_counter("cupy")).__name__ == "CupySyncDetect"
