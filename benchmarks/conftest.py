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
    """Time ``case`` with pytest-benchmark: warm-up rounds, then rounds filling ``budget``.

    ``setup`` (untimed) runs before every round; the GPU is synchronised at the end of setup and
    at the end of every timed call, so the time of a call includes the device work it queued.
    """
    benchmark.extra_info.update(case.extra_info())
    with backend.use_backend(case.backend):
        sync = case.sync or backend.synchronize
        setup, run = case.build()
        first = bench.calibrate(setup, run, sync)
        rounds = bench.plan_rounds(first, budget=budget)

        def timed_setup() -> Any:
            state = setup()
            sync()
            return (state,), {}

        def target(state: Any) -> None:
            run(state)
            sync()

        benchmark.pedantic(target, setup=timed_setup, rounds=rounds,
                           warmup_rounds=max(0, warmup - 1), iterations=1)


@pytest.fixture
def bench_case(benchmark: Any) -> Any:
    """``bench_case(case)`` times a :class:`nnxp.bench.Case` (see :func:`run_case`)."""
    return lambda case, **kw: run_case(benchmark, case, **kw)
