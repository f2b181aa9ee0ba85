"""The benchmark machinery (nnxp.bench, benchmarks/report.py): it must run, not be fast.

Speed is never asserted here. What is checked: configuration parsing, FLOP and byte counts
against hand counts, that every discovered workload builds and runs on every backend, the
peak-memory accounting, the `nnxp bench` command, and the report's ratios.
"""

from __future__ import annotations

import importlib.util
import json
import math
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
    in_fit = bench.peak_memory("numpy", "tiny", "sgd", steps=2, via="fit")
    assert in_fit["via"] == "fit" and in_fit["peak_bytes"] > in_fit["params"]
    lean = bench.peak_memory("numpy", "tiny", "sgd", steps=2, via="fit-lean")
    # without the divergence snapshot fit holds at least one copy of the parameters less
    assert lean["peak_bytes"] <= in_fit["peak_bytes"] - in_fit["params"]
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
