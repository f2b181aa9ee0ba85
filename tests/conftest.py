"""The backend fixture: every kernel and model test runs on every backend that is available here.

Backends: numpy; array_api_strict on its non-default ``device1`` (so a kernel that forgets to
pass ``device=`` fails); torch on the CPU; torch on CUDA and cupy when a GPU is present. Absent
ones skip, with the reason ``nnxp doctor`` gives. ``NNXP_TEST_BACKENDS=cupy,torch:cuda`` narrows
the set (e.g. for a GPU run); a backend named there that does not work here stops the run before
it starts (a usage error naming the backend and the doctor's reason), so a GPU job on a machine
without a usable GPU fails instead of skipping every test and reporting success.
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import numpy as np
import pytest

import nnxp
from nnxp import backend

ALL_BACKENDS = ("numpy", "array_api_strict:device1", "torch:cpu", "torch:cuda", "cupy")


def requested_backends() -> list[str]:
    """The names in NNXP_TEST_BACKENDS (empty: every backend, the available ones run)."""
    wanted = os.environ.get("NNXP_TEST_BACKENDS", "").strip()
    return [w.strip() for w in wanted.split(",") if w.strip()]


def _selected(candidates: tuple[str, ...]) -> list[str]:
    names = requested_backends()
    if not names:
        return list(candidates)
    return [c for c in candidates if c in names or c.split(":")[0] in names]


@functools.cache
def _probes() -> tuple[backend.Probe, ...]:
    return backend.diagnose().probes


def unavailable_reason(spec: str) -> str | None:
    """Why ``spec`` cannot run here (the doctor's finding), or None when it can."""
    unmet = backend.unmet_requirements([spec], _probes())
    return f"{spec}: {unmet[0][1]}" if unmet else None


def requested_but_unavailable(names: list[str], probes: Any) -> str | None:
    """The usage error for NNXP_TEST_BACKENDS naming backends that do not work, or None."""
    setting = f"NNXP_TEST_BACKENDS={','.join(names)}"
    try:
        unmet = backend.unmet_requirements(names, probes)
    except ValueError as exc:
        return f"{setting}: {exc}"
    if not unmet:
        return None
    lines = [f"{setting} asks for backends that do not work here; their tests would all skip:"]
    lines += [f"  {name}: {why}" for name, why in unmet]
    lines.append("Run `nnxp doctor` for every backend and device, or leave these out of "
                 "NNXP_TEST_BACKENDS.")
    return "\n".join(lines)


def pytest_configure(config: pytest.Config) -> None:
    names = requested_backends()
    if names:
        error = requested_but_unavailable(names, _probes())
        if error is not None:
            raise pytest.UsageError(error)


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


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
