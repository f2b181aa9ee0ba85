"""nnxp.distributed: data parallel on mpi4py, run under ``mpiexec -n 2`` in subprocesses.

Skipped, with the reason, when mpi4py or mpiexec is absent (``pip install 'nnxp[mpi]'``);
the scripts themselves are in ``tests/mpi/``. Every run has a wall-clock limit, so a hang is
a failure, not a stuck suite.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None,
    reason="mpi4py or mpiexec not installed (pip install 'nnxp[mpi]')")


def _run(*args: str, ranks: int = 2, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    assert MPIEXEC is not None
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_missing_mpi4py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnxp import distributed

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"nnxp\[mpi\]"):
        distributed.rank()


def test_fit_rejects_a_bad_distributed_value() -> None:
    import numpy as np

    import nnxp
    from nnxp.layers import Dense

    m = nnxp.Sequential([Dense(2, 2)], seed=0)
    with pytest.raises(TypeError, match="distributed must be"):
        m.fit(np.zeros((4, 2)), np.zeros(4, dtype=int), epochs=1, verbose=0,
              distributed="yes")


@needs_mpi
def test_two_ranks_equal_one_process_with_twice_the_batch() -> None:
    out = _run(str(HERE / "mpi" / "equality.py"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout
    for name in ("sgd", "momentum", "adam", "accumulate momentum weighted",
                 "accumulate adam weighted"):
        assert f"{name} max_abs_diff=" in out.stdout


@needs_mpi
def test_a_rank_without_samples_in_a_step_contributes_zeros() -> None:
    """97 samples: the last global batch (and the last accumulated step) holds one sample, so
    one rank has none and adds zero gradients; still equal to one process."""
    out = _run(str(HERE / "mpi" / "equality.py"), "97")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout


@needs_mpi
@pytest.mark.parametrize("scenario", ["model", "data"])
def test_mismatch_across_ranks_is_named_at_start_up(scenario: str) -> None:
    out = _run(str(HERE / "mpi" / "scenarios.py"), scenario)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"rank 1 disagrees with rank 0 on the {scenario}" in out.stdout
    assert out.stdout.count("disagrees") == 2  # both ranks raise, neither hangs


@needs_mpi
def test_an_exception_on_one_rank_stops_every_rank() -> None:
    out = _run(str(HERE / "mpi" / "scenarios.py"), "raise", timeout=60)
    assert out.returncode != 0
    assert "rank 1 of 2 failed: RuntimeError: injected failure" in out.stderr
    assert "DONE" not in out.stdout


@needs_mpi
def test_a_dead_rank_stops_every_rank() -> None:
    out = _run(str(HERE / "mpi" / "scenarios.py"), "die", timeout=60)
    assert out.returncode != 0
    assert "DONE" not in out.stdout


@needs_mpi
def test_a_hung_rank_times_out() -> None:
    out = _run(str(HERE / "mpi" / "scenarios.py"), "hang", timeout=60)
    assert out.returncode != 0
    assert "rank 0 waited 3 s" in out.stderr


@needs_mpi
def test_resume_restores_every_rank(tmp_path: Path) -> None:
    out = _run(str(HERE / "mpi" / "scenarios.py"), "resume", str(tmp_path / "ck.npz"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DONE resume" in out.stdout


@needs_mpi
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_torch_cpu_tensors_go_straight_to_mpi() -> None:
    out = _run(str(HERE / "mpi" / "scenarios.py"), "torch")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DONE torch" in out.stdout


@needs_mpi
def test_cli_trains_on_two_ranks_and_rank_0_alone_saves(tmp_path: Path) -> None:
    target = tmp_path / "m.npz"
    out = _run("-m", "nnxp", "train", "--distributed", "--epochs", "1", "--save",
               str(target))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("test accuracy") == 1
    assert out.stderr.count("model written to") == 1
    assert "2 ranks" in out.stderr and target.exists()


# --- NCCL (CuPy's bindings), with a fake ``cupy.cuda.nccl``: no GPU, no cupy, no mpi4py -------


class _FakeNccl:
    """Stands in for ``cupy.cuda.nccl``: records what nnxp hands it."""

    available = True
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0

    def __init__(self) -> None:
        self.ids = 0
        self.communicators: list[_FakeNcclComm] = []

    def get_unique_id(self) -> tuple[int, ...]:
        self.ids += 1
        return (self.ids,) * 4

    def NcclCommunicator(self, n: int, uid: tuple[int, ...], rank: int) -> _FakeNcclComm:  # noqa: N802
        comm = _FakeNcclComm(n, uid, rank)
        self.communicators.append(comm)
        return comm


class _FakeNcclComm:
    def __init__(self, n: int, uid: tuple[int, ...], rank: int) -> None:
        self.n, self.uid, self.rank = n, uid, rank
        self.calls: list[tuple[int, ...]] = []

    def allReduce(self, *args: int) -> None:  # noqa: N802 - CuPy's name
        self.calls.append(args)


class _FakeDeviceArray:
    def __init__(self, dtype: str, size: int, ptr: int, contiguous: bool = True) -> None:
        self.dtype, self.size = dtype, size
        self.data = type("MemoryPointer", (), {"ptr": ptr})()
        self.flags = type("Flags", (), {"c_contiguous": contiguous})()


@pytest.fixture
def fake_nccl(monkeypatch: pytest.MonkeyPatch) -> _FakeNccl:
    from nnxp import backend

    fake = _FakeNccl()
    monkeypatch.setattr(backend, "_nccl_module", lambda: fake)
    monkeypatch.setattr(backend, "_current_stream_ptr", lambda: 0xC0FFEE)
    return fake


def test_nccl_unavailable_without_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnxp import backend

    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", None)  # import raises ImportError
    assert backend.nccl_available() is False


def test_nccl_available_follows_the_bindings_flag(fake_nccl: _FakeNccl) -> None:
    from nnxp import backend

    assert backend.nccl_available() is True
    fake_nccl.available = False  # CuPy built without NCCL
    assert backend.nccl_available() is False


@pytest.mark.parametrize(("dtype", "code"), [("float32", 7), ("float64", 8)])
def test_nccl_allreduce_passes_pointer_count_dtype_and_current_stream(
        fake_nccl: _FakeNccl, dtype: str, code: int) -> None:
    from nnxp import backend

    comm = fake_nccl.NcclCommunicator(2, (1,), 0)
    a = _FakeDeviceArray(dtype, 1234, ptr=0xABC0)
    assert backend.nccl_allreduce_sum(comm, a) is a
    assert comm.calls == [(0xABC0, 0xABC0, 1234, code, fake_nccl.NCCL_SUM, 0xC0FFEE)]


def test_nccl_allreduce_takes_a_given_stream_and_numpy_dtype_objects(
        fake_nccl: _FakeNccl) -> None:
    import numpy as np

    from nnxp import backend

    comm = fake_nccl.NcclCommunicator(2, (1,), 0)
    a = _FakeDeviceArray(np.dtype(np.float64), 3, ptr=16)  # type: ignore[arg-type]
    backend.nccl_allreduce_sum(comm, a, stream=type("Stream", (), {"ptr": 99})())
    backend.nccl_allreduce_sum(comm, a, stream=42)
    assert comm.calls == [(16, 16, 3, 8, 0, 99), (16, 16, 3, 8, 0, 42)]


def test_nccl_allreduce_rejects_other_dtypes_and_strided_buffers(fake_nccl: _FakeNccl) -> None:
    from nnxp import backend

    comm = fake_nccl.NcclCommunicator(2, (1,), 0)
    with pytest.raises(TypeError, match="float16"):
        backend.nccl_allreduce_sum(comm, _FakeDeviceArray("float16", 4, ptr=8))
    with pytest.raises(ValueError, match="contiguous"):
        backend.nccl_allreduce_sum(comm, _FakeDeviceArray("float32", 4, 8, False))
    assert comm.calls == []


class _FakeWorld:
    """Two ranks' MPI communicators, driven one rank after the other: ``bcast`` hands every
    rank what rank 0 sent; ``allgather`` gathers the values set in ``votes``."""

    def __init__(self) -> None:
        self.sent: Any = None
        self.votes: dict[str, list[Any]] = {}
        self.bcast_calls: list[tuple[int, Any]] = []

    def comm(self, rank: int) -> Any:
        world = self

        class Comm:
            def Get_rank(self) -> int:  # noqa: N802 - mpi4py's name
                return rank

            def bcast(self, value: Any, root: int = 0) -> Any:
                world.bcast_calls.append((rank, value))
                if rank == root:
                    world.sent = value
                return world.sent

            def allgather(self, value: Any) -> list[Any]:
                return world.votes.get("nccl", [value, value]) if isinstance(value, bool) \
                    else [value, value]

            def Ibarrier(self) -> None:  # noqa: N802
                return None

            def Allreduce(self, *args: Any, **kw: Any) -> None:  # noqa: N802
                raise TypeError("no buffer protocol for this fake")

        return Comm()


def _replica(world: _FakeWorld, rank: int) -> Any:
    from nnxp.distributed import Replica

    r = Replica.__new__(Replica)
    r.comm, r.rank, r.size, r.timeout = world.comm(rank), rank, 2, 5.0
    r.MPI = type("MPI", (), {"Request": type("Request", (), {
        "Testall": staticmethod(lambda reqs: True)}), "IN_PLACE": None, "SUM": None,
        "Query_cuda_support": staticmethod(lambda: False)})
    return r


def _gpu_model() -> Any:
    import numpy as np

    layer = type("Layer", (), {"params": {"W": np.zeros(3, dtype=np.float32)}})()
    return type("Model", (), {"xp": np, "device": "cuda:0", "dtype": np.float32,
                              "layers": [layer]})()


@pytest.fixture
def cupy_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnxp import backend

    monkeypatch.setattr(backend, "backend_name_of", lambda x: "cupy")


def test_choose_transport_prefers_nccl_and_every_rank_gets_rank_0s_id(
        fake_nccl: _FakeNccl, cupy_named: None) -> None:
    world = _FakeWorld()
    paths = [_replica(world, r)._choose_transport(_gpu_model()) for r in (0, 1)]
    assert all(p.startswith("NCCL (cupy") for p in paths)
    assert fake_nccl.ids == 1  # only rank 0 made an id
    assert world.bcast_calls == [(0, (1, 1, 1, 1)), (1, None)]
    assert [(c.n, c.uid, c.rank) for c in fake_nccl.communicators] == [
        (2, (1, 1, 1, 1), 0), (2, (1, 1, 1, 1), 1)]


def test_choose_transport_falls_back_without_nccl(fake_nccl: _FakeNccl,
                                                   cupy_named: None) -> None:
    fake_nccl.available = False
    path = _replica(_FakeWorld(), 0)._choose_transport(_gpu_model())
    assert path.startswith("host staging (cupy")
    assert fake_nccl.ids == 0 and fake_nccl.communicators == []


def test_choose_transport_needs_nccl_on_every_rank(fake_nccl: _FakeNccl,
                                                   cupy_named: None) -> None:
    world = _FakeWorld()
    world.votes["nccl"] = [True, False]  # rank 1 cannot load NCCL: nobody uses it
    path = _replica(world, 0)._choose_transport(_gpu_model())
    assert path.startswith("host staging") and fake_nccl.communicators == []


def test_choose_transport_keeps_nccl_for_cupy_only(fake_nccl: _FakeNccl,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from nnxp import backend

    monkeypatch.setattr(backend, "backend_name_of", lambda x: "torch")  # torch CUDA
    path = _replica(_FakeWorld(), 0)._choose_transport(_gpu_model())
    assert path.startswith("host staging (torch") and fake_nccl.communicators == []


def test_nccl_bucket_is_summed_in_stream_order_without_an_mpi_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from nnxp import backend

    summed: list[Any] = []

    def fake_sum(comm: Any, array: Any, stream: Any = None) -> Any:
        summed.append(comm)
        array *= 2  # what two ranks holding the same scaled gradient sum to
        return array

    monkeypatch.setattr(backend, "nccl_allreduce_sum", fake_sum)
    layer = type("Layer", (), {"params": {"W": np.ones((2, 2))},
                               "grads": {"W": np.full((2, 2), 3.0)}})()
    r = _replica(_FakeWorld(), 0)
    r.model = type("Model", (), {"xp": np, "device": "cpu", "layers": [layer]})()
    r.nccl, r.direct, r.comm_seconds, r.steps = "nccl-comm", True, 0.0, 0
    r._local, r._global, r._pending = 1, 2, []
    r._plan_buckets(r.model, 2**20)
    monkeypatch.setattr(r, "_wait", lambda *a: pytest.fail("NCCL buckets need no MPI wait"))
    r.layer_ready(layer)
    r.finish()
    assert summed == ["nccl-comm"]
    np.testing.assert_array_equal(layer.grads["W"], np.full((2, 2), 3.0))
