"""Benchmarks of nnxp's kernels and training steps on any backend (``nnxp bench``).

This module defines the *workloads* — a Dense layer's forward and backward pass, each
activation's derivative, each loss, each optimizer's update, a training step and an epoch of the
reference MLPs — and the *matmul bound* of each (the bare matrix products the workload cannot do
without, run by the backend itself). It times them with a synchronising timer and reports
ratios. The pytest-benchmark suite in ``benchmarks/`` times the very same :class:`Case` objects
and adds the *peer* rows (the same computation written in PyTorch, and a hand-written NumPy
step), which need torch and numpy directly and so live outside the package: only
``nnxp/backend.py`` and ``nnxp/random.py`` may import an array library.

Workloads are discovered, not listed: every activation in ``nnxp.layers.ACTIVATIONS``, every
loss in ``nnxp.losses.LOSSES``, every optimizer in ``nnxp.optim.OPTIMIZERS`` (but those whose
step needs a closure), and the ``BatchNorm1d`` and ``Dropout`` layers. A new kernel shows up in
the benchmarks without an edit here.

Everything is float32. Sizes are ``(batch, width)`` pairs; see :data:`SIZE_SETS`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import backend, losses
from .layers import ACTIVATIONS, BatchNorm1d, Dense, Dropout, ReLU
from .model import Sequential
from .optim import OPTIMIZERS
from .random import Generator
from .typing import Array

Setup = Callable[[], Any]
Run = Callable[[Any], Any]

# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

SIZE_SETS: dict[str, list[tuple[int, int]]] = {
    "quick": [(32, 128)],
    "default": [(32, 128), (256, 1024)],
    "full": [(32, 128), (256, 1024), (1024, 2048), (4096, 4096)],
}
"""``(batch, width)`` per size set; ``NNXP_BENCH_SIZES`` picks one or lists ``32x128,...``."""

MODELS: dict[str, dict[str, Any]] = {
    "small": {"widths": [64, 128, 10], "batch": 32, "epoch_samples": 1792, "gpu_only": False},
    "big": {"widths": [784, 1024, 1024, 10], "batch": 256, "epoch_samples": 8192,
            "gpu_only": False},
    "wide": {"widths": [4096] * 5, "batch": 4096, "epoch_samples": 16384, "gpu_only": True},
}
"""The reference MLPs of issue 5 (ReLU between Dense layers, softmax cross-entropy).

"wide" is four 4096×4096 Dense layers at batch 4096 (about 0.8 TFLOP per step): GPU only.
``epoch_samples`` is the data set size of the epoch benchmark (a 60,000-sample MNIST epoch of
"big" takes minutes on two cores; ``NNXP_BENCH_SIZES=full`` uses 60,000 for "big").
"""

DEFAULT_BACKENDS = ("numpy", "torch:cpu", "cupy", "torch:cuda")
"""Backends tried by default; array_api_strict is a correctness backend and must be asked for."""


def selected_backends(spec: str | None = None) -> list[str]:
    """Backend specs from ``spec`` or ``$NNXP_BENCH_BACKENDS`` (comma separated), else the
    defaults; only those that can run here are returned."""
    text = spec if spec is not None else os.environ.get("NNXP_BENCH_BACKENDS", "")
    wanted = [w.strip() for w in text.split(",") if w.strip()] or list(DEFAULT_BACKENDS)
    return [w for w in wanted if unavailable_reason(w) is None]


def unavailable_reason(spec: str) -> str | None:
    """Why backend ``spec`` cannot run here (library missing, no GPU), or None."""
    try:
        with backend.use_backend(spec):
            pass
    except (backend.BackendError, ValueError, ImportError) as exc:
        return str(exc)
    return None


def selected_sizes(spec: str | None = None) -> list[tuple[int, int]]:
    """``(batch, width)`` pairs from ``spec`` / ``$NNXP_BENCH_SIZES``: a set name of
    :data:`SIZE_SETS` or an explicit list such as ``32x128,4096x4096``."""
    text = (spec if spec is not None else os.environ.get("NNXP_BENCH_SIZES", "")).strip()
    text = text or "default"
    if text in SIZE_SETS:
        return list(SIZE_SETS[text])
    sizes = []
    for item in text.split(","):
        try:
            b, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"NNXP_BENCH_SIZES must be one of {', '.join(SIZE_SETS)} or a list "
                             f"like 32x128,256x1024; got {text!r}") from None
        sizes.append((b, w))
    return sizes


def is_gpu(spec: str) -> bool:
    """Whether backend ``spec`` runs on a GPU."""
    return spec.startswith("cupy") or spec.endswith(":cuda") or ":cuda:" in spec


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One timed computation.

    ``build()`` allocates the inputs (inside the backend's context) and returns ``(setup, run)``:
    ``setup()`` is called, untimed, before every timed ``run(state)`` (it re-runs a forward pass
    for a backward benchmark, and returns the same state otherwise).
    """

    group: str  # "kernel", "step", "epoch"
    workload: str  # "dense", "relu", "softmax_cross_entropy", "adam", "mlp-big", ...
    op: str  # "forward", "backward", "update", "step", "epoch"
    size: str  # "256x1024" or the model's name
    impl: str  # "nnxp", "matmul-bound", "torch", "numpy-by-hand"
    backend: str  # the backend spec, e.g. "numpy", "torch:cuda"
    build: Callable[[], tuple[Setup, Run]]
    flops: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    sync: Callable[[], None] | None = None  # the peers' own; nnxp rows use backend.synchronize

    @property
    def key(self) -> str:
        """The row's workload label, shared by nnxp, its peers and its bound."""
        return f"{self.workload}.{self.op}[{self.size}]"

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.workload}-{self.op}-{self.size}-{self.impl}"

    def extra_info(self) -> dict[str, Any]:
        """The fields pytest-benchmark stores with the timing, read by benchmarks/report.py."""
        return {"group": self.group, "workload": self.workload, "op": self.op,
                "size": self.size, "impl": self.impl, "backend": self.backend,
                "key": self.key, "flops": self.flops,
                "device": "gpu" if is_gpu(self.backend) else "cpu", **self.info}


def _constant(state: Any) -> Setup:
    return lambda: state


def _data(shape: tuple[int, ...], seed: int, xp: Any, device: Any) -> Array:
    return Generator(seed).normal(shape, dtype="float32", xp=xp, device=device)


def _labels(n: int, classes: int, seed: int, xp: Any, device: Any) -> Array:
    u = Generator(seed).uniform((n,), high=float(classes), dtype="float32", xp=xp, device=device)
    return xp.clip(xp.astype(xp.floor(u), xp.int64), 0, classes - 1)


def _layer_cases(spec: str, name: str, make: Callable[[], Any], batch: int,
                 width: int) -> list[Case]:
    """Forward (training mode) and backward of one layer on a (batch, width) input."""

    def build_forward() -> tuple[Setup, Run]:
        layer = make()
        x = _data((batch, width), 1, layer.xp, layer.device)
        return _constant((layer, x)), lambda s: s[0].forward(s[1], training=True)

    def build_backward() -> tuple[Setup, Run]:
        layer = make()
        x = _data((batch, width), 1, layer.xp, layer.device)
        dy = _data((batch, width), 2, layer.xp, layer.device)

        def setup() -> Any:
            layer.forward(x, training=True)
            return layer, dy

        return setup, lambda s: s[0].backward(s[1])

    size = f"{batch}x{width}"
    return [Case("kernel", name, "forward", size, "nnxp", spec, build_forward),
            Case("kernel", name, "backward", size, "nnxp", spec, build_backward)]


def _dense_bound_cases(spec: str, batch: int, width: int) -> list[Case]:
    """The bare products of a Dense layer: ``x W`` (forward); ``dy Wᵀ`` and ``xᵀ dy``."""
    info = backend.get_backend()
    xp, dev = info.xp, info.device

    def build(op: str) -> Callable[[], tuple[Setup, Run]]:
        def inner() -> tuple[Setup, Run]:
            x, W = _data((batch, width), 1, xp, dev), _data((width, width), 3, xp, dev)
            dy = _data((batch, width), 2, xp, dev)
            if op == "forward":
                return _constant(None), lambda _: x @ W
            return _constant(None), lambda _: (dy @ W.T, x.T @ dy)
        return inner

    size, f = f"{batch}x{width}", 2.0 * batch * width * width
    return [Case("kernel", "dense", "forward", size, "matmul-bound", spec, build("forward"), f),
            Case("kernel", "dense", "backward", size, "matmul-bound", spec, build("backward"),
                 2 * f)]


def activation_classes() -> dict[str, Any]:
    """Activation layers by name, from ``nnxp.layers.ACTIVATIONS``, each alias left out."""
    unique: dict[str, Any] = {}
    for name, cls in ACTIVATIONS.items():  # aliases ("linear" for "identity") are timed once
        if not any(cls is seen for seen in unique.values()):
            unique[name] = cls
    return unique


def optimizer_classes() -> dict[str, Any]:
    """Optimizer classes by lower-case name, from ``nnxp.optim.OPTIMIZERS``."""
    # L-BFGS needs a closure that re-evaluates the loss: a full-batch method, not a step to time
    return {k.lower(): v for k, v in OPTIMIZERS.items() if k.lower() not in CLOSURE_OPTIMIZERS}


CLOSURE_OPTIMIZERS = frozenset({"lbfgs"})
"""Optimizers whose ``step`` needs a closure; left out of the update benchmarks."""


def make_optimizer(name: str) -> Any:
    """An optimizer of ``nnxp.optim`` with the library's default hyper-parameters."""
    classes = optimizer_classes()
    if name not in classes:
        raise ValueError(f"optimizer {name!r} is not in nnxp.optim; available: "
                         f"{', '.join(sorted(classes))}")
    return classes[name]()


DEFAULT_OPTIMIZER = "adam"
"""The optimizer of the reference MLPs' training steps (issue 5's "big" step)."""


class _ParamHolder:
    """The layer protocol's parameter half, for timing an optimizer on its own."""

    def __init__(self, width: int, xp: Any, device: Any) -> None:
        self.xp, self.device = xp, device
        self.params = {"W": _data((width, width), 3, xp, device),
                       "b": _data((width,), 4, xp, device)}
        self.grads = {"W": _data((width, width), 5, xp, device),
                      "b": _data((width,), 6, xp, device)}
        self.buffers: dict[str, Array] = {}


def kernel_cases(spec: str, batch: int, width: int) -> list[Case]:
    """Every kernel benchmark of nnxp (and the Dense bound) for one backend and size."""
    with backend.use_backend(spec) as info:
        xp, dev = info.xp, info.device
        cases = _layer_cases(spec, "dense", lambda: Dense(width, width, seed=0), batch, width)
        flops = 2.0 * batch * width * width
        cases[0].flops, cases[1].flops = flops, 2 * flops
        cases += _dense_bound_cases(spec, batch, width)
        for name, cls in activation_classes().items():
            cases += _layer_cases(spec, name, cls, batch, width)
        cases += _layer_cases(spec, "batchnorm", lambda: BatchNorm1d(width), batch, width)
        cases += _layer_cases(spec, "dropout", lambda: Dropout(0.5), batch, width)
        for name, loss_cls in losses.LOSSES.items():
            cases += _loss_cases(spec, name, loss_cls, batch, width, xp, dev)
        for name in optimizer_classes():
            cases.append(_optimizer_case(spec, name, width, xp, dev))
    return cases


def _loss_cases(spec: str, name: str, loss_cls: Any, batch: int, width: int, xp: Any,
                dev: Any) -> list[Case]:
    def inputs() -> tuple[Any, Array, Array]:
        loss = loss_cls()
        # values in (0, 1) suit every loss: logits, probabilities and regression outputs alike
        z = Generator(1).uniform((batch, width), low=0.05, high=0.95, dtype="float32", xp=xp,
                                 device=dev)
        labels = _labels(batch, width, 7, xp, dev)
        onehot = xp.astype(labels[:, None] == xp.arange(width, device=dev), xp.float32)
        # targets: integer labels where the loss takes them, else one-hot rows (valid 0/1
        # targets, probabilities and regression targets)
        for t in (labels, onehot):
            try:
                return loss, z, loss.check_targets(t, width, xp=xp, device=dev, n_samples=batch)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"loss {name!r}: neither labels nor one-hot targets are accepted")

    def build_forward() -> tuple[Setup, Run]:
        loss, z, t = inputs()
        return _constant(None), lambda _: loss.forward(z, t, xp=xp)

    def build_backward() -> tuple[Setup, Run]:
        loss, z, t = inputs()
        _, cache = loss.forward(z, t, xp=xp)
        return _constant(None), lambda _: loss.backward(cache, xp=xp)

    size = f"{batch}x{width}"
    return [Case("kernel", name, "forward", size, "nnxp", spec, build_forward),
            Case("kernel", name, "backward", size, "nnxp", spec, build_backward)]


def _optimizer_case(spec: str, name: str, width: int, xp: Any, dev: Any) -> Case:
    def build() -> tuple[Setup, Run]:
        holder = _ParamHolder(width, xp, dev)
        opt = make_optimizer(name)
        opt.bind([(holder, "W"), (holder, "b")])
        return _constant(opt), lambda o: o.step()

    # the optimizers update a (width, width) weight and its (width,) bias: the size of one layer
    return Case("kernel", name, "update", f"{width}x{width}", "nnxp", spec, build,
                info={"params": width * width + width})


# --- models ------------------------------------------------------------------------------------


def build_mlp(widths: Sequence[int], seed: int = 0) -> Sequential:
    """Dense layers of ``widths`` with ReLU between them, on the active backend."""
    stack: list[Any] = []
    for i in range(len(widths) - 1):
        stack.append(Dense(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            stack.append(ReLU())
    return Sequential(stack, seed=seed)


def step_flops(widths: Sequence[int], batch: int) -> float:
    """FLOPs of the matrix products a training step needs: per layer ``x W`` and ``xᵀ dy``,
    and ``dy Wᵀ`` for every layer but the first (whose input is data)."""
    total = 0.0
    for i in range(len(widths) - 1):
        products = 3 if i > 0 else 2
        total += products * 2.0 * batch * widths[i] * widths[i + 1]
    return total


def train_step(model: Sequential, opt: Any, x: Array, y: Array) -> Array:
    """One training step: forward, loss, backward, optimizer update; returns the 0-d loss."""
    value = model.loss_and_grads(x, y)
    opt.step()
    return value


def model_inputs(name: str, xp: Any, device: Any, n: int | None = None) -> tuple[Array, Array]:
    """Seeded random inputs and labels for model ``name`` (``n`` rows; a batch by default)."""
    cfg = MODELS[name]
    rows = cfg["batch"] if n is None else n
    return (_data((rows, cfg["widths"][0]), 11, xp, device),
            _labels(rows, cfg["widths"][-1], 12, xp, device))


def epoch_samples(name: str) -> int:
    if name == "big" and os.environ.get("NNXP_BENCH_SIZES", "") == "full":
        return 60000
    return int(MODELS[name]["epoch_samples"])


def model_cases(spec: str, name: str, opt_name: str) -> list[Case]:
    """Training step and epoch of reference MLP ``name`` with nnxp, and the step's bound."""
    cfg = MODELS[name]
    widths, batch = cfg["widths"], cfg["batch"]
    info = {"optimizer": opt_name, "widths": list(widths), "batch": batch}

    def build_step() -> tuple[Setup, Run]:
        model, opt = build_mlp(widths), make_optimizer(opt_name)
        opt.bind(model.parameters())
        x, y = model_inputs(name, model.xp, model.device)
        return _constant(None), lambda _: train_step(model, opt, x, y)

    def build_epoch() -> tuple[Setup, Run]:
        model, opt = build_mlp(widths), make_optimizer(opt_name)
        X, y = model_inputs(name, model.xp, model.device, epoch_samples(name))
        return _constant(None), lambda _: model.fit(X, y, optimizer=opt, epochs=1,
                                                    batch_size=batch, verbose=0)

    size = f"{name}/{opt_name}"
    flops = step_flops(widths, batch)
    return [
        Case("step", f"mlp-{name}", "step", size, "nnxp", spec, build_step, flops, dict(info)),
        Case("step", f"mlp-{name}", "step", size, "matmul-bound", spec,
             _model_bound(widths, batch), flops, dict(info)),
        Case("epoch", f"mlp-{name}", "epoch", size, "nnxp", spec, build_epoch, None,
             {**info, "samples": epoch_samples(name)}),
    ]


def _model_bound(widths: Sequence[int], batch: int) -> Callable[[], tuple[Setup, Run]]:
    def build() -> tuple[Setup, Run]:
        info = backend.get_backend()
        xp, dev = info.xp, info.device
        mats = []
        for i in range(len(widths) - 1):
            mats.append((_data((batch, widths[i]), 20 + i, xp, dev),
                         _data((widths[i], widths[i + 1]), 40 + i, xp, dev),
                         _data((batch, widths[i + 1]), 60 + i, xp, dev)))

        def run(_: Any) -> None:
            for i, (x, W, dy) in enumerate(mats):
                x @ W
                x.T @ dy
                if i > 0:
                    dy @ W.T

        return _constant(None), run
    return build


def available_models(spec: str) -> list[str]:
    """The reference MLPs that make sense on ``spec`` ("wide" needs a GPU)."""
    return [m for m, cfg in MODELS.items() if is_gpu(spec) or not cfg["gpu_only"]]


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Seconds per call over ``rounds`` timed calls, and how they were taken."""

    median: float
    min: float
    mean: float
    stddev: float
    rounds: int
    timer: str = "host"  # "host" (perf_counter around call + sync) or "cuda-events"
    warmup_calls: int = 0  # untimed calls before the rounds were planned, the cold one included
    first_call: float = 0.0  # seconds of the cold first call (host clock)
    warm_call: float = 0.0  # seconds of the last warm-up call (host clock), the planning figure


EVENTS_BELOW = 1e-3
"""On a GPU, a case whose warm call takes less than this many seconds on the host clock is timed
with CUDA events: there a synchronisation round trip (10–30 µs from Python) would be more than
1–3 % of the figure. Longer calls keep the host clock, which includes every bit of host work of
the call (what a training loop pays) and where the round trip is negligible."""

GPU_WARMUP_MAX_CALLS = 10
"""At most this many warm-up calls on a GPU (see :func:`warm_up`)."""


def calibrate(setup: Setup, run: Run, sync: Callable[[], None]) -> float:
    """Seconds of one call on the host clock, the device synchronised before and after."""
    state = setup()
    sync()
    t0 = time.perf_counter()
    run(state)
    sync()
    return time.perf_counter() - t0


def warm_up(setup: Setup, run: Run, sync: Callable[[], None], *, warmup: int = 2,
            gpu: bool = False, budget: float = 0.5) -> list[float]:
    """Untimed calls before the rounds are planned; returns their host-clock seconds.

    The first call is cold (on a GPU: CUDA context, cuBLAS handles and workspaces, kernel
    compilation, the memory pool's first blocks), so rounds are never planned from it: at least
    ``max(warmup, 2)`` calls are made, and the last one plans. On a GPU, warm-up goes on while a
    call is still more than 10 % faster than the one before (a cache or pool still filling), up
    to :data:`GPU_WARMUP_MAX_CALLS` calls or half of ``budget`` seconds.
    """
    times = [calibrate(setup, run, sync)]
    spent = times[0]
    while True:
        still_falling = len(times) >= 2 and times[-1] < 0.9 * times[-2]
        enough = len(times) >= max(warmup, 2)
        if enough and not (gpu and still_falling):
            return times
        if gpu and enough and (len(times) >= GPU_WARMUP_MAX_CALLS or spent > budget / 2):
            return times
        times.append(calibrate(setup, run, sync))
        spent += times[-1]


def plan_rounds(seconds: float, *, budget: float, min_rounds: int = 3,
                max_rounds: int = 500) -> int:
    """How many timed rounds fit into ``budget`` seconds at ``seconds`` per call."""
    if seconds <= 0:
        return max_rounds
    return max(min_rounds, min(max_rounds, int(budget / seconds)))


@dataclass
class TimingPlan:
    """What :func:`prepare_timing` decided for one case: rounds, timer, warm-up record."""

    rounds: int
    warmup_times: list[float]
    events: backend.EventTimer | None  # set when the rounds are timed with CUDA events

    @property
    def timer(self) -> str:
        return "host" if self.events is None else "cuda-events"


def prepare_timing(setup: Setup, run: Run, sync: Callable[[], None], *, budget: float,
                   warmup: int = 2, max_rounds: int = 500) -> TimingPlan:
    """Warm ``run`` up, choose its timer and plan its rounds (inside the case's backend).

    The timer: CUDA events when the active backend is a GPU and the warm call is shorter than
    :data:`EVENTS_BELOW`, the host clock otherwise (every CPU case).
    """
    events = backend.event_timer()
    times = warm_up(setup, run, sync, warmup=warmup, gpu=events is not None, budget=budget)
    warm = times[-1]
    if events is not None and warm >= EVENTS_BELOW:
        events = None
    return TimingPlan(plan_rounds(warm, budget=budget, max_rounds=max_rounds), times, events)


class DeviceClock:
    """A clock that advances only by the device time of the calls made through :meth:`call`.

    pytest-benchmark reads a clock before and after each timed call; given this one, the
    difference is the CUDA-event time of the call.
    """

    def __init__(self, events: backend.EventTimer) -> None:
        self.events = events
        self.total = 0.0
        self.__name__ = "cuda-events"  # pytest-benchmark stores the timer's name

    def __call__(self) -> float:
        return self.total

    def call(self, run: Run, state: Any) -> None:
        self.total += self.events.time(run, state)


def time_case(case: Case, *, budget: float = 0.5, warmup: int = 2,
              max_rounds: int = 500) -> Timing:
    """Time ``case`` on its backend: warm-up, then rounds until ``budget`` seconds.

    Each round runs ``setup()`` untimed and synchronises the device, then times one call: on the
    host clock up to a synchronisation after the call (so queued kernels are charged to the call
    that queued them), or with CUDA events when :func:`prepare_timing` chose them.
    """
    with backend.use_backend(case.backend):
        sync = case.sync or backend.synchronize
        setup, run = case.build()
        plan = prepare_timing(setup, run, sync, budget=budget, warmup=warmup,
                              max_rounds=max_rounds)
        times = []
        for _ in range(plan.rounds):
            state = setup()
            sync()
            if plan.events is not None:
                times.append(plan.events.time(run, state))
                continue
            t0 = time.perf_counter()
            run(state)
            sync()
            times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), statistics.fmean(times),
                  statistics.stdev(times) if len(times) > 1 else 0.0, len(times), plan.timer,
                  len(plan.warmup_times), plan.warmup_times[0], plan.warmup_times[-1])


# ----------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------


def _nbytes(x: Array, xp: Any) -> int:
    try:
        bits = xp.finfo(x.dtype).bits
    except (TypeError, ValueError):
        try:
            bits = xp.iinfo(x.dtype).bits
        except (TypeError, ValueError):
            bits = 8  # bool
    return math.prod(x.shape) * bits // 8


def _arrays_in(obj: Any, depth: int = 0) -> Iterator[Any]:
    """Arrays reachable from ``obj`` through tuples, lists, dicts and object attributes."""
    if depth > 4 or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
        return
    if backend.is_array(obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _arrays_in(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _arrays_in(v, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):  # optimizer state records
        for f in dataclasses.fields(obj):
            yield from _arrays_in(getattr(obj, f.name), depth + 1)
    elif hasattr(obj, "__dict__") and not inspect.ismodule(obj) and not callable(obj):
        for v in vars(obj).values():
            yield from _arrays_in(v, depth + 1)


def live_set(model: Sequential, opt: Any, x: Array, y: Array) -> dict[str, int]:
    """Bytes a training step cannot do without: parameters, gradients, optimizer state and the
    activations cached by the forward pass (inputs excluded; each array counted once).

    Runs one full step (so that gradients and optimizer state exist) and one more forward pass,
    whose caches are inspected and then consumed by a backward pass.
    """
    xp = model.xp
    train_step(model, opt, x, y)
    params = [p for lay in model.layers for p in lay.params.values()]
    grads = [g for lay in model.layers for g in lay.grads.values()]
    seen = {id(a) for a in [*params, *grads, x, y]}
    state = 0
    # the flat buffers of grouped updates (``_units``) are reached through their views: the
    # parameters, the gradients and the state records of ``opt.state``
    for a in _arrays_in({k: v for k, v in vars(opt).items() if k not in ("_refs", "_units")}):
        if id(a) not in seen:
            seen.add(id(a))
            state += _nbytes(a, xp)
    out = model.forward(x, training=True)
    value, loss_cache = model.loss.forward(out, y, xp=xp)
    acts = 0
    for a in _arrays_in([getattr(lay, "_cache", None) for lay in model.layers] + [loss_cache]):
        if id(a) not in seen:
            seen.add(id(a))
            acts += _nbytes(a, xp)
    model.backward(model.loss.backward(loss_cache, xp=xp))
    return {"params": sum(_nbytes(p, xp) for p in params),
            "grads": sum(_nbytes(g, xp) for g in grads),
            "optimizer_state": state, "activations": acts}


def peak_memory(spec: str, name: str = "big", opt_name: str | None = None,
                steps: int = 3, *, via: str = "step", precision: str = "float32"
                ) -> dict[str, Any]:
    """Peak memory of training MLP ``name`` for ``steps`` steps vs its live set.

    ``via="step"`` runs :func:`train_step` ``steps`` times on one batch; ``via="fit"`` runs
    ``model.fit(epochs=1)`` over ``steps`` batches instead, so the peak also holds what ``fit``
    keeps besides the step (the batch gathers, the divergence guard's weight snapshot, ...);
    ``via="fit-lean"`` is ``fit(keep_finite_weights=False)``, without the divergence gate (the
    snapshot before issue 11). ``precision`` is ``fit``'s (``via="fit"``/``"fit-lean"`` only;
    the live set stays the float32 step's, so the ratio compares the two precisions on one
    base). In all, the input data made before the model (``data_bytes``) is not counted.

    * numpy: :mod:`tracemalloc` (NumPy reports its data buffers to it). Tracing starts before
      the data is made; the peak is taken over ``steps`` steps after a warm-up step
      (``tracemalloc.reset_peak``) and counts everything beyond the input batch.
    * cupy / torch CUDA: the high-water mark of bytes in use, one definition on both
      (:class:`nnxp.backend.MemoryHighWater`: torch's ``max_memory_allocated``; the cupy
      pool's ``used_bytes()`` watched by a memory hook), reset after the warm-up step.
    * torch CPU and other backends have no allocation counter: ``peak_bytes`` is None.

    Returns the live set's parts (bytes), ``live_bytes``, ``peak_bytes``, ``ratio`` (peak/live)
    and the ``method`` used.
    """
    opt_name = opt_name or DEFAULT_OPTIMIZER
    cfg = MODELS[name]
    if via not in ("step", "fit", "fit-lean"):
        raise ValueError(f"via must be 'step', 'fit' or 'fit-lean', got {via!r}")
    with backend.use_backend(spec) as info, backend.memory_high_water() as gpu_mem:
        xp, dev = info.xp, info.device
        counter = _MemoryCounter(info.name, gpu_mem)
        try:
            base = counter.current()
            x, y = model_inputs(name, xp, dev)
            if via != "step":
                X_all, y_all = model_inputs(name, xp, dev, steps * cfg["batch"])
            base_data = counter.current()
            model, opt = build_mlp(cfg["widths"]), make_optimizer(opt_name)
            opt.bind(model.parameters())
            parts = live_set(model, opt, x, y)  # includes the warm-up step
            backend.synchronize()
            counter.reset()
            if via != "step":
                model.fit(X_all, y_all, optimizer=opt, epochs=1, batch_size=cfg["batch"],
                          verbose=0, keep_finite_weights=via == "fit", precision=precision)
            else:
                for _ in range(steps):
                    train_step(model, opt, x, y)
            backend.synchronize()
            peak = counter.peak()
        finally:
            counter.close()
    live = sum(parts.values())
    peak_bytes = None if peak is None or base_data is None else peak - base_data
    return {"model": name, "optimizer": opt_name, "backend": spec, "method": counter.method,
            "via": via, "precision": precision,
            **parts, "live_bytes": live, "peak_bytes": peak_bytes,
            "data_bytes": None if base is None or base_data is None else base_data - base,
            "ratio": None if peak_bytes is None else peak_bytes / live}


class _MemoryCounter:
    """Bytes in use and their peak: tracemalloc on numpy, the GPU high-water mark on cupy and
    torch CUDA, nothing elsewhere (every reading is then None)."""

    def __init__(self, backend_name: str, gpu: backend.MemoryHighWater | None) -> None:
        self.gpu = gpu
        self.tracing = gpu is None and backend_name == "numpy"
        self.started_here = self.tracing and not tracemalloc.is_tracing()
        if self.started_here:
            tracemalloc.start()
        if gpu is not None:
            self.method = ("cupy memory pool, used-bytes high-water mark" if gpu.library == "cupy"
                           else "torch.cuda max_memory_allocated")
        else:
            self.method = "tracemalloc" if self.tracing else "none"

    def current(self) -> int | None:
        if self.gpu is not None:
            return self.gpu.current()
        return tracemalloc.get_traced_memory()[0] if self.tracing else None

    def peak(self) -> int | None:
        if self.gpu is not None:
            return self.gpu.peak()
        return tracemalloc.get_traced_memory()[1] if self.tracing else None

    def reset(self) -> None:
        if self.gpu is not None:
            self.gpu.reset()
        elif self.tracing:
            tracemalloc.reset_peak()

    def close(self) -> None:
        if self.started_here:
            tracemalloc.stop()


# ----------------------------------------------------------------------------------------------
# Machine description
# ----------------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, core count, library versions and thread-pool sizes, stored with every result."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {d: _version(d) for d in ("nnxp", "numpy", "array-api-compat", "torch",
                                              "cupy-cuda12x", "cupy-cuda13x", "array-api-strict")
                     if _version(d) is not None},
        "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                   "OPENBLAS_NUM_THREADS") if k in os.environ},
        # float32 matmul mode on GPUs (nnxp.set_tf32 / NNXP_TF32): off unless requested
        "tf32": backend.get_tf32(),
    }
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415 - optional
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    else:
        info["threadpools"] = [{"api": p.get("internal_api"), "lib": p.get("prefix"),
                                "threads": p.get("num_threads"), "version": p.get("version")}
                               for p in threadpool_info()]
    if hasattr(os, "getloadavg"):
        info["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    return info


# ----------------------------------------------------------------------------------------------
# The `nnxp bench` command
# ----------------------------------------------------------------------------------------------


def collect_cases(backends: Sequence[str], sizes: Sequence[tuple[int, int]],
                  models: Sequence[str] | None, optimizers: Sequence[str],
                  epochs: bool = True) -> list[Case]:
    cases: list[Case] = []
    for spec in backends:
        for batch, width in sizes:
            cases += kernel_cases(spec, batch, width)
        for name in available_models(spec):
            if models is not None and name not in models:
                continue
            for opt_name in optimizers:
                cases += [c for c in model_cases(spec, name, opt_name)
                          if epochs or c.group != "epoch"]
    return cases


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: one line per workload and backend, nnxp vs its matmul bound."""
    by_key: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_key.setdefault((r["backend"], r["key"]), {})[r["impl"]] = r
    lines = ["| backend | workload | nnxp (ms) | matmul bound (ms) | nnxp / bound | GFLOP/s |",
             "|---|---|---:|---:|---:|---:|"]
    for (spec, key), impls in by_key.items():
        nn = impls.get("nnxp")
        if nn is None:
            continue
        bound = impls.get("matmul-bound")
        gflops = (f"{nn['flops'] / nn['median'] / 1e9:.1f}" if nn.get("flops") else "")
        lines.append(
            f"| {spec} | {key} | {nn['median'] * 1e3:.3f} | "
            f"{'' if bound is None else format(bound['median'] * 1e3, '.3f')} | "
            f"{'' if bound is None else format(nn['median'] / bound['median'], '.2f')} | "
            f"{gflops} |")
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nnxp bench`` (also ``python -m nnxp.bench``)."""
    args = build_parser().parse_args(argv)
    return run_args(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nnxp bench`` (shared with ``python -m nnxp.bench``)."""
    parser.add_argument("--quick", action="store_true",
                        help="small kernels and the small/big step only: under a minute")
    parser.add_argument("--backends", default=None,
                        help="comma-separated backend specs (default: $NNXP_BENCH_BACKENDS or "
                             f"every available one of {', '.join(DEFAULT_BACKENDS)})")
    parser.add_argument("--sizes", default=None,
                        help=f"{', '.join(SIZE_SETS)} or a list like 32x128,256x1024 "
                             "(default: $NNXP_BENCH_SIZES or 'default')")
    parser.add_argument("--optimizer", default=None,
                        help=f"optimizer of the model steps (default: {DEFAULT_OPTIMIZER})")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated subset of {', '.join(MODELS)} (default: all that "
                             "suit the backend; --quick: small,big)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the rows as JSON")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnxp bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def run_args(args: argparse.Namespace) -> int:
    backends = selected_backends(args.backends)
    if not backends:
        raise ValueError(f"none of the backends {args.backends!r} can run here")
    sizes = selected_sizes("quick" if args.quick and args.sizes is None else args.sizes)
    opt_name = args.optimizer or DEFAULT_OPTIMIZER
    make_optimizer(opt_name)  # a clear error for an unknown name before any timing
    models = ["small", "big"] if args.quick else None
    if args.models:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = sorted(set(models) - set(MODELS))
        if unknown:
            raise ValueError(f"--models: unknown model(s) {unknown}; valid: {', '.join(MODELS)}")
    cases = collect_cases(backends, sizes, models, [opt_name], epochs=not args.quick)
    budget = 0.15 if args.quick else 0.5
    rows = []
    log = sys.stderr
    print(f"nnxp bench: {len(cases)} cases on {', '.join(backends)}", file=log)
    for case in cases:
        t = time_case(case, budget=budget, warmup=1 if args.quick else 2)
        rows.append({**case.extra_info(), "median": t.median, "min": t.min, "mean": t.mean,
                     "stddev": t.stddev, "rounds": t.rounds, "timer": t.timer,
                     "warmup_calls": t.warmup_calls, "first_call": t.first_call})
    memory = []
    mem_model = "big" if models is None or "big" in models else models[0]
    if not args.no_memory:
        for spec in backends:
            with contextlib.suppress(backend.BackendError):
                memory.append(peak_memory(spec, mem_model, opt_name))
    print(format_table(rows))
    for m in memory:
        if m["peak_bytes"] is None:
            print(f"\npeak memory ({m['backend']}): not measurable ({m['method']})")
            continue
        print(f"\npeak memory, MLP {m['model']}, {m['optimizer']}, {m['backend']}: "
              f"{m['peak_bytes'] / 2**20:.1f} MiB vs live set {m['live_bytes'] / 2**20:.1f} MiB "
              f"(ratio {m['ratio']:.2f}; {m['method']})")
    print("\nPeer rows (PyTorch, hand-written NumPy) come from `make bench` (benchmarks/).",
          file=log)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": machine_info(), "rows": rows, "memory": memory}, fh, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
