"""The TF32 switch of nnxp.backend, checked with fake GPU libraries (no GPU here)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from typing import Any

import pytest

import nnxp
from nnxp import backend
from nnxp.cli import main


@pytest.fixture
def restore_tf32(monkeypatch):
    monkeypatch.setattr(backend, "_tf32", None)
    yield
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False


def _fake_cupy(monkeypatch) -> list[Any]:
    calls: list[Any] = []
    linalg = types.SimpleNamespace(COMPUTE_TYPE_DEFAULT="default", COMPUTE_TYPE_TF32="tf32",
                                   set_compute_type=lambda dtype, mode: calls.append(
                                       (dtype, mode)))
    cupy = types.SimpleNamespace(float32="float32")
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", linalg)
    monkeypatch.setenv("CUPY_TF32", "0")
    return calls


def test_off_by_default_and_a_note_on_cpu(restore_tf32) -> None:
    assert nnxp.get_tf32() is False
    with nnxp.use_backend("numpy"):
        status = backend.tf32_status()
    assert status["requested"] is False and status["effective"] is False
    assert "CPU backend" in status["note"] and not status["configured"]
    assert nnxp.set_tf32(True) is None  # no error on a CPU backend
    with nnxp.use_backend("numpy"):
        status = backend.tf32_status()
    assert status["requested"] and not status["effective"]
    assert "requested but not applicable" in status["note"]


def test_torch_flag_follows_the_switch(restore_tf32) -> None:
    torch = pytest.importorskip("torch")
    torch.backends.cuda.matmul.allow_tf32 = False
    nnxp.set_tf32(True)
    assert torch.backends.cuda.matmul.allow_tf32 is True
    with nnxp.tf32(False):
        assert torch.backends.cuda.matmul.allow_tf32 is False
        assert nnxp.get_tf32() is False
    assert torch.backends.cuda.matmul.allow_tf32 is True and nnxp.get_tf32()
    nnxp.set_tf32(False)
    with nnxp.tf32():
        assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cuda.matmul.allow_tf32 is False
    # a torch CUDA backend reports it as effective
    nnxp.set_tf32(True)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(backend, "get_backend", lambda: backend.BackendInfo(
            "torch", None, types.SimpleNamespace(type="cuda")))
        status = backend.tf32_status()
    assert status["effective"] and "TF32 on" in status["note"]


def test_cupy_compute_type_follows_the_switch(restore_tf32, monkeypatch) -> None:
    calls = _fake_cupy(monkeypatch)
    nnxp.set_tf32(True)
    assert ("float32", "tf32") in calls and os.environ["CUPY_TF32"] == "1"
    calls.clear()
    with nnxp.tf32(False):
        assert calls == [("float32", "default")] and os.environ["CUPY_TF32"] == "0"
    assert calls[-1] == ("float32", "tf32")


def test_a_never_configured_switch_leaves_the_libraries_alone(restore_tf32, monkeypatch) -> None:
    calls = _fake_cupy(monkeypatch)
    backend._apply_tf32_to_loaded  # noqa: B018 - exists
    with nnxp.use_backend("numpy"):
        pass
    assert calls == []
    with nnxp.tf32():
        pass
    assert nnxp.get_tf32() is False and backend.tf32_status()["configured"] is False


def test_bad_values(restore_tf32) -> None:
    with pytest.raises(TypeError, match="set_tf32 expects True or False, got int 1"):
        nnxp.set_tf32(1)  # type: ignore[arg-type]
    env = {**os.environ, "NNXP_TF32": "maybe"}
    out = subprocess.run([sys.executable, "-c", "import nnxp"], env=env, capture_output=True,
                         text=True)
    assert out.returncode != 0 and "NNXP_TF32 must be 1/0" in out.stderr


def test_environment_variable_reaches_a_backend_made_later(restore_tf32, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("NNXP_TF32", "yes")
    assert backend._tf32_from_environment() is True
    monkeypatch.setenv("NNXP_TF32", "0")
    assert backend._tf32_from_environment() is False
    torch.backends.cuda.matmul.allow_tf32 = False
    monkeypatch.setattr(backend, "_tf32", True)  # what NNXP_TF32=1 sets at import
    with nnxp.use_backend("torch"):
        assert torch.backends.cuda.matmul.allow_tf32 is True


def test_doctor_reports_tf32_and_the_budget(restore_tf32, capsys, monkeypatch) -> None:
    monkeypatch.setattr(backend, "diagnose", lambda: backend.Diagnosis("not found", []))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "TF32 matmul: off" in out and "memory budget: none" in out
    nnxp.set_tf32(True)
    previous = nnxp.set_memory_budget("2GiB")
    try:
        assert main(["doctor", "--json"]) == 0
    finally:
        nnxp.set_memory_budget(previous)
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["tf32"] == {"requested": True, "configured": True}
    assert report["memory_budget"] == 2 * 2**30
