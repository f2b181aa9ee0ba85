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
    for name in ("sgd", "momentum", "adam"):
        assert f"{name} max_abs_diff=" in out.stdout


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
