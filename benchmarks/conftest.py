"""Configuration of the benchmark suite (``make bench``; not part of the default test run).

Environment variables:

* ``NNXP_BENCH_BACKENDS`` — comma-separated backend specs, e.g. ``cupy,torch:cuda,numpy``
  (default: every available one of numpy, torch:cpu, cupy, torch:cuda; ``array_api_strict`` only
  when named). Absent libraries and GPUs are left out, never failed.
* ``NNXP_BENCH_SIZES`` — ``quick``, ``default`` (batch×width 32×128 and 256×1024), ``full``
  (adds 1024×2048 and 4096×4096, and the 60,000-sample epoch) or a list like ``32x128,512x512``.
* ``NNXP_BENCH_OPTIMIZERS`` — the optimizers of the model steps (default ``sgd,adam``); a name
  that is not an optimizer of ``nnxp.bench.optimizer_classes()`` stops the run with an error.
* ``NNXP_BENCH_BUDGET`` — seconds of timed rounds per row (default 0.3; at least 3 rounds).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from nnxp import backend, bench
from nnxp.bench import Case

BACKENDS = bench.selected_backends()
SIZES = bench.selected_sizes()
BUDGET = float(os.environ.get("NNXP_BENCH_BUDGET", "0.3"))
OPTIMIZERS = [o.strip() for o in os.environ.get("NNXP_BENCH_OPTIMIZERS", "sgd,adam").split(",")
              if o.strip()]
for _name in OPTIMIZERS:
    bench.make_optimizer(_name)  # a clear error for an unknown name, before any timing


def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    """Store the CPU, core count, library versions and every thread-pool size with the JSON."""
    info = bench.machine_info()
    try:
        import torch
    except ImportError:
        pass
    else:
        info["torch_threads"] = {"intra_op": torch.get_num_threads(),
                                 "inter_op": torch.get_num_interop_threads()}
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    info["bench_backends"] = BACKENDS
    info["bench_sizes"] = [f"{b}x{w}" for b, w in SIZES]
    machine_info["nnxp"] = info


def pytest_benchmark_update_json(config: Any, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """Keep the JSON small enough to commit: drop the per-round times (the statistics stay)."""
    for b in output_json.get("benchmarks", []):
        b.get("stats", {}).pop("data", None)


def run_case(benchmark: Any, case: Case, *, budget: float = BUDGET, warmup: int = 2) -> None:
    """Time ``case`` with pytest-benchmark: warm-up calls, then rounds filling ``budget``.

    Warm-up, the timer and the number of rounds come from :func:`nnxp.bench.prepare_timing`,
    as for ``nnxp bench``. ``setup`` (untimed) runs before every round and ends with a device
    synchronisation. On the host clock a timed call ends with a synchronisation too, so it is
    charged for the device work it queued; a short GPU call is timed with CUDA events instead,
    through a :class:`nnxp.bench.DeviceClock` handed to pytest-benchmark as its clock.
    """
    benchmark.extra_info.update(case.extra_info())
    with backend.use_backend(case.backend):
        sync = case.sync or backend.synchronize
        setup, run = case.build()
        plan = bench.prepare_timing(setup, run, sync, budget=budget, warmup=warmup)
        benchmark.extra_info.update({"timer": plan.timer,
                                     "warmup_calls": len(plan.warmup_times),
                                     "first_call": plan.warmup_times[0]})

        def timed_setup() -> Any:
            state = setup()
            sync()
            return (state,), {}

        if plan.events is not None:
            clock = bench.DeviceClock(plan.events)
            if not hasattr(benchmark, "_timer"):
                raise RuntimeError("this pytest-benchmark keeps its clock elsewhere than "
                                   "BenchmarkFixture._timer: CUDA-event rows cannot be timed")
            benchmark._timer = clock  # read by pytest-benchmark 4-5 around every call

            def target(state: Any) -> None:
                clock.call(run, state)
        else:
            def target(state: Any) -> None:
                run(state)
                sync()

        benchmark.pedantic(target, setup=timed_setup, rounds=plan.rounds, warmup_rounds=0,
                           iterations=1)


@pytest.fixture
def bench_case(benchmark: Any) -> Any:
    """``bench_case(case)`` times a :class:`nnxp.bench.Case` (see :func:`run_case`)."""
    return lambda case, **kw: run_case(benchmark, case, **kw)
