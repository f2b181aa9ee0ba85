"""``make gpu-check``: everything nnxp needs checked on an NVIDIA GPU, in one run under 8 minutes.

Parts, in order (each with a time cap; a part that no longer fits the total budget is skipped
with a note, and results are written after every part, so a failure or a timeout still leaves
the parts before it on disk):

1. ``environment`` — GPU name, driver, CUDA runtime, cupy / torch / numpy / array-api-compat
   versions.
2. ``smoke`` — ``fit`` on every GPU backend against numpy: an SGD MLP whose per-epoch losses must
   match numpy's within :data:`LOSS_RTOL`, and a BatchNorm + Dropout + Adam MLP that must train.
3. ``syncs`` — host synchronisations per training step and per ``fit`` epoch, counted by the
   CUDA runtime's own detectors: ``torch.cuda.set_sync_debug_mode("warn")`` on torch, CuPy's
   synchronisation detector (the hook behind ``cupyx.allow_synchronize``) on cupy.
4. ``bench`` — training steps of the "big" (784-1024-1024-10, batch 256) and "wide" (4096×4,
   batch 4096) MLPs with SGD and Adam: nnxp on each GPU backend, its matmul bound, torch CUDA
   eager and torch's fused Adam; and the big MLP's peak memory against its live set.
5. ``capture`` — issue 13's recorded step: ``fit`` epochs of the small MLP (64-128-10, batch
   32) with ``capture=True`` against ``capture=False`` on each GPU backend and against numpy on
   the CPU (SGD with momentum, Adam), and of the big MLP (784-1024-1024-10, batch 256; Adam,
   then SGD with momentum) against torch CUDA eager's step (the bench part's row, else timed
   here): time per step, what was recorded and replayed, how far the weights of the two GPU
   runs are apart (rounding only), and a verdict on each of issue 13's two GPU targets
   (``met`` / ``not met`` / ``not measured``, shown right below the parts in the Markdown).
6. ``tests`` — the GPU parametrisations of the test suite
   (``NNXP_TEST_BACKENDS=cupy,torch:cuda pytest tests -k "cupy or cuda"``).

Without a GPU (or with ``--dry-run``) the same code runs on torch CPU with small workloads, and
the results go to a temporary directory: the GPU parts say why they were skipped.
Results: ``benchmarks/results/gpu-<date>-<device>.{md,json}`` (``--out DIR`` elsewhere).
Wheels carried in ``.whl/`` are installed first (``pip install --no-index --no-deps``).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

GPU_SPECS = ("cupy", "torch:cuda")
DEFAULT_BUDGET = 450.0
"""Seconds for the whole run (7.5 minutes; the parts' caps add up to more, the budget wins)."""

PART_CAPS = {"environment": 30.0, "smoke": 90.0, "syncs": 60.0, "bench": 150.0,
             "capture": 60.0, "tests": 240.0}
"""Seconds each part may take at most (less when the total budget has less left)."""

PART_MIN = {"environment": 1.0, "smoke": 10.0, "syncs": 10.0, "bench": 20.0, "capture": 10.0,
            "tests": 20.0}
"""A part is skipped when less than this is left of the budget."""

LOSS_RTOL = 1e-3
"""Per-epoch mean losses of the GPU backends against numpy's (same seed, same batches, float32):
only the summation order of products and reductions differs, about 1e-6 relative per step."""

ACCURACY_ATOL = 0.01
"""Training accuracy after the smoke fit, GPU backend against numpy."""


TEST_TIMEOUT = 120
"""Seconds one test may take in the tests part, where pytest-timeout is installed."""


class PartTimeout(Exception):
    """A part ran past its time cap."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`PartTimeout` in the main thread after ``seconds`` (SIGALRM, POSIX)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise PartTimeout(f"ran past its cap of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------------------------
# Carried wheels
# ----------------------------------------------------------------------------------------------


def install_wheels(wheel_dir: Path) -> dict[str, Any]:
    """``pip install --no-index --no-deps`` the wheels of ``wheel_dir``; when the environment
    refuses (PEP 668, no write access), into ``wheel_dir/site``, which is then put on the path."""
    wheels = sorted(str(p) for p in wheel_dir.glob("*.whl"))
    if not wheels:
        return {"status": "skipped", "note": f"no wheels in {wheel_dir}"}
    base = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    done = subprocess.run(base + wheels, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return {"status": "ok", "wheels": [Path(w).name for w in wheels], "where": "site"}
    site = wheel_dir / "site"
    again = subprocess.run(base + ["--upgrade", "--target", str(site)] + wheels,
                           capture_output=True, text=True, check=False)
    if again.returncode != 0:
        return {"status": "failed", "note": (done.stderr + again.stderr)[-2000:]}
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    importlib.invalidate_caches()
    refusal = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
    why = next((ln for ln in refusal if ln.lower().startswith("error")),
               refusal[-1] if refusal else "")
    return {"status": "ok", "wheels": [Path(w).name for w in wheels], "where": str(site),
            "note": f"installed with --target ({why[:200]})" if why else "installed with --target"}


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


class Check:
    """The run's state: options, clock, and the results written after every part."""

    def __init__(self, args: argparse.Namespace, specs: list[str], dry_run: bool,
                 why_dry: str, out: Path, stem: str) -> None:
        self.args, self.specs, self.dry_run, self.why_dry = args, specs, dry_run, why_dry
        self.out, self.stem = out, stem
        self.start = time.monotonic()
        self.budget = float(args.budget)
        self.results: dict[str, Any] = {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dry_run": dry_run, "why_dry_run": why_dry, "specs": specs,
            "budget_s": self.budget, "quick": bool(args.quick), "parts": {}}

    @property
    def json_path(self) -> Path:
        return self.out / f"{self.stem}.json"

    @property
    def md_path(self) -> Path:
        return self.out / f"{self.stem}.md"

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def run_part(self, name: str, fn: Callable[[Check, float], dict[str, Any]]) -> None:
        left = self.remaining()
        part: dict[str, Any]
        if name in self.args.skip:
            part = {"status": "skipped", "note": "--skip"}
        elif left < PART_MIN[name]:
            part = {"status": "skipped",
                    "note": f"time budget: {max(left, 0):.0f} s left of {self.budget:.0f} s"}
        else:
            cap = min(PART_CAPS[name], left)
            print(f"== {name} (cap {cap:.0f} s, {left:.0f} s left)", flush=True)
            t0 = time.monotonic()
            data: dict[str, Any] = {}
            try:
                with deadline(cap + 5):  # the part watches `cap` itself; this is the backstop
                    data = fn(self, cap)
                part = {"status": data.pop("status", "ok"), **data}
            except PartTimeout as exc:
                part = {"status": "timeout", "note": str(exc)}
            except Exception as exc:  # noqa: BLE001 - a failing part must not stop the others
                part = {"status": "failed", "note": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()[-4000:]}
            part["seconds"] = round(time.monotonic() - t0, 2)
            print(f"   {name}: {part['status']} in {part['seconds']} s"
                  + (f" — {part['note']}" if part.get("note") else ""), flush=True)
        self.results["parts"][name] = part
        self.write()

    def write(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.start, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        self.md_path.write_text(markdown(self.results))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> list[dict[str, str]]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, driver, memory = (c.strip() for c in line.split(",")[:3])
        gpus.append({"name": name, "driver": driver, "memory": memory})
    return gpus


def part_environment(check: Check, cap: float) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "gpus": _nvidia_smi(),
                           "versions": {d: _version(d) for d in (
                               "numpy", "torch", "cupy-cuda13x", "cupy-cuda12x",
                               "array-api-compat", "array-api-strict", "pytest",
                               "pytest-benchmark", "pytest-xdist", "pytest-timeout",
                               "hypothesis")}}
    import nnxp

    env["tf32"] = nnxp.get_tf32()  # float32 matmul mode: nnxp.set_tf32 / NNXP_TF32
    try:
        import torch

        env["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            env["torch_device"] = torch.cuda.get_device_name()
            env["torch_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    except ImportError:
        pass
    try:
        import cupy

        rt = cupy.cuda.runtime
        env["cupy_cuda_runtime"] = rt.runtimeGetVersion()
        env["cupy_cuda_driver"] = rt.driverGetVersion()
    except Exception as exc:  # noqa: BLE001 - no cupy or no GPU: recorded, not fatal
        env["cupy"] = f"unavailable: {type(exc).__name__}: {exc}"[:300]
    from nnxp import bench

    env["backends"] = {s: bench.unavailable_reason(s) or "available"
                       for s in ("numpy", "torch:cpu", *GPU_SPECS)}
    check.results["environment"] = env
    return {}


# --- smoke -------------------------------------------------------------------------------------


def _smoke_data(n: int) -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 32)).astype(np.float32)
    return X, X[:, :10].argmax(axis=1)


def _fit(spec: str, full: bool, X: Any, y: Any, epochs: int) -> dict[str, Any]:
    import nnxp
    from nnxp.layers import BatchNorm1d, Dense, Dropout, ReLU

    with nnxp.use_backend(spec):
        middle = [BatchNorm1d(128), ReLU(), Dropout(0.2)] if full else [ReLU()]
        model = nnxp.Sequential([Dense(32, 128), *middle, Dense(128, 10)], seed=0)
        opt = nnxp.optim.Adam(lr=1e-2) if full else nnxp.optim.SGD(lr=0.05)
        t0 = time.perf_counter()
        history = model.fit(X, y, optimizer=opt, epochs=epochs, batch_size=128, verbose=0)
        seconds = time.perf_counter() - t0
        accuracy = float(model.evaluate(X, y)["accuracy"])
    return {"loss": [float(v) for v in history["loss"]], "accuracy": accuracy,
            "seconds": round(seconds, 3)}


def part_smoke(check: Check, cap: float) -> dict[str, Any]:
    n, epochs = (1024, 3) if check.args.quick else (4096, 3)
    X, y = _smoke_data(n)
    reference = _fit("numpy", False, X, y, epochs)
    rows, failures = [], []
    for spec in check.specs:
        sgd = _fit(spec, False, X, y, epochs)
        rel = max(abs(a - b) / abs(b) for a, b in zip(sgd["loss"], reference["loss"]))
        acc_diff = abs(sgd["accuracy"] - reference["accuracy"])
        full = _fit(spec, True, X, y, epochs)
        trains = (all(v == v and abs(v) < 1e30 for v in full["loss"])
                  and full["loss"][-1] < full["loss"][0] and full["accuracy"] > 0.5)
        ok = rel <= LOSS_RTOL and acc_diff <= ACCURACY_ATOL and trains
        rows.append({"spec": spec, "sgd_loss": sgd["loss"], "numpy_loss": reference["loss"],
                     "loss_max_rel_diff": rel, "accuracy_diff": acc_diff,
                     "sgd_seconds": sgd["seconds"], "full_loss": full["loss"],
                     "full_accuracy": full["accuracy"], "full_seconds": full["seconds"],
                     "ok": ok})
        if not ok:
            failures.append(spec)
    out: dict[str, Any] = {"rows": rows, "samples": n, "epochs": epochs,
                           "tolerance": {"loss_rtol": LOSS_RTOL, "accuracy_atol": ACCURACY_ATOL}}
    if failures:
        out.update(status="failed", note=f"mismatch or no training on {', '.join(failures)}")
    return out


# --- syncs -------------------------------------------------------------------------------------


def _site() -> str:
    """Where in nnxp a synchronisation happens: the innermost frame of the package, and when
    that is in backend.py (a helper such as to_numpy), also its innermost caller outside it."""
    frames = [fr for fr in traceback.extract_stack()[:-2]
              if "/nnxp/" in fr.filename.replace(os.sep, "/")
              and not fr.filename.replace(os.sep, "/").endswith("/nnxp/bench.py")]
    if not frames:
        return "outside nnxp"

    def name(fr: Any) -> str:
        return f"nnxp/{fr.filename.replace(os.sep, '/').rsplit('/nnxp/', 1)[1]}:{fr.lineno}"

    inner = frames[-1]
    if inner.filename.replace(os.sep, "/").endswith("/nnxp/backend.py"):
        callers = [fr for fr in frames if not fr.filename.replace(os.sep, "/").endswith(
            "/nnxp/backend.py")]
        if callers:
            return f"{name(callers[-1])} via {name(inner)}"
    return name(inner)


class SyncCounter:
    """Counts host synchronisations (and where in nnxp they happen) while active."""

    method = "none"

    def __init__(self) -> None:
        self.sites: collections.Counter[str] = collections.Counter()

    @property
    def count(self) -> int:
        return sum(self.sites.values())

    def record(self) -> None:
        self.sites[_site()] += 1

    @contextmanager
    def active(self) -> Iterator[None]:
        yield


class TorchSyncDebug(SyncCounter):
    """torch CUDA: ``set_sync_debug_mode("warn")`` makes the CUDA runtime wrappers warn on
    every synchronising call (stream and device syncs, blocking copies, ``.item()``, ``nonzero``
    ...); each warning is counted and attributed."""

    method = "torch.cuda.set_sync_debug_mode('warn')"

    @contextmanager
    def active(self) -> Iterator[None]:
        import torch

        def show(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
            if "synchroniz" in str(message):
                self.record()

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")


class CupySyncDetect(SyncCounter):
    """cupy: CuPy declares its own synchronising calls to ``cupy._core.syncdetect`` (what
    ``cupyx.allow_synchronize(False)`` turns into an exception): every device-to-host copy
    (``get``, ``float``, ``int``, ``bool``, ``item``, ``asnumpy``) and ``Device.synchronize``.
    We count those instead of raising at the first, and also wrap ``Stream.synchronize``.
    Synchronisations inside libraries (cuBLAS, a cudaFree) are not seen."""

    method = "cupy._core.syncdetect + Stream.synchronize"

    @contextmanager
    def active(self) -> Iterator[None]:
        import cupy
        from cupy._core import syncdetect

        declare, stream_sync = syncdetect._declare_synchronize, cupy.cuda.Stream.synchronize

        def counted_declare() -> None:
            self.record()
            declare()

        def counted_stream_sync(stream: Any) -> Any:
            self.record()
            return stream_sync(stream)

        syncdetect._declare_synchronize = counted_declare
        cupy.cuda.Stream.synchronize = counted_stream_sync
        try:
            yield
        finally:
            syncdetect._declare_synchronize = declare
            cupy.cuda.Stream.synchronize = stream_sync


class TorchHostReads(SyncCounter):
    """Dry run on torch CPU: no CUDA runtime, so count the tensor methods that would block a
    CUDA stream (``item``, ``__bool__``, ``__float__``, ``__int__``, ``tolist``,
    ``cpu``; not ``numpy``, which follows a ``cpu``). A stand-in that exercises the counting,
    not a measurement of the GPU."""

    method = "torch CPU stand-in: wrapped Tensor.item/__bool__/__float__/__int__/tolist/cpu"
    METHODS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu")

    @contextmanager
    def active(self) -> Iterator[None]:
        import torch

        saved = {m: getattr(torch.Tensor, m) for m in self.METHODS}

        def wrap(original: Any) -> Any:
            def counted(*args: Any, **kwargs: Any) -> Any:
                self.record()
                return original(*args, **kwargs)
            return counted

        for m, original in saved.items():
            setattr(torch.Tensor, m, wrap(original))
        try:
            yield
        finally:
            for m, original in saved.items():
                setattr(torch.Tensor, m, original)


def sync_counter(spec: str) -> SyncCounter:
    if spec == "cupy" or spec.startswith("cupy:"):
        return CupySyncDetect()
    if spec.startswith("torch") and "cuda" in spec:
        return TorchSyncDebug()
    if spec.startswith("torch"):
        return TorchHostReads()
    return SyncCounter()


def count_syncs(spec: str, opt_name: str, steps: int) -> dict[str, Any]:
    """Syncs per ``train_step`` (after two warm-up steps) and per ``fit`` epoch of a
    64-256-256-10 MLP at batch 128."""
    import nnxp
    from nnxp import backend, bench

    widths, batch = [64, 256, 256, 10], 128
    out: dict[str, Any] = {"spec": spec, "optimizer": opt_name}
    with nnxp.use_backend(spec) as info:
        model, opt = bench.build_mlp(widths), bench.make_optimizer(opt_name)
        opt.bind(model.parameters())
        x = bench._data((batch, widths[0]), 1, info.xp, info.device)
        y = bench._labels(batch, widths[-1], 2, info.xp, info.device)
        for _ in range(2):
            bench.train_step(model, opt, x, y)
        backend.synchronize()
        counter = sync_counter(spec)
        with counter.active():
            for _ in range(steps):
                bench.train_step(model, opt, x, y)
        out.update(method=counter.method, steps=steps, step_syncs=counter.count,
                   per_step=counter.count / steps, step_sites=counter.sites.most_common(8))
        X = bench._data((steps * batch, widths[0]), 3, info.xp, info.device)
        Y = bench._labels(steps * batch, widths[-1], 4, info.xp, info.device)
        model.fit(X, Y, optimizer=opt, epochs=1, batch_size=batch, verbose=0)  # warm
        backend.synchronize()
        counter = sync_counter(spec)
        with counter.active():
            model.fit(X, Y, optimizer=opt, epochs=1, batch_size=batch, verbose=0)
        out.update(fit_steps=steps, fit_epoch_syncs=counter.count,
                   fit_sites=counter.sites.most_common(8))
    return out


def part_syncs(check: Check, cap: float) -> dict[str, Any]:
    steps = 4 if check.args.quick else 16
    rows = [count_syncs(spec, opt, steps) for spec in check.specs for opt in ("sgd", "adam")]
    out: dict[str, Any] = {"rows": rows}
    if check.dry_run:
        out["note"] = "dry run: a torch CPU stand-in for the CUDA runtime's detectors"
    return out


# --- bench -------------------------------------------------------------------------------------


def part_bench(check: Check, cap: float) -> dict[str, Any]:
    import peers

    from nnxp import bench

    t_end = time.monotonic() + cap - 5
    if check.dry_run:
        models = ["small"] if check.args.quick else ["small", "big"]
        device = "cpu"
    else:
        models, device = ["big", "wide"], "cuda"
    budget = 0.05 if check.args.quick else (0.1 if check.dry_run else 0.5)
    cases: list[Any] = []
    for name in models:
        for opt in ("sgd", "adam"):
            for spec in check.specs:
                cases += [c for c in bench.model_cases(spec, name, opt) if c.group == "step"]
            if peers.HAS_TORCH and (device == "cpu" or peers.peer_devices(["torch:cuda"])):
                cases += [c for c in peers.model_peer_cases(device, name, opt)
                          if c.group == "step"]
    rows, notes = [], []
    for case in cases:
        if time.monotonic() > t_end:
            notes.append(f"stopped at {case.id}: the part's time ran out")
            break
        try:
            t = bench.time_case(case, budget=budget)
        except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
            rows.append({**case.extra_info(), "error": f"{type(exc).__name__}: {exc}"[:500]})
            continue
        rows.append({**case.extra_info(), "median": t.median, "min": t.min, "rounds": t.rounds,
                     "timer": t.timer, "warmup_calls": t.warmup_calls,
                     "first_call": t.first_call, "warm_call": t.warm_call})
    memory = []
    for spec in check.specs:
        for opt in ("sgd", "adam"):
            if time.monotonic() > t_end:
                notes.append(f"peak memory of {spec}/{opt} skipped: the part's time ran out")
                continue
            name = "small" if check.args.quick else "big"
            memory.append(bench.peak_memory(spec, name, opt))
    return _with_status({"rows": rows, "memory": memory, "ratios": ratios(rows),
                         "budget_per_row_s": budget}, rows, notes)


def _with_status(out: dict[str, Any], rows: list[dict[str, Any]],
                 notes: list[str]) -> dict[str, Any]:
    """A part's result with its notes, failed when a row raised (the other rows kept)."""
    if notes:
        out["note"] = "; ".join(notes)
    if any("error" in r for r in rows):
        out.update(status="failed", note="; ".join(
            [f"{sum('error' in r for r in rows)} row(s) raised", *notes]))
    return out


CAPTURE_OPTIMIZERS = {"small": {"sgd": ("SGD", {"lr": 0.05, "momentum": 0.9}),
                                  "adam": ("Adam", {"lr": 1e-3})},
                        "big": {"adam": ("Adam", {"lr": 1e-3}),
                                "sgd": ("SGD", {"lr": 0.01, "momentum": 0.9})}}
"""The optimizers of the capture part per MLP, in the order they run (the big MLP's Adam first:
issue 13's big-step target is stated for Adam, SGD comes second in case time runs out)."""


def _capture_fit(spec: str, opt_name: str, capture: bool, X: Any, y: Any, epochs: int,
                 model_name: str = "small") -> dict[str, Any]:
    """``fit`` of MLP ``model_name`` (``nnxp.bench.MODELS``) with ``capture`` on or off: the
    time per step is the best later epoch's ``epoch_time`` over its steps (the first epoch
    checks and records the step), and the weights come back for the comparison."""
    import numpy as np

    import nnxp
    from nnxp import bench

    cfg = bench.MODELS[model_name]
    cls, options = CAPTURE_OPTIMIZERS[model_name][opt_name]
    with nnxp.use_backend(spec) as info:
        model = bench.build_mlp(cfg["widths"])
        opt = getattr(nnxp.optim, cls)(**options)
        history = model.fit(X, y, optimizer=opt, epochs=epochs, batch_size=cfg["batch"],
                            verbose=0, capture=capture)  # shuffled, as fit does by default
        weights = np.concatenate([np.ravel(nnxp.to_numpy(p)) for p, _ in
                                  ((layer.params[k], k) for layer in model.layers
                                   for k in layer.params)])
        # why a GPU backend recorded nothing (CuPy refusing cuBLAS calls in a recording)
        problem = (nnxp.backend.cupy_capture_problem(info.device)
                   if capture and info.name == "cupy" else None)
    steps = -(-X.shape[0] // cfg["batch"])
    times = history.history["epoch_time"][1:]  # the first epoch records and warms up
    return {"spec": spec, "optimizer": opt_name, "capture": capture,
            "step_ms": min(times) / steps * 1e3, "epochs": epochs, "steps_per_epoch": steps,
            "report": history.capture, "capture_problem": problem, "weights": weights}


def _capture_runs(runs: list[tuple[str, bool]], opt_name: str, X: Any, y: Any, epochs: int,
                  model_name: str, t_end: float, notes: list[str],
                  ) -> tuple[list[dict[str, Any]], dict[tuple[str, bool], dict[str, Any]]]:
    """The fits of ``runs`` (spec, capture) until ``t_end``: error rows for the fits that
    raised, and the others by (spec, capture) with their weights."""
    errors, found = [], {}
    for spec, capture in runs:
        if time.monotonic() > t_end:
            notes.append(f"{model_name} {spec}/{opt_name}/capture={capture} skipped: "
                         "time ran out")
            continue
        try:
            found[(spec, capture)] = _capture_fit(spec, opt_name, capture, X, y, epochs,
                                                  model_name)
        except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
            errors.append({"model": model_name, "spec": spec, "optimizer": opt_name,
                           "capture": capture, "error": f"{type(exc).__name__}: {exc}"[:500]})
    return errors, found


def _weight_diff_rows(found: dict[tuple[str, bool], dict[str, Any]],
                      model_name: str) -> list[dict[str, Any]]:
    """The rows of ``found`` without their weights; a recorded run gets the largest weight
    difference to the same backend's unrecorded run."""
    import numpy as np

    rows = []
    for (spec, capture), r in found.items():
        row = {"model": model_name, **{k: v for k, v in r.items() if k != "weights"}}
        plain = found.get((spec, False))
        if capture and plain is not None:
            row["max_abs_weight_diff_vs_uncaptured"] = float(
                np.max(np.abs(r["weights"] - plain["weights"])))
        rows.append(row)
    return rows


def _torch_eager_step(check: Check, opt_name: str, t_end: float,
                      notes: list[str]) -> dict[str, Any] | None:
    """torch eager's training step of the big MLP with ``opt_name`` (torch's unfused default
    optimizer, on CUDA, or on the CPU in a dry run): the median of the bench part's row when
    that part timed it, else timed here with the same case (``peers.model_peer_cases``)."""
    import peers

    from nnxp import bench

    key = f"mlp-big.step[big/{opt_name}]"
    for r in check.results["parts"].get("bench", {}).get("rows", []):
        if r.get("key") == key and r.get("impl") == "torch" and "median" in r:
            return {"ms": r["median"] * 1e3, "min_ms": r["min"] * 1e3, "backend": r["backend"],
                    "source": "bench part", "timer": r.get("timer")}
    device = "cpu" if check.dry_run else "cuda"
    if not peers.HAS_TORCH or (device == "cuda" and not peers.peer_devices(["torch:cuda"])):
        notes.append(f"no torch {device} peer for big/{opt_name}")
        return None
    if time.monotonic() > t_end:
        notes.append(f"torch eager big/{opt_name} not timed: time ran out")
        return None
    (case,) = [c for c in peers.model_peer_cases(device, "big", opt_name)
               if c.group == "step" and c.impl == "torch"]
    t = bench.time_case(case, budget=0.05 if check.dry_run else 0.5)
    return {"ms": t.median * 1e3, "min_ms": t.min * 1e3, "backend": case.backend,
            "source": "timed in the capture part", "timer": t.timer}


def part_capture(check: Check, cap: float) -> dict[str, Any]:
    """Issue 13's recorded step, for its two GPU targets: is the small MLP's recorded step on a
    GPU at least as fast as its step on the CPU (numpy), and is the big MLP's recorded step at
    most torch CUDA eager's? Per-step times from ``fit``'s own epoch times (best later epoch);
    the torch figure from the bench part (:func:`_torch_eager_step`)."""
    t_end = time.monotonic() + cap - 5
    n = 640 if check.args.quick else 3200
    epochs = 3 if check.args.quick else 4
    X, _ = _smoke_data(n)
    X = X[:, :16].repeat(4, axis=1)  # 64 features
    y = X[:, :10].argmax(axis=1)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for opt_name in CAPTURE_OPTIMIZERS["small"]:
        runs = [("numpy", False)] + [(spec, c) for spec in check.specs for c in (False, True)]
        errors, found = _capture_runs(runs, opt_name, X, y, epochs, "small", t_end, notes)
        rows += errors
        cpu = found.get(("numpy", False))
        for row in _weight_diff_rows(found, "small"):
            if cpu is not None and row["spec"] != "numpy":
                row["cpu_numpy_step_ms"] = cpu["step_ms"]
                row["numpy_over_this"] = cpu["step_ms"] / row["step_ms"]
            rows.append(row)
    # the big MLP (issue 13's second target): tiny on torch CPU, 32 steps an epoch on a GPU
    big = _big_data(512 if check.dry_run else 8192)
    big_epochs = 2 if check.dry_run else 3
    big_rows: list[dict[str, Any]] = []
    for opt_name in CAPTURE_OPTIMIZERS["big"]:
        runs = [(spec, c) for spec in check.specs for c in (False, True)]
        errors, found = _capture_runs(runs, opt_name, *big, big_epochs, "big", t_end, notes)
        big_rows += errors
        if not found:
            continue
        peer = _torch_eager_step(check, opt_name, t_end, notes)
        for row in _weight_diff_rows(found, "big"):
            if peer is not None:
                row.update(torch_eager_step_ms=peer["ms"], torch_backend=peer["backend"],
                           torch_source=peer["source"], torch_timer=peer["timer"],
                           this_over_torch=row["step_ms"] / peer["ms"])
            big_rows.append(row)
    out = _with_status({"rows": rows, "samples": n, "big_rows": big_rows,
                        "big_samples": big[0].shape[0], "big_epochs": big_epochs},
                       rows + big_rows, notes)
    out["targets"] = issue13_targets(rows, big_rows, check.dry_run)
    return out


def _big_data(n: int) -> tuple[Any, Any]:
    """``n`` samples for the big MLP (784 features, 10 classes; the class is the largest of the
    first ten features, so the fit has something to learn)."""
    import numpy as np

    X = np.random.default_rng(1).standard_normal((n, 784)).astype(np.float32)
    return X, X[:, :10].argmax(axis=1)


ISSUE13_TARGETS = {
    "small": "small MLP step with capture at least as fast as numpy on the CPU",
    "big": "big MLP step with capture at most torch CUDA eager's",
}
"""Issue 13's GPU targets, as the capture part checks them (ratio ≤ 1.0 is met)."""


def issue13_targets(rows: list[dict[str, Any]], big_rows: list[dict[str, Any]],
                    dry_run: bool) -> list[dict[str, Any]]:
    """One verdict per target, GPU backend and optimizer: ``met`` when the recorded step's time
    over its peer's is at most 1.0, ``not met`` above or when nothing was recorded (the step
    then ran unrecorded: no test of the target), ``not measured`` in a dry run or when a row is
    missing or raised. Peers: numpy's step (small), torch eager's step (big)."""
    out = []
    for target, table, peer_key in (("small", rows, "cpu_numpy_step_ms"),
                                    ("big", big_rows, "torch_eager_step_ms")):
        runs = {(r["spec"], r["optimizer"], r["capture"]): r for r in table}
        pairs = sorted({(r["spec"], r["optimizer"]) for r in table if r["spec"] != "numpy"})
        for spec, opt_name in pairs:
            r = runs.get((spec, opt_name, True))
            verdict: dict[str, Any] = {"target": target, "spec": spec, "optimizer": opt_name,
                                       "ratio": None, "nnxp_ms": None, "peer_ms": None}
            if r is None or "error" in r:
                why = "the recorded fit raised" if r is not None else "no recorded fit"
                out.append({**verdict, "status": "not measured", "note": why})
                continue
            peer = r.get(peer_key)
            ratio = None if peer is None else r["step_ms"] / peer  # recorded step / peer
            verdict.update(nnxp_ms=r["step_ms"], peer_ms=peer, ratio=ratio)
            report = r.get("report") or {}
            if peer is None:
                status, note = "not measured", "no peer figure"
            elif dry_run:
                status, note = "not measured", "dry run on torch CPU"
            elif not report.get("graphs"):
                status = "not met"
                note = "nothing was recorded: " + str(
                    report.get("not_recorded") or r.get("capture_problem")
                    or f"recorder {report.get('recorder')}")
            else:
                status = "met" if ratio is not None and ratio <= 1.0 else "not met"
                note = ""
            out.append({**verdict, "status": status, "note": note})
    return out


def targets_summary(targets: list[dict[str, Any]]) -> str:
    """``met`` when every verdict is met, ``not met`` when one is not, else ``not measured``
    (with the counts)."""
    counts = collections.Counter(t["status"] for t in targets)
    if not targets:
        overall = "not measured"
    elif counts["not met"]:
        overall = "not met"
    elif counts["not measured"]:
        overall = "not measured"
    else:
        overall = "met"
    detail = ", ".join(f"{counts[s]} {s}" for s in ("met", "not met", "not measured")
                       if counts[s])
    return f"issue 13 GPU targets: {overall}" + (f" ({detail})" if detail else "")


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, optimizer and nnxp backend: nnxp's time against torch eager, torch's fused
    Adam and the matmul bound of the same backend (medians)."""
    median: dict[tuple[str, str, str], float] = {}
    for r in rows:
        if "median" in r:
            median[(r["key"], r["impl"], r["backend"])] = r["median"]
    peer_backend = {"torch": None, "torch-fused": None}
    for _key, impl, spec in median:
        if impl in peer_backend:
            peer_backend[impl] = spec
    out = []
    for (key, impl, spec), t in sorted(median.items()):
        if impl != "nnxp":
            continue
        row: dict[str, Any] = {"key": key, "backend": spec, "nnxp_ms": t * 1e3}
        for peer, label in (("torch", "nnxp/torch"), ("torch-fused", "nnxp/torch-fused")):
            other = median.get((key, peer, peer_backend[peer] or ""))
            row[label] = None if other is None else t / other
        bound = median.get((key, "matmul-bound", spec))
        row["bound/nnxp"] = None if bound is None else bound / t
        out.append(row)
    return out


# --- tests -------------------------------------------------------------------------------------


def part_tests(check: Check, cap: float) -> dict[str, Any]:
    if check.dry_run:
        targets = ["tests/test_boundary.py"] if check.args.quick else ["tests/test_activations.py"]
        keyword = "" if check.args.quick else "torch"
    else:
        targets, keyword = ["tests"], "cupy or cuda"
    # -vv (over the -q of pyproject.toml): one line per test, so a run cut short by its timeout
    # still names what failed so far
    cmd = [sys.executable, "-m", "pytest", *targets, "-p", "no:cacheprovider", "-rfE", "-vv",
           "--maxfail=100", "-o", "console_output_style=classic", "--durations=15"]
    if keyword:
        cmd += ["-k", keyword]
    workers = check.args.test_workers
    if workers is None:  # on a GPU the ~2,100 tests are Python- and compile-bound: spread them
        workers = 0 if check.dry_run else 4
    if workers > 0 and importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(workers)]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += ["--timeout", str(TEST_TIMEOUT)]  # a hanging test costs one test, not the part
    env = {**os.environ, "NNXP_TEST_BACKENDS": ",".join(check.specs)}
    log_path = check.out / f"{check.stem}-tests.log"
    timeout = max(cap - 5, 1.0)
    status, note = "ok", ""
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False)
            rc: int | None = done.returncode
        except subprocess.TimeoutExpired:
            rc, status, note = None, "timeout", f"pytest ran past {timeout:.0f} s"
    text = log_path.read_text(encoding="utf-8", errors="replace")
    summary = next((ln.strip() for ln in reversed(text.splitlines())
                    if re.search(r"\d+ (passed|failed|error|skipped|deselected)", ln)), "")
    counts = {k: int(v) for v, k in re.findall(
        r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)", summary)}
    failed = [ln[:200] for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    if not failed:  # no short summary (cut short): the per-test lines that failed
        failed = list(dict.fromkeys(
            m.group(0) for ln in text.splitlines() if re.search(r"\b(FAILED|ERROR)\b", ln)
            for m in [re.search(r"tests/\S+::\S+", ln)] if m))
    if rc not in (0, None):
        status = "failed"
        note = summary or f"pytest exited with {rc}"
    return {"status": status, "note": note, "command": " ".join(cmd),
            "NNXP_TEST_BACKENDS": env["NNXP_TEST_BACKENDS"], "returncode": rc,
            "summary": summary, "counts": counts, "failed": failed[:50],
            "log": log_path.name}


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "" if v is None else format(v, spec)


def _not_recorded(row: dict[str, Any]) -> str:
    """Why a recorded fit recorded nothing, for a table cell."""
    why = (row.get("report") or {}).get("not_recorded") or row.get("capture_problem") or ""
    return str(why).replace("|", "/")[:200]


def targets_markdown(cap_part: dict[str, Any]) -> list[str]:
    """The verdicts on issue 13's GPU targets, right below the parts (``not measured`` when
    the capture part did not run)."""
    targets = cap_part.get("targets", [])
    why = "" if targets else f" (capture part {cap_part.get('status', 'not run')})"
    lines = ["", f"## {targets_summary(targets)}{why}", ""]
    if not targets:
        return lines[:-1]
    lines += ["Ratio: the recorded step's ms over the peer's (met when ≤ 1.0). Peers: numpy's "
              "step on the CPU (small MLP, fit), torch eager's step (big MLP, see the capture "
              "tables).", "",
              "| target | backend | optimizer | recorded ms / step | peer ms / step | ratio | "
              "verdict | note |", "|---|---|---|---:|---:|---:|---|---|"]
    for t in targets:
        verdict = t["status"] if t["status"] != "not met" else "**not met**"
        lines.append(f"| {ISSUE13_TARGETS[t['target']]} | {t['spec']} | {t['optimizer']} | "
                     f"{_fmt(t['nnxp_ms'], '.3f')} | {_fmt(t['peer_ms'], '.3f')} | "
                     f"{_fmt(t['ratio'], '.2f')} | {verdict} | "
                     f"{str(t['note']).replace('|', '/')[:200]} |")
    return lines


def markdown(res: dict[str, Any]) -> str:
    env = res.get("environment", {})
    gpus = env.get("gpus") or []
    title = "dry run on torch CPU" if res["dry_run"] else ", ".join(g["name"] for g in gpus)
    lines = [f"# make gpu-check — {title or 'GPU'}", "",
             f"Started {res['started']}, {res.get('elapsed_s', 0):.0f} s of a "
             f"{res['budget_s']:.0f} s budget; backends {', '.join(res['specs'])}"
             + (f". Dry run: {res['why_dry_run']}." if res["dry_run"] else "."), ""]
    if env:
        v = env.get("versions", {})
        lines += ["| | |", "|---|---|"]
        for g in gpus:
            lines.append(f"| GPU | {g['name']}, driver {g['driver']}, {g['memory']} |")
        lines += [f"| CUDA | torch built for {env.get('torch_cuda')}; cupy runtime "
                  f"{env.get('cupy_cuda_runtime', env.get('cupy', ''))}, driver API "
                  f"{env.get('cupy_cuda_driver', '')} |",
                  "| versions | " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + " |",
                  f"| Python | {env.get('python')} on {env.get('platform')} |",
                  "| TF32 matmuls | " + {True: "on", False: "off"}.get(
                      env.get("tf32"), "not recorded") + " (NNXP_TF32) |", ""]
    if res.get("install"):
        inst = res["install"]
        lines += [f"Carried wheels: {inst['status']}"
                  + (f" ({', '.join(inst.get('wheels', []))})" if inst.get("wheels") else "")
                  + (f" — {inst['note']}" if inst.get("note") else ""), ""]
    lines += ["| part | status | seconds | note |", "|---|---|---:|---|"]
    for name, part in res["parts"].items():
        note = str(part.get("note", "")).replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {name} | {part['status']} | {part.get('seconds', '')} | {note} |")
    parts = res["parts"]
    lines += targets_markdown(parts.get("capture", {}))
    smoke = parts.get("smoke", {})
    if smoke.get("rows"):
        tol = smoke["tolerance"]
        lines += ["", f"## Smoke: fit against numpy ({smoke['samples']} samples, "
                  f"{smoke['epochs']} epochs; loss rtol {tol['loss_rtol']}, accuracy atol "
                  f"{tol['accuracy_atol']})", "",
                  "| backend | SGD loss max rel. diff | accuracy diff | SGD fit s | "
                  "BN+Dropout+Adam final loss | accuracy | fit s | ok |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in smoke["rows"]:
            lines.append(f"| {r['spec']} | {r['loss_max_rel_diff']:.1e} | "
                         f"{r['accuracy_diff']:.3f} | {r['sgd_seconds']} | "
                         f"{r['full_loss'][-1]:.4f} | {r['full_accuracy']:.3f} | "
                         f"{r['full_seconds']} | {'yes' if r['ok'] else '**no**'} |")
    syncs = parts.get("syncs", {})
    if syncs.get("rows"):
        lines += ["", "## Host synchronisations (MLP 64-256-256-10, batch 128)", "",
                  "| backend | optimizer | per train_step | per fit epoch (steps) | where | "
                  "method |", "|---|---|---:|---:|---|---|"]
        for r in syncs["rows"]:
            where = "; ".join(f"{s} ×{n}" for s, n in (r["step_sites"] + r["fit_sites"])[:6])
            lines.append(f"| {r['spec']} | {r['optimizer']} | {r['per_step']:.2f} | "
                         f"{r['fit_epoch_syncs']} ({r['fit_steps']}) | {where} | "
                         f"{r['method']} |")
    bench_part = parts.get("bench", {})
    if bench_part.get("rows"):
        lines += ["", "## Training steps (medians)", "",
                  "| workload | impl | backend | median ms | min ms | rounds | timer | "
                  "warm-up calls | first call ms |", "|---|---|---|---:|---:|---:|---|---:|---:|"]
        for r in bench_part["rows"]:
            if "error" in r:
                lines.append(f"| {r['key']} | {r['impl']} | {r['backend']} | error: "
                             f"{r['error'][:120]} | | | | | |")
                continue
            lines.append(f"| {r['key']} | {r['impl']} | {r['backend']} | "
                         f"{r['median'] * 1e3:.3f} | {r['min'] * 1e3:.3f} | {r['rounds']} | "
                         f"{r['timer']} | {r['warmup_calls']} | {r['first_call'] * 1e3:.1f} |")
        lines += ["", "| workload | backend | nnxp ms | nnxp/torch | nnxp/torch-fused | "
                  "bound/nnxp |", "|---|---|---:|---:|---:|---:|"]
        for r in bench_part["ratios"]:
            lines.append(f"| {r['key']} | {r['backend']} | {r['nnxp_ms']:.3f} | "
                         f"{_fmt(r['nnxp/torch'], '.2f')} | "
                         f"{_fmt(r['nnxp/torch-fused'], '.2f')} | "
                         f"{_fmt(r['bound/nnxp'], '.2f')} |")
        if bench_part.get("memory"):
            lines += ["", "| peak memory | backend | optimizer | peak MiB | live set MiB | "
                      "peak/live | method |", "|---|---|---|---:|---:|---:|---|"]
            for m in bench_part["memory"]:
                peak = m["peak_bytes"]
                lines.append(f"| MLP {m['model']} | {m['backend']} | {m['optimizer']} | "
                             f"{_fmt(None if peak is None else peak / 2**20, '.1f')} | "
                             f"{m['live_bytes'] / 2**20:.1f} | {_fmt(m['ratio'], '.2f')} | "
                             f"{m['method']} |")
    cap_part = parts.get("capture", {})
    if cap_part.get("rows"):
        lines += _capture_table(
            f"small MLP fit, {cap_part['samples']} samples, batch 32",
            "numpy CPU ms / step | numpy / this", cap_part["rows"],
            lambda r: f"{_fmt(r.get('cpu_numpy_step_ms'), '.3f')} | "
                      f"{_fmt(r.get('numpy_over_this'), '.2f')}")
    if cap_part.get("big_rows"):
        lines += _capture_table(
            f"big MLP 784-1024-1024-10 fit, {cap_part['big_samples']} samples, batch 256, "
            f"{cap_part['big_epochs']} epochs", "torch eager step ms | this / torch",
            cap_part["big_rows"],
            lambda r: f"{_fmt(r.get('torch_eager_step_ms'), '.3f')}"
                      + (f" ({r['torch_backend']}, {r['torch_source']})"
                         if r.get("torch_source") else "")
                      + f" | {_fmt(r.get('this_over_torch'), '.2f')}")
    tests = parts.get("tests", {})
    if tests.get("command"):
        lines += ["", "## Tests", "", f"`NNXP_TEST_BACKENDS={tests['NNXP_TEST_BACKENDS']} "
                  f"{tests['command']}` — {tests['summary'] or tests['status']} "
                  f"(log: `{tests['log']}`)"]
        lines += [f"* `{f}`" for f in tests.get("failed", [])[:30]]
    for name, part in parts.items():
        if part.get("traceback"):
            lines += ["", f"## {name} failed", "", "```", part["traceback"].strip(), "```"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def _capture_table(title: str, peer_columns: str, rows: list[dict[str, Any]],
                   peer_cells: Callable[[dict[str, Any]], str]) -> list[str]:
    """The Markdown of one model's rows of the capture part: two columns about the peer
    (``peer_columns``, filled by ``peer_cells``) between the step time and the recording."""
    lines = ["", f"## Recorded step (issue 13): {title}", "",
             f"| backend | optimizer | capture | ms / step | {peer_columns} | graphs | "
             "replays | not recorded | max weight diff |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        head = f"| {r['spec']} | {r['optimizer']} | {r['capture']} | "
        if "error" in r:
            lines.append(f"{head}error: {r['error'][:120]} | | | | | | |")
            continue
        report = r.get("report") or {}
        lines.append(f"{head}{r['step_ms']:.3f} | {peer_cells(r)} | "
                     f"{report.get('graphs', '')} | {report.get('replays', '')} | "
                     f"{_not_recorded(r)} | "
                     f"{_fmt(r.get('max_abs_weight_diff_vs_uncaptured'), '.1e')} |")
    return lines


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "gpu"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help=f"seconds for the whole run (default {DEFAULT_BUDGET:.0f})")
    parser.add_argument("--out", default=None, help="directory of the results (default: "
                        "benchmarks/results on a GPU, a new temporary directory in a dry run)")
    parser.add_argument("--dry-run", action="store_true",
                        help="run on torch CPU even when a GPU is present")
    parser.add_argument("--quick", action="store_true",
                        help="smallest workloads (a test of this script, well under 20 s)")
    parser.add_argument("--skip", default="", type=lambda s: {p for p in s.split(",") if p},
                        help=f"comma-separated parts to skip: {', '.join(PART_CAPS)}")
    parser.add_argument("--test-workers", type=int, default=None,
                        help="pytest-xdist workers of the tests part, where pytest-xdist is "
                        "installed (default: 4 on a GPU, 0 in a dry run; 0: one process)")
    parser.add_argument("--no-install", action="store_true",
                        help="do not install the wheels carried in .whl/")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = args.skip - set(PART_CAPS)
    if unknown:
        print(f"--skip: unknown part(s) {sorted(unknown)}; parts: {', '.join(PART_CAPS)}",
              file=sys.stderr)
        return 2
    install = None
    if not args.no_install and (ROOT / ".whl").is_dir():
        install = install_wheels(ROOT / ".whl")
        print(f"carried wheels: {install['status']} {install.get('note', '')}", flush=True)
    from nnxp import bench  # after the wheels: nnxp imports array-api-compat

    reasons = {s: bench.unavailable_reason(s) for s in GPU_SPECS}
    gpu_specs = [s for s, why in reasons.items() if why is None]
    dry_run = args.dry_run or not gpu_specs
    if dry_run:
        why = ("--dry-run" if args.dry_run else
               "; ".join(f"{s}: {w}" for s, w in reasons.items()))
        specs = ["torch:cpu"] if bench.unavailable_reason("torch:cpu") is None else ["numpy"]
    else:
        why, specs = "", gpu_specs
    gpus = _nvidia_smi()
    device = "cpu-dryrun" if dry_run else _slug(gpus[0]["name"] if gpus else "gpu")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M")
    if args.out:
        out = Path(args.out)
    elif dry_run:
        out = Path(tempfile.mkdtemp(prefix="nnxp-gpu-check-"))
    else:
        out = ROOT / "benchmarks" / "results"
    check = Check(args, specs, dry_run, why, out, f"gpu-{stamp}-{device}")
    if install is not None:
        check.results["install"] = install
    print(f"make gpu-check: {'DRY RUN on ' if dry_run else ''}{', '.join(specs)}; budget "
          f"{check.budget:.0f} s; results in {check.json_path} and .md"
          + (f"\n  (no GPU run: {why})" if dry_run else ""), flush=True)
    check.run_part("environment", part_environment)
    check.run_part("smoke", part_smoke)
    check.run_part("syncs", part_syncs)
    check.run_part("bench", part_bench)
    check.run_part("capture", part_capture)
    check.run_part("tests", part_tests)
    check.write()
    print(check.md_path.read_text())
    print(f"results: {check.json_path} and {check.md_path}")
    return 1 if any(p["status"] in ("failed", "timeout") for p in check.results["parts"].values()) \
        else 0


if __name__ == "__main__":
    sys.exit(main())
