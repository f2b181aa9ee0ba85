"""`nnxp doctor`: each backend and device, a checked matmul, and the cause of every failure.

The GPU cases are faked (monkeypatched probes and fake cupy/torch modules), so every failure kind
is tested on any machine; one test runs the real probes here.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import nnxp
from nnxp import backend
from nnxp.backend import (
    FAILED,
    MISSING_LIBRARY,
    NO_DEVICE,
    NO_DRIVER,
    NOT_INSTALLED,
    WORKS,
    Diagnosis,
    Probe,
)
from nnxp.cli import main

ROOT = Path(__file__).resolve().parents[1]

# --- sorting errors into causes -------------------------------------------------------------------


@pytest.mark.parametrize(("error", "kind", "library"), [
    (ImportError("libcublas.so.12: cannot open shared object file: No such file or directory"),
     MISSING_LIBRARY, "libcublas.so.12"),
    (RuntimeError("CuPy failed to load libnvrtc.so.13: OSError: libnvrtc.so.13: cannot open "
                  "shared object file: No such file or directory"), MISSING_LIBRARY,
     "libnvrtc.so.13"),
    (OSError("libcudnn_graph.so.9: cannot open shared object file"), MISSING_LIBRARY,
     "libcudnn_graph.so.9"),
    (OSError("[WinError 126] Could not find module 'cublas64_12.dll'"), MISSING_LIBRARY,
     "cublas64_12.dll"),
    (RuntimeError('x.cu(1): catastrophic error: cannot open source file "cuda_fp16.h"'),
     MISSING_LIBRARY, "cuda_fp16.h"),
    (ImportError("libcuda.so.1: cannot open shared object file: No such file or directory"),
     NO_DRIVER, "libcuda.so.1"),
    (RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA "
                  "runtime version"), NO_DRIVER, ""),
    (RuntimeError("Found no NVIDIA driver on your system. Please check that you have an NVIDIA "
                  "GPU and installed a driver"), NO_DRIVER, ""),
    (RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"), NO_DEVICE, ""),
    (RuntimeError("No CUDA GPUs are available"), NO_DEVICE, ""),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), FAILED, ""),
])
def test_errors_are_sorted_by_cause(error, kind, library) -> None:
    failure = backend.explain_cuda_failure(error)
    assert (failure.kind, failure.library) == (kind, library)
    assert type(error).__name__ in failure.message and "\n" not in failure.message


def test_the_cause_is_read_through_the_chain_of_errors() -> None:
    try:
        try:
            raise OSError("libcublasLt.so.12: cannot open shared object file")
        except OSError as inner:
            raise RuntimeError("cuBLAS initialisation failed") from inner
    except RuntimeError as outer:
        failure = backend.explain_cuda_failure(outer)
    assert (failure.kind, failure.library) == (MISSING_LIBRARY, "libcublasLt.so.12")
    assert failure.message.startswith("RuntimeError: cuBLAS initialisation failed <- OSError")


# --- the CLI, on faked findings: one table row per probe, exit status by --require -----------

GPU_ROWS = {
    WORKS: Probe("cupy:0", "NVIDIA H200", WORKS, "",
                 (("cupy", "14.2.0"), ("CUDA runtime", "12.9"))),
    NOT_INSTALLED: Probe("cupy", "", NOT_INSTALLED, "pip install 'nnxp[cuda12]'", ()),
    NO_DRIVER: Probe("cupy", "", NO_DRIVER, "no NVIDIA driver (libcuda.so.1: cannot open shared "
                     "object file)", (("cupy", "14.2.0"),)),
    NO_DEVICE: Probe("cupy", "", NO_DEVICE, "CUDA sees no GPU: check nvidia-smi and "
                     "CUDA_VISIBLE_DEVICES", (("cupy", "14.2.0"),)),
    MISSING_LIBRARY: Probe("cupy:0", "NVIDIA H200", MISSING_LIBRARY, "libnvrtc.so.12 (OSError: "
                           "libnvrtc.so.12: cannot open shared object file)",
                           (("cupy", "14.2.0"),)),
}


def fake_diagnosis(monkeypatch, *gpu_rows: Probe) -> None:
    rows = (Probe("numpy", "cpu", WORKS, "", (("numpy", "2.3.0"),)),
            Probe("torch:cpu", "cpu", WORKS, "", (("torch", "2.13.0"),)),
            Probe("torch:cuda:0", "NVIDIA H200", WORKS, "", (("torch", "2.13.0"),)), *gpu_rows)
    monkeypatch.setattr(backend, "diagnose", lambda: Diagnosis("CUDA 12.9 (libcuda.so.1)", rows))


@pytest.mark.parametrize("status", list(GPU_ROWS))
def test_doctor_prints_each_status_and_its_reason(monkeypatch, capsys, status) -> None:
    probe = GPU_ROWS[status]
    fake_diagnosis(monkeypatch, probe)
    assert main(["doctor"]) == 0  # nothing required: a report, not a verdict
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "NVIDIA driver: CUDA 12.9 (libcuda.so.1)"
    assert out[2].split() == ["backend", "device", "status", "versions"]
    row = next(i for i, line in enumerate(out) if line.startswith(probe.spec + " "))
    assert f"  {status}  " in out[row]
    assert out[row].endswith("cupy 14.2.0" + (", CUDA runtime 12.9" if status == WORKS else "")
                             if probe.versions else "  -")
    if status == WORKS:
        assert row == len(out) - 1 or not out[row + 1].startswith("    ")
    else:
        assert out[row + 1] == f"    {probe.detail}"


@pytest.mark.parametrize("status", [s for s in GPU_ROWS if s != WORKS])
def test_a_required_backend_that_does_not_work_exits_1_and_says_why(monkeypatch, capsys,
                                                                    status) -> None:
    fake_diagnosis(monkeypatch, GPU_ROWS[status])
    assert main(["doctor", "--require", "cupy,torch:cuda"]) == 1
    out = capsys.readouterr().out
    assert f"required cupy: does not work: {status}: {GPU_ROWS[status].detail}" in out
    assert "required torch:cuda: works" in out


def test_required_backends_that_work_exit_0(monkeypatch, capsys) -> None:
    fake_diagnosis(monkeypatch, GPU_ROWS[WORKS])
    assert main(["doctor", "--require", "cupy,torch:cuda,numpy,cupy:0"]) == 0
    assert capsys.readouterr().out.count("works\n") == 4


def test_a_device_that_is_not_there_does_not_work(monkeypatch, capsys) -> None:
    fake_diagnosis(monkeypatch, GPU_ROWS[WORKS])
    assert main(["doctor", "--require", "cupy:1"]) == 1
    assert "required cupy:1: does not work: no such device here (found: cupy:0)" in \
        capsys.readouterr().out


def test_an_unknown_required_name_is_a_usage_error(monkeypatch, capsys) -> None:
    fake_diagnosis(monkeypatch, GPU_ROWS[WORKS])
    assert main(["doctor", "--require", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nnxp doctor: error: --require: unknown backend 'cuda'; valid names")


def test_doctor_json(monkeypatch, capsys) -> None:
    fake_diagnosis(monkeypatch, GPU_ROWS[MISSING_LIBRARY])
    assert main(["doctor", "--json", "--require", "cupy"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["unmet"] == {"cupy": f"{MISSING_LIBRARY}: {GPU_ROWS[MISSING_LIBRARY].detail}"}
    assert report["backends"][-1] == {"spec": "cupy:0", "device": "NVIDIA H200",
                                      "status": MISSING_LIBRARY,
                                      "detail": GPU_ROWS[MISSING_LIBRARY].detail,
                                      "versions": {"cupy": "14.2.0"}}


# --- the probes, on fake GPU libraries --------------------------------------------------------


def fake_cupy(monkeypatch, *, count=1, count_error=None) -> None:
    def get_count():
        if count_error is not None:
            raise count_error
        return count

    runtime = types.SimpleNamespace(runtimeGetVersion=lambda: 12090, getDeviceCount=get_count,
                                    getDeviceProperties=lambda i: {"name": b"Fake GPU"})
    module = types.ModuleType("cupy")
    module.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    module.__version__ = "14.2.0"
    module.cuda = types.SimpleNamespace(runtime=runtime)
    monkeypatch.setitem(sys.modules, "cupy", module)


def cupy_probes(monkeypatch, driver=("12.9", "libcuda.so.1")) -> list[Probe]:
    monkeypatch.setattr(backend, "_nvidia_driver", lambda: driver)
    return [p for p in backend.diagnose().probes if p.spec.startswith("cupy")]


def test_probe_cupy_works_and_names_its_devices(monkeypatch) -> None:
    fake_cupy(monkeypatch, count=2)
    checked = []
    monkeypatch.setattr(backend, "_matmul_check", checked.append)
    probes = cupy_probes(monkeypatch)
    assert [(p.spec, p.device, p.status) for p in probes] == [
        ("cupy:0", "Fake GPU", WORKS), ("cupy:1", "Fake GPU", WORKS)]
    assert probes[0].versions == (("cupy", "14.2.0"), ("CUDA runtime", "12.9"))
    assert [c for c in checked if c.startswith("cupy")] == ["cupy:0", "cupy:1"]


def test_probe_cupy_without_its_cuda_libraries(monkeypatch) -> None:
    fake_cupy(monkeypatch)

    def matmul(spec):
        if spec.startswith("cupy"):
            raise OSError("libcublas.so.12: cannot open shared object file: No such file")

    monkeypatch.setattr(backend, "_matmul_check", matmul)
    (probe,) = cupy_probes(monkeypatch)
    assert (probe.spec, probe.status) == ("cupy:0", MISSING_LIBRARY)
    assert probe.detail.startswith("libcublas.so.12 (OSError: libcublas.so.12: cannot open")
    assert "nnxp[cuda12]" in probe.detail


@pytest.mark.parametrize(("error", "status"), [
    (RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"), NO_DEVICE),
    (RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient"),
     NO_DRIVER),
    (RuntimeError("cudaErrorUnknown: unknown error"), FAILED),
])
def test_probe_cupy_failing_to_count_devices(monkeypatch, error, status) -> None:
    fake_cupy(monkeypatch, count_error=error)
    (probe,) = cupy_probes(monkeypatch)
    assert (probe.spec, probe.status) == ("cupy", status) and str(error) in probe.detail


def test_probe_cupy_with_no_driver_at_all(monkeypatch) -> None:
    """An error the text does not explain, on a machine whose libcuda does not load."""
    fake_cupy(monkeypatch, count_error=RuntimeError("cudaErrorUnknown: unknown error"))
    (probe,) = cupy_probes(monkeypatch, driver=(None, "libcuda.so.1: cannot open shared object"))
    assert probe.status == NO_DRIVER and probe.detail.startswith("no NVIDIA driver (libcuda")


def test_probe_cupy_zero_devices(monkeypatch) -> None:
    fake_cupy(monkeypatch, count=0)
    (probe,) = cupy_probes(monkeypatch)
    assert (probe.spec, probe.status) == ("cupy", NO_DEVICE)


@pytest.mark.parametrize(("driver", "extra"), [(("12.4", "libcuda.so.1"), "cuda12"),
                                               (("13.0", "libcuda.so.1"), "cuda13")])
def test_cupy_not_installed_suggests_the_extra_for_the_driver(monkeypatch, driver, extra) -> None:
    real = backend._installed
    monkeypatch.setattr(backend, "_installed", lambda name: name != "cupy" and real(name))
    (probe,) = cupy_probes(monkeypatch, driver=driver)
    assert probe.status == NOT_INSTALLED and f"pip install 'nnxp[{extra}]'" in probe.detail


def test_probe_torch_cuda_build_without_a_driver(monkeypatch) -> None:
    torch = pytest.importorskip("torch")

    def init():
        raise RuntimeError("Found no NVIDIA driver on your system.")

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "init", init)
    monkeypatch.setattr(backend, "_nvidia_driver", lambda: ("12.8", "libcuda.so.1"))
    probes = {p.spec: p for p in backend.diagnose().probes}
    assert probes["torch:cpu"].status == WORKS
    assert probes["torch:cuda"].status == NO_DRIVER
    assert ("CUDA", "12.8") in probes["torch:cuda"].versions


def test_a_wrong_matmul_result_is_a_failure(monkeypatch) -> None:
    real = backend.asarray

    def off_by_one(x, *args, **kwargs):
        return real(x, *args, **kwargs) + 1

    monkeypatch.setattr(backend, "asarray", off_by_one)
    numpy_probe = backend.diagnose().probes[0]
    assert (numpy_probe.spec, numpy_probe.status) == ("numpy", FAILED)
    assert "NumPy gives" in numpy_probe.detail


# --- the real probes on this machine --------------------------------------------------------


def test_doctor_on_this_machine(capsys) -> None:
    found = backend.diagnose()
    specs = [p.spec for p in found.probes]
    assert specs[:3] == ["numpy", "array_api_strict", "torch:cpu"]
    assert any(s.startswith("torch:cuda") for s in specs)
    assert any(s.startswith("cupy") for s in specs)
    assert found.probes[0].works and found.probes[1].works
    assert all(p.status in backend.PROBE_STATUSES for p in found.probes)
    assert all(p.detail == "" for p in found.probes if p.works)
    assert all(p.detail for p in found.probes if not p.works)
    assert main(["doctor", "--require", "numpy,array_api_strict:device1"]) == 0
    out = capsys.readouterr().out
    assert f"nnxp {nnxp.__version__}" in out and "numpy" in out
    assert "required array_api_strict:device1: works" in out
    cupy_works = any(p.works for p in found.probes if p.spec.startswith("cupy"))
    assert main(["doctor", "--require", "cupy"]) == (0 if cupy_works else 1)


# --- the GPU errors of set_backend name the same causes -------------------------------------


@pytest.mark.parametrize(("error", "match"), [
    (RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"),
     r"cannot use a GPU: no device \(RuntimeError: cudaErrorNoDevice.*CUDA_VISIBLE_DEVICES"),
    (ImportError("libcudart.so.12: cannot open shared object file"),
     r"cannot use a GPU: missing CUDA library libcudart.so.12 .*nnxp\[cuda12\]"),
    (RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient"),
     r"cannot use a GPU: no driver .*update the NVIDIA driver"),
])
def test_set_backend_cupy_names_the_cause(monkeypatch, error, match) -> None:
    fake_cupy(monkeypatch, count_error=error)
    with pytest.raises(nnxp.BackendError, match=match):
        backend._check_cupy_device(None)


def test_set_backend_torch_cuda_names_the_cause(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(nnxp.BackendError, match="CPU-only build"):
        monkeypatch.setattr(torch.version, "cuda", None)
        monkeypatch.setattr(torch.version, "hip", None)
        nnxp.set_backend("torch", device="cuda")

    def init():
        raise RuntimeError("No CUDA GPUs are available")

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "init", init)
    with pytest.raises(nnxp.BackendError, match=r"cannot use it: no device \(RuntimeError: No "):
        nnxp.set_backend("torch", device="cuda")


def test_a_cupy_that_is_installed_but_cannot_be_imported(monkeypatch) -> None:
    monkeypatch.setattr(backend, "_installed", lambda name: True)
    real_import = backend.importlib.import_module

    def broken(name, *args, **kwargs):
        if name.split(".")[0] == "cupy":
            raise ImportError("libcudart.so.12: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(backend.importlib, "import_module", broken)
    with pytest.raises(nnxp.BackendError,
                       match=r"'cupy' package is installed but cannot be imported: missing CUDA "
                             r"library libcudart.so.12"):
        nnxp.set_backend("cupy")


# --- a GPU test run without a working GPU fails before it starts (tests/conftest.py) ----------


def test_the_suite_refuses_requested_backends_that_do_not_work() -> None:
    from conftest import requested_but_unavailable

    probes = (GPU_ROWS[MISSING_LIBRARY], Probe("numpy", "cpu", WORKS, "", ()),
              Probe("torch:cpu", "cpu", WORKS, "", ()),
              Probe("torch:cuda", "", NO_DRIVER, "no NVIDIA driver (libcuda.so.1: ...)", ()))
    assert requested_but_unavailable(["numpy", "torch"], probes) is None
    error = requested_but_unavailable(["cupy", "torch:cuda", "numpy"], probes)
    assert error is not None
    lines = error.splitlines()
    assert lines[0].startswith("NNXP_TEST_BACKENDS=cupy,torch:cuda,numpy asks for backends "
                               "that do not work here")
    assert lines[1:3] == [f"  cupy: {MISSING_LIBRARY}: {GPU_ROWS[MISSING_LIBRARY].detail}",
                          "  torch:cuda: no driver: no NVIDIA driver (libcuda.so.1: ...)"]
    assert "nnxp doctor" in lines[3]
    assert "unknown backend 'gpu'" in str(requested_but_unavailable(["gpu"], probes))


def _pytest_with(backends: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NNXP_TEST_BACKENDS": backends}
    env.pop("NNXP_BACKEND", None)
    test = "tests/test_doctor.py::test_errors_are_sorted_by_cause"
    return subprocess.run([sys.executable, "-m", "pytest", test, "-p", "no:cacheprovider", "-q"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_a_gpu_run_without_the_gpu_backends_is_a_usage_error_not_a_green_run() -> None:
    probes = backend.diagnose().probes
    gpu = "cupy,torch:cuda"
    if not backend.unmet_requirements(gpu.split(","), probes):  # a machine where both work
        gpu = "cupy:99,torch:cuda"
    run = _pytest_with(gpu)
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert f"NNXP_TEST_BACKENDS={gpu} asks for backends that do not work here" in run.stderr
    for name, why in backend.unmet_requirements(gpu.split(","), probes):
        assert f"  {name}: {why}" in run.stderr
    assert "passed" not in run.stdout and "skipped" not in run.stdout
    ok = _pytest_with("numpy")  # a backend that works: the run goes ahead
    assert ok.returncode == 0 and "[100%]" in ok.stdout, ok.stdout + ok.stderr
