"""Per-kernel benchmarks: every layer's forward and backward, losses, optimizer updates.

Rows per backend and size: ``nnxp`` (the library), ``matmul-bound`` (Dense only: the bare
products in the backend) and, once per device, ``torch`` (the peer; ``torch-fused`` for the
optimizers that have a fused version). New kernels appear here through nnxp's registries.
"""

from __future__ import annotations

from typing import Any

import peers
import pytest
from conftest import BACKENDS, SIZES

from nnxp import bench


def _cases() -> list[Any]:
    cases = []
    for spec in BACKENDS:
        for batch, width in SIZES:
            cases += bench.kernel_cases(spec, batch, width)
    for device in peers.peer_devices(BACKENDS):
        for batch, width in SIZES:
            cases += peers.kernel_peer_cases(device, batch, width)
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_kernel(bench_case: Any, case: bench.Case) -> None:
    bench_case(case)
