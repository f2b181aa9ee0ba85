"""Crash-safe saves: what a killed, signalled or failing save leaves on disk.

A save writes ``.<name>.nnxp-tmp-<pid>-<random>`` beside the destination and renames it into
place. These tests kill real processes while they save (SIGKILL at random moments: at most one
stray temporary file, removed by the next save; SIGTERM: none), raise inside the write, and check
that symbolic links and permission bits survive an overwrite.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nnxp
from nnxp import archive
from nnxp.layers import Dense, ReLU

ROOT = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(os.name != "posix", reason="signals and fork are POSIX")

# A server that imports nnxp once, then forks one child per trial; the child saves in a loop
# until the server kills it after the delay the test asked for (counted from its first step).
SERVER = textwrap.dedent("""
    import os, signal, sys, time
    import nnxp
    from nnxp.layers import Dense, ReLU
    path = sys.argv[1]
    model = nnxp.Sequential([Dense(64, 256), ReLU(), Dense(256, 256)], seed=0)
    model.save(path)
    print("ready", flush=True)
    for line in sys.stdin:
        how, delay = line.split()
        started, ready = os.pipe()
        pid = os.fork()
        if pid == 0:  # a signal that came before Python's after-fork hook would be lost
            os.write(ready, b"x")
            while True:
                model.save(path)
        os.read(started, 1)
        os.close(started)
        os.close(ready)
        time.sleep(float(delay))
        os.kill(pid, getattr(signal, how))
        deadline = time.monotonic() + 60  # a child that outlives its signal fails, not hangs
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1, flush=True)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                print("hung", flush=True)
                break
            time.sleep(0.005)
""")


def strays(directory: Path) -> list[str]:
    """Hidden files: a temporary file of any naming scheme (the tests create no others)."""
    return sorted(n for n in os.listdir(directory) if n.startswith("."))


@pytest.fixture
def server(tmp_path):
    path = tmp_path / "model.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def trial(how: str, delay: float) -> int:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{how} {delay}\n")
        proc.stdin.flush()
        answer = proc.stdout.readline().strip()
        assert answer != "hung", (f"the saving child was still alive 60 s after {how} "
                                  f"(sent {delay:.4f} s into its saves): the signal was lost")
        return int(answer)

    with proc:  # closes the pipes
        yield path, trial
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


@posix_only
def test_sigkill_at_random_moments_leaves_one_stray_at_most_and_the_next_save_removes_it(
        server) -> None:
    path, trial = server
    rng = random.Random(0)
    model = nnxp.Sequential([Dense(3, 2)], seed=1)
    seen = 0
    for _ in range(24):
        assert trial("SIGKILL", rng.uniform(0.0, 0.03)) == signal.SIGKILL
        left = strays(path.parent)
        assert len(left) <= 1, left
        seen += len(left)
        nnxp.load(path)  # never torn: the old or the new file, complete
        model.save(path.parent / "other.npz")  # any save into the folder cleans up
        assert strays(path.parent) == []
    assert seen > 0, "no kill landed inside a save: the test would not catch a leak"


@posix_only
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_the_process_can_handle_leaves_no_stray(server, how) -> None:
    path, trial = server
    rng = random.Random(1)
    for _ in range(8):
        assert trial(how, rng.uniform(0.0, 0.02)) in (getattr(signal, how), -1)
        assert strays(path.parent) == []
        nnxp.load(path)


@posix_only
def test_the_users_signal_handler_still_runs_and_is_restored(tmp_path) -> None:
    calls = []

    def mine(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        model = nnxp.Sequential([Dense(3, 2)], seed=0)

        def write(file):
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the write
            archive.backend.save_npz(file, {"a": archive.backend.host_array([1.0], "float32")})

        archive.atomic_write(tmp_path / "f.npz", write)
        assert calls == [signal.SIGTERM]  # the user's handler ran, the save went on
        assert signal.getsignal(signal.SIGTERM) is mine
        assert strays(tmp_path) == []
        model.save(tmp_path / "m.npz")
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_exception_while_writing_leaves_nothing(tmp_path) -> None:
    def boom(file):
        file.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        archive.atomic_write(tmp_path / "m.npz", boom)
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".m.npz.nnxp-tmp-{dead.pid}-abcd"
    live = tmp_path / f".m.npz.nnxp-tmp-{os.getppid()}-abcd"  # the parent is alive
    other = tmp_path / ".m.npz.tmp"  # not ours: never touched
    for p in (stale, live, other):
        p.write_bytes(b"x")
    nnxp.Sequential([Dense(3, 2)], seed=0).save(tmp_path / "m.npz")
    assert not stale.exists() and live.exists() and other.exists()
    live.unlink()
    other.unlink()


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links")
def test_saving_through_a_symlink_writes_its_target(tmp_path) -> None:
    real = tmp_path / "store" / "model.npz"
    real.parent.mkdir()
    link = tmp_path / "latest.npz"
    link.symlink_to(real)  # dangling at first
    model = nnxp.Sequential([Dense(3, 2)], seed=0)
    model.save(link)
    model.save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.is_file() and strays(real.parent) == [] and strays(tmp_path) == []
    nnxp.load(link)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_an_overwrite_keeps_the_permission_bits(tmp_path) -> None:
    path = tmp_path / "m.npz"
    model = nnxp.Sequential([Dense(3, 2), ReLU()], seed=0)
    model.save(path)
    os.chmod(path, 0o600)
    model.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o640)
    model.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    umask = os.umask(0o022)
    os.umask(umask)
    fresh = tmp_path / "new.npz"
    model.save(fresh)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o666 & ~umask


def test_overwrite_false_still_refuses_an_existing_file(tmp_path) -> None:
    path = tmp_path / "m.npz"
    path.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        nnxp.Sequential([Dense(3, 2)], seed=0).save(path, overwrite=False)
    assert path.read_bytes() == b"keep" and strays(tmp_path) == []
