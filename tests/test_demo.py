"""The main job: `nnxp train` on the bundled digits (what `make demo` runs)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from nnxp.cli import main

pytest.importorskip("sklearn")


def test_default_demo_reaches_95_percent(capsys) -> None:
    assert main(["train", "--quiet"]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", out).group(1))
    assert accuracy >= 0.95, out


def test_demo_reports_epochs_and_progress(capsys) -> None:
    assert main(["train", "--epochs", "2", "--hidden", "16"]) == 0
    err = capsys.readouterr().err
    assert "MLP 64-16-10" in err and "epoch 2/2" in err and "accuracy=" in err


@pytest.mark.parametrize("backend", ["array_api_strict"]
                         + (["torch"] if importlib.util.find_spec("torch") else []))
def test_demo_runs_on_other_backends_from_the_environment(backend: str) -> None:
    env = {**os.environ, "NNXP_BACKEND": backend}
    out = subprocess.run([sys.executable, "-m", "nnxp", "train", "--epochs", "3", "--quiet"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"on {backend})" in out.stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--backend", "tpu"], "valid names are numpy, cupy, torch, array_api_strict"),
    (["train", "--test-size", "1.5"], "--test-size must lie in (0, 1)"),
])
def test_bad_options_exit_2_with_one_line(capsys, argv, message) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_argparse_rejects_non_positive_values(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epochs", "0"])
    assert exc.value.code == 2
