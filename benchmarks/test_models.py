"""End-to-end benchmarks: one training step and one epoch of the reference MLPs.

Models (:data:`nnxp.bench.MODELS`): "small" 64-128-10 at batch 32, "big" 784-1024-1024-10 at
batch 256, "wide" four 4096×4096 layers at batch 4096 (GPU backends only). Each is timed with
every optimizer of ``NNXP_BENCH_OPTIMIZERS``, on every backend, next to the
``matmul-bound`` of the step (its bare products in the same backend), the ``torch`` peer on the
same device (and ``torch-fused`` Adam) and, on the CPU, the ``numpy-by-hand`` step.
"""

from __future__ import annotations

from typing import Any

import peers
import pytest
from conftest import BACKENDS, BUDGET, OPTIMIZERS

from nnxp import bench


def _cases() -> list[Any]:
    cases = []
    for spec in BACKENDS:
        for name in bench.available_models(spec):
            for opt in OPTIMIZERS:
                cases += bench.model_cases(spec, name, opt)
    for device in peers.peer_devices(BACKENDS):
        for name, cfg in bench.MODELS.items():
            if cfg["gpu_only"] and device == "cpu":
                continue
            for opt in OPTIMIZERS:
                cases += peers.model_peer_cases(device, name, opt)
    if any(not bench.is_gpu(b) for b in BACKENDS):
        for name in ("small", "big"):
            for opt in OPTIMIZERS:
                cases += peers.numpy_by_hand_cases(name, opt)
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_model(bench_case: Any, case: bench.Case) -> None:
    # an epoch takes seconds: a smaller budget still gives the 3-round minimum
    bench_case(case, budget=1.0 if case.group == "epoch" else 4 * BUDGET)
