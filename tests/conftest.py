"""The backend fixture: every kernel test runs on every backend that is available here.

Backends: numpy; array_api_strict on its non-default ``device1`` (so a kernel that forgets to
pass ``device=`` fails); torch on the CPU; torch on CUDA and cupy when a GPU is present. Absent
ones skip. ``NNXP_TEST_BACKENDS=cupy,torch:cuda`` narrows the set (e.g. for a GPU run).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, NamedTuple

import numpy as np
import pytest

import nnxp

ALL_BACKENDS = ("numpy", "array_api_strict:device1", "torch:cpu", "torch:cuda", "cupy")
CPU_BACKENDS = ("numpy", "array_api_strict:device1", "torch:cpu")


def _selected(candidates: tuple[str, ...]) -> list[str]:
    wanted = os.environ.get("NNXP_TEST_BACKENDS", "").strip()
    if not wanted:
        return list(candidates)
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    return [c for c in candidates if c in names or c.split(":")[0] in names]


def unavailable_reason(spec: str) -> str | None:
    """Why ``spec`` cannot run here, or None when it can."""
    lib = spec.split(":")[0]
    if importlib.util.find_spec(lib) is None:
        return f"{lib} is not installed"
    if spec == "torch:cuda":
        import torch

        if not torch.cuda.is_available():
            return "torch sees no CUDA GPU"
    if lib == "cupy":
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() == 0:
                return "cupy sees no GPU"
        except Exception as exc:  # noqa: BLE001 - any CUDA failure means: skip
            return f"cupy has no usable GPU ({type(exc).__name__})"
    return None


class Backend(NamedTuple):
    """What a test gets: the nnxp backend spec, its namespace and device, and helpers."""

    spec: str
    name: str
    xp: Any
    device: Any

    def asarray(self, x: Any, dtype: str | None = None) -> Any:
        return nnxp.asarray(np.asarray(x), dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return nnxp.to_numpy(x)


def _backend_fixture(request: pytest.FixtureRequest) -> Any:
    spec = request.param
    reason = unavailable_reason(spec)
    if reason is not None:
        pytest.skip(reason)
    with nnxp.use_backend(spec) as info:
        yield Backend(spec, info.name, info.xp, info.device)


@pytest.fixture(params=_selected(ALL_BACKENDS))
def bk(request: pytest.FixtureRequest) -> Any:
    """Every available backend, active for the duration of the test."""
    yield from _backend_fixture(request)


@pytest.fixture(params=_selected(CPU_BACKENDS))
def cpu_bk(request: pytest.FixtureRequest) -> Any:
    """The CPU backends (end-to-end training tests, which would be slow to repeat on GPUs)."""
    yield from _backend_fixture(request)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
