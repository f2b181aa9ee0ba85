"""The GPU rule, counted: a training step never waits for the host (docs/design.md).

No GPU is needed. On torch CPU, :class:`SyncCounter` records every call that would block a CUDA
stream or copy host data to the device, and attributes it to the nnxp source line that caused
it. It stacks two of torch's interposition layers, so that the calls array-api-compat and torch
make on nnxp's behalf are caught too, not only nnxp's own:

* a ``TorchDispatchMode`` sees every ATen operator, however it was reached:
  ``aten._local_scalar_dense`` is every tensor-to-scalar read (``float()``, ``int()``,
  ``bool()``, ``__index__``, ``.item()``, and C++ code reading a scalar); ``aten.lift_fresh``
  is every tensor made from host data (``torch.asarray`` / ``as_tensor`` / ``tensor`` /
  ``from_numpy`` of a Python scalar, list or NumPy array: a host-to-device copy on a GPU);
  ``nonzero``, ``masked_select``, ``unique``, ``repeat_interleave`` and boolean-mask
  ``index`` / ``index_put_`` have data-dependent output shapes (CUDA reads the count back);
* a ``TorchFunctionMode`` sees the Tensor methods that leave ATen: ``.cpu()``, ``.numpy()`` and
  ``.tolist()`` (a ``.numpy()`` of a tensor that a counted ``.cpu()`` returned is not counted
  twice).

The budgets (per training step, with ``fit``'s step function ``nnxp.training._step``):

* 0 for every layer, activation, loss (with and without sample weights), first-order optimizer,
  clipping option and schedule, from the first step on (constants are made on the device);
* the default divergence guard (``keep_finite_weights=True``) gates every update on the device:
  0 per step, like everything above (every test here runs through ``fit``, so with the gate);
* mixed precision: 0 per step for ``precision="bfloat16"`` (no loss scaler); exactly 1 for a
  step with a loss scaler (``precision="float16"``'s default): the found-inf flag, read to
  skip an overflowed step and to update the scale, as ``torch.amp.GradScaler.step`` does
  (:data:`LOSS_SCALER_READS_PER_STEP`);
* L-BFGS: ``3 × max_iter`` host reads per step (:data:`LBFGS_READS_PER_STEP`), two more per
  line-search evaluation, none in the two-loop recursion (see ``nnxp.optim.lbfgs``);
* ``fit`` adds, per epoch, outside the steps: one host-to-device copy (the shuffle
  permutation, drawn on the host so that a seed orders the batches alike on every backend) and
  one device-to-host transfer (the epoch's logs and the divergence flag, stacked).
"""

from __future__ import annotations

import contextlib
import os
import traceback
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import nnxp  # noqa: E402
from nnxp import training  # noqa: E402
from nnxp.kernels import activations as K  # noqa: E402
from nnxp.layers import ACTIVATIONS, Dense, Maxout  # noqa: E402
from nnxp.layers.base import LAYERS  # noqa: E402
from nnxp.losses import LOSSES  # noqa: E402
from nnxp.optim import LBFGS, OPTIMIZERS  # noqa: E402

NNXP_DIR = os.path.dirname(os.path.abspath(nnxp.__file__))
HELPERS = {os.path.join(NNXP_DIR, "backend.py")}  # attribute their calls to the caller

LBFGS_ITERATIONS = 4
LBFGS_READS_PER_STEP = 3 * LBFGS_ITERATIONS
"""Host reads of one ``LBFGS(max_iter=m)`` step without a line search (``nnxp.optim.lbfgs``):
``3m`` whatever the history length — the loss of each of the ``m`` closure evaluations (fit's
closure returns a float, the contract of closure optimizers), one read at the start (max|g| and
the pending pair's yᵀs) and two per iteration (gᵀd; the stopping tests with the next yᵀs). It
was ``2k + 6`` per iteration before, k the number of stored pairs (1,277 per default step)."""

# ATen operators whose output shape depends on the data: CUDA must read the size back.
DATA_DEPENDENT = {"nonzero", "nonzero_static", "argwhere", "masked_select", "_unique",
                  "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive",
                  "repeat_interleave"}
MASK_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index_put"}


class Event(NamedTuple):
    kind: str  # "device->host", "host->device" or "data-dependent shape"
    what: str  # the operator or method
    where: str  # "nnxp/<file>:<line> in <function>" of the nnxp line that caused it
    chain: str  # the nnxp frames above it, innermost first
    step: int  # the training step it happened in (0: outside any step)


_LIBRARIES = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                   for m in (torch, contextlib, np)) + (
    os.path.dirname(os.path.abspath(nnxp.backend.array_api_compat.__file__)) + os.sep,)
_HARNESS = {"_attribute", "record", "__torch_function__", "__torch_dispatch__"}


def _name(frame: traceback.FrameSummary) -> str:
    path = frame.filename
    if path.startswith(NNXP_DIR):
        path = "nnxp/" + os.path.relpath(path, NNXP_DIR)
    else:
        path = os.path.basename(path)
    return f"{path}:{frame.lineno} in {frame.name}"


def _attribute() -> tuple[str, str]:
    """``(where, chain)``: the innermost line of code that is neither a library's (torch,
    array-api-compat, NumPy), nor the harness's, nor nnxp.backend's helpers; then the nnxp lines
    that called it."""
    frames = [f for f in reversed(traceback.extract_stack())
              if not f.filename.startswith(_LIBRARIES) and f.filename not in HELPERS
              and not (f.filename == __file__ and f.name in _HARNESS)]
    if not frames:
        return "<unknown>", ""
    callers = [_name(f) for f in frames[1:] if f.filename.startswith(NNXP_DIR)]
    return _name(frames[0]), " <- ".join(callers[:3])


def _is_mask(index: Any) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


class SyncCounter:
    """Record synchronisations and host-to-device copies while it is active (a context manager).

    ``steps`` counts calls of ``nnxp.training._step`` made meanwhile; every event carries the
    number of the step it happened in (0: outside the steps, e.g. at an epoch boundary).
    """

    def __init__(self, step_function: str = "_step") -> None:
        self.step_function = step_function  # the training function that makes one step
        self.events: list[Event] = []
        self.step = 0
        self.steps = 0
        self._host_copies: dict[int, weakref.ref[Any]] = {}  # what .cpu() returned, by id
        self._stack = contextlib.ExitStack()

    def record(self, kind: str, what: str) -> None:
        where, chain = _attribute()
        self.events.append(Event(kind, what, where, chain, self.step))

    def __enter__(self) -> SyncCounter:
        counter = self
        real_step = getattr(training, self.step_function)

        def counted_step(*args: Any, **kwargs: Any) -> Any:
            counter.steps += 1
            counter.step = counter.steps
            try:
                return real_step(*args, **kwargs)
            finally:
                counter.step = 0

        self._stack.enter_context(_patched(training, self.step_function, counted_step))
        self._stack.enter_context(_FunctionLevel(self))
        self._stack.enter_context(_DispatchLevel(self))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def in_steps(self, first: int = 1) -> list[Event]:
        return [e for e in self.events if e.step >= first]

    def outside_steps(self) -> list[Event]:
        return [e for e in self.events if e.step == 0]


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


class _FunctionLevel(TorchFunctionMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func is torch.Tensor.cpu:
            self.counter.record("device->host", ".cpu()")
            self.counter._host_copies[id(out)] = weakref.ref(out)
        elif func in (torch.Tensor.numpy, torch.Tensor.tolist):
            ref = self.counter._host_copies.get(id(args[0])) if args else None
            if ref is None or ref() is not args[0]:
                self.counter.record("device->host", f".{func.__name__}()")
        return out


class _DispatchLevel(TorchDispatchMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        op = func.overloadpacket.__name__
        if op == "_local_scalar_dense":
            self.counter.record("device->host", "scalar read (float/int/bool/index/item)")
        elif op == "lift_fresh":
            self.counter.record("host->device", "tensor from host data (asarray/tensor/...)")
        elif op in DATA_DEPENDENT and not (op == "repeat_interleave"
                                           and (kwargs or {}).get("output_size") is not None):
            self.counter.record("data-dependent shape", f"aten.{op}")
        elif op in MASK_INDEXING and len(args) > 1 and any(
                _is_mask(i) for i in (args[1] if isinstance(args[1], (list, tuple)) else [])):
            self.counter.record("data-dependent shape", f"aten.{op} with a boolean mask")
        return func(*args, **(kwargs or {}))


def report(events: list[Event]) -> str:
    """One line per distinct source, with its count: what a failing budget prints."""
    counts = Counter((e.kind, e.what, e.where, e.chain) for e in events)
    return "\n".join(f"  {n} x {kind}: {what} at {where}" + (f"  (via {chain})" if chain else "")
                     for (kind, what, where, chain), n in counts.most_common())


def assert_budget(events: list[Event], budget: int, what: str) -> None:
    if len(events) > budget:
        raise AssertionError(f"{what}: {len(events)} synchronisations or host-to-device copies, "
                             f"budget {budget}:\n{report(events)}")


# ----------------------------------------------------------------------------------------------
# The harness catches what it claims to (each kind once, attributed to the calling line)
# ----------------------------------------------------------------------------------------------

_x = torch.linspace(-1.0, 1.0, 6, dtype=torch.float32)


@pytest.mark.parametrize(("call", "kind"), [
    (lambda: float(_x.sum()), "device->host"),
    (lambda: int(_x.sum()), "device->host"),
    (lambda: bool(_x.sum() > 0), "device->host"),
    (lambda: [0, 1, 2][_x.argmax() - 4], "device->host"),
    (lambda: _x.sum().item(), "device->host"),
    (lambda: _x.cpu().numpy(), "device->host"),
    (lambda: _x.tolist(), "device->host"),
    (lambda: _x[_x > 0], "data-dependent shape"),
    (lambda: _x.clone().__setitem__(_x > 5, torch.zeros(())), "data-dependent shape"),
    (lambda: torch.nonzero(_x), "data-dependent shape"),
    (lambda: torch.masked_select(_x, _x > 0), "data-dependent shape"),
    (lambda: torch.unique(_x), "data-dependent shape"),
    (lambda: torch.asarray(0.0), "host->device"),
    (lambda: torch.as_tensor(np.ones(3)), "host->device"),
    (lambda: torch.tensor([1.0, 2.0]), "host->device"),
    (lambda: torch.from_numpy(np.ones(3)), "host->device"),
    (lambda: nnxp.backend.asarray(np.ones(3), xp=nnxp.backend.namespace_of(_x), device="cpu"),
     "host->device"),
], ids=["float", "int", "bool", "index", "item", "cpu-numpy", "tolist", "mask-index",
        "mask-assign", "nonzero", "masked_select", "unique", "asarray-scalar", "as_tensor-numpy",
        "tensor-list", "from_numpy", "nnxp-asarray"])
def test_the_counter_catches_each_kind_of_sync_once(call: Callable[[], Any], kind: str) -> None:
    with SyncCounter() as counter:
        call()
    assert [e.kind for e in counter.events] == [kind], report(counter.events)


def test_the_counter_sees_array_api_compat_internals() -> None:
    xp = nnxp.backend.namespace_of(_x)
    with SyncCounter() as counter:
        xp.maximum(_x, 0.0)  # array-api-compat turns the 0.0 into a tensor: a copy on a GPU
    assert [e.kind for e in counter.events] == ["host->device"]
    with SyncCounter() as counter:  # device work only: none of these is counted
        xp.maximum(_x, xp.zeros((), dtype=_x.dtype)), _x * 0.5, xp.where(_x > 0, _x, 0.0)
        xp.sum(_x), xp.take(_x, xp.argsort(_x)), xp.full((), 2.0, dtype=_x.dtype)
    assert counter.events == [], report(counter.events)


def test_a_float_added_to_a_kernel_fails_the_budget_naming_its_line(monkeypatch) -> None:
    """The meta-test: a kernel that reads one value back per call is caught, with its line."""
    real = K.relu

    def relu_with_a_read(x: Any, *, xp: Any) -> Any:
        if float(xp.max(x)) > 1e30:  # the added synchronisation
            pass
        return real(x, xp=xp)

    monkeypatch.setattr(K, "relu", relu_with_a_read)
    with pytest.raises(AssertionError) as info:
        check_steps(lambda: [Dense(4, 8, activation="relu"), Dense(8, 3)])
    message = str(info.value)
    line = relu_with_a_read.__code__.co_firstlineno + 1
    assert f"device->host: scalar read (float/int/bool/index/item) at test_sync.py:{line} in " \
           "relu_with_a_read  (via nnxp/layers/activations.py:" in message, message
    assert "in forward" in message and "training step 1: 1 synchronisations" in message


# ----------------------------------------------------------------------------------------------
# The model matrix: 0 per step
# ----------------------------------------------------------------------------------------------

N, F, C = 64, 4, 3
BATCH = 16


def _data(loss: str = "softmax_cross_entropy", n_out: int = C) -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, F)).astype(np.float32)
    target = LOSSES[loss].target_type
    labels = rng.integers(0, n_out, size=N)
    if target == "class_labels":
        y: Any = labels
    elif target == "distribution":
        y = np.eye(n_out, dtype=np.float32)[labels]
    elif target == "binary":
        y = rng.integers(0, 2, size=(N, n_out)).astype(np.float32)
    else:
        y = rng.normal(size=(N, n_out)).astype(np.float32)
    return X, y


def check_steps(make_layers: Callable[[], list[Any]], *, loss: str = "softmax_cross_entropy",
                optimizer: Any = None, budget: int = 0, sample_weight: bool = False,
                callbacks: Any = None, epochs: int = 2, accumulate: int = 1,
                **fit_options: Any) -> SyncCounter:
    """Train on torch CPU under the counter; fail when a step exceeds ``budget``."""
    with nnxp.use_backend("torch"):
        model = nnxp.Sequential(make_layers(), seed=0, loss=loss)
        X, y = _data(loss)
        w = np.linspace(0.5, 1.5, N).astype(np.float32) if sample_weight else None
        with SyncCounter("_step" if accumulate == 1 else "_accumulated_step") as counter:
            model.fit(X, y, optimizer=optimizer, epochs=epochs, batch_size=BATCH, verbose=0,
                      sample_weight=w, callbacks=callbacks, accumulate=accumulate,
                      **fit_options)
    assert counter.steps == epochs * -(-N // (BATCH * accumulate))
    for step in range(1, counter.steps + 1):
        events = [e for e in counter.events if e.step == step]
        assert_budget(events, budget, f"training step {step}")
    return counter


def _mlp(activation: str) -> Callable[[], list[Any]]:
    def make() -> list[Any]:
        return [Dense(F, 8), ACTIVATIONS[activation](), Dense(8, C)]
    return make


@pytest.mark.parametrize("optimizer", [
    lambda: nnxp.optim.SGD(lr=0.1, momentum=0.9, clip_norm=1.0),
    lambda: nnxp.optim.Adam(lr=0.01, clip_value=0.5)])
def test_accumulated_steps_make_no_sync(optimizer: Callable[[], Any]) -> None:
    """fit(accumulate=k): k micro-batches per step (4 and 3 + 1 batches of 16 here), with
    sample weights, penalties and clipping: still 0 per optimizer step."""
    def make() -> list[Any]:
        return [Dense(F, 8, l1=0.01, l2=0.01), ACTIVATIONS["relu"](), Dense(8, C)]
    check_steps(make, optimizer=optimizer(), sample_weight=True, accumulate=3)


def test_static_buffer_steps_make_no_sync() -> None:
    """fit(capture=True) on torch CPU: the copies into the static buffers are device work."""
    check_steps(_mlp("tanh"), optimizer=nnxp.optim.SGD(lr=0.1, momentum=0.9),
                sample_weight=True, capture=True)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_layer_trains_without_a_sync(name: str) -> None:
    check_steps(_mlp(name))


@pytest.mark.parametrize("name", ["relu", "prelu", "rrelu", "gelu", "gelu_tanh", "softmax"])
def test_dense_with_an_activation_trains_without_a_sync(name: str) -> None:
    check_steps(lambda: [Dense(F, 8, activation=name), Dense(8, C)])


@pytest.mark.parametrize("options", [
    {"bias": False}, {"l1": 1e-3}, {"l2": 1e-3}, {"l1": 1e-3, "l2": 1e-3}, {"max_norm": 0.5},
], ids=repr)
def test_dense_options_train_without_a_sync(options: dict[str, Any]) -> None:
    check_steps(lambda: [Dense(F, 8, activation="tanh", **options), Dense(8, C, **options)])


@pytest.mark.parametrize("make", [
    lambda: [Maxout(F, 8, k=3), Dense(8, C)],
    lambda: [Maxout(F, 8, k=2, bias=False), Dense(8, C)],
    lambda: [Dense(F, 8), LAYERS["BatchNorm1d"](8), ACTIVATIONS["relu"](), Dense(8, C)],
    lambda: [Dense(F, 8), LAYERS["LayerNorm"](8), ACTIVATIONS["relu"](), Dense(8, C)],
    lambda: [Dense(F, 8), LAYERS["Dropout"](0.3), Dense(8, C)],
    lambda: [LAYERS["Standardize"](F), Dense(F, C)],
], ids=["maxout", "maxout-nobias", "batchnorm", "layernorm", "dropout", "standardize"])
def test_every_layer_trains_without_a_sync(make: Callable[[], list[Any]]) -> None:
    check_steps(make)


def _head(loss: str) -> Callable[[], list[Any]]:
    """A model whose outputs suit ``loss`` (probabilities for the losses on probabilities)."""
    def make() -> list[Any]:
        layers = [Dense(F, 8, activation="tanh"), Dense(8, C)]
        if loss == "binary_cross_entropy":
            layers.append(ACTIVATIONS["sigmoid"]())
        elif loss in ("categorical_cross_entropy", "sparse_categorical_cross_entropy"):
            layers.append(ACTIVATIONS["softmax"]())
        return layers
    return make


@pytest.mark.parametrize("sample_weight", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains_without_a_sync(loss: str, sample_weight: bool) -> None:
    check_steps(_head(loss), loss=loss, sample_weight=sample_weight)


@pytest.mark.parametrize("name", sorted(set(OPTIMIZERS) - {"lbfgs"}))
def test_every_optimizer_steps_without_a_sync(name: str) -> None:
    check_steps(_mlp("relu"), optimizer=OPTIMIZERS[name]())


@pytest.mark.parametrize("optimizer", [
    lambda: OPTIMIZERS["sgd"](lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4),
    lambda: OPTIMIZERS["sgd"](lr=0.01, momentum=0.9, dampening=0.1),
    lambda: OPTIMIZERS["adam"](amsgrad=True, weight_decay=1e-4),
    lambda: OPTIMIZERS["adamw"](amsgrad=True),
    lambda: OPTIMIZERS["nadam"](weight_decay=1e-4, decoupled_weight_decay=True),
    lambda: OPTIMIZERS["adadelta"](weight_decay=1e-4),
    lambda: OPTIMIZERS["rmsprop"](momentum=0.9, centered=True),
    lambda: OPTIMIZERS["adagrad"](lr_decay=0.01, weight_decay=1e-4),
    lambda: OPTIMIZERS["adam"](clip_norm=0.5),
    lambda: OPTIMIZERS["adam"](clip_value=0.1),
    lambda: OPTIMIZERS["sgd"](lr=0.1, clip_norm=0.5, clip_value=0.1),
], ids=["sgd-nesterov", "sgd-dampening", "adam-amsgrad", "adamw-amsgrad", "nadam-decay",
        "adadelta-decay", "rmsprop-centered", "adagrad-decay", "clip_norm", "clip_value",
        "both-clips"])
def test_optimizer_options_and_clipping_step_without_a_sync(optimizer: Callable[[], Any]) -> None:
    check_steps(_mlp("relu"), optimizer=optimizer())


@pytest.mark.parametrize("name", ["step", "multistep", "exponential", "cosine", "warmup",
                                  "plateau"])
def test_schedules_cost_nothing_per_step(name: str) -> None:
    from nnxp.callbacks import LearningRateScheduler
    from nnxp.schedules import SCHEDULES

    options: dict[str, Any] = {"step": {"step_size": 1}, "multistep": {"milestones": [1]},
                               "exponential": {"gamma": 0.9}, "cosine": {"T_max": 3},
                               "warmup": {"warmup_epochs": 2}, "plateau": {}}[name]
    schedule = SCHEDULES[name](**options)
    check_steps(_mlp("relu"), optimizer=OPTIMIZERS["sgd"](lr=0.1, momentum=0.9),
                callbacks=[LearningRateScheduler(schedule, monitor="loss")], epochs=3)


def test_lbfgs_reads_a_small_constant_per_step() -> None:
    counter = check_steps(_mlp("tanh"), optimizer=LBFGS(lr=0.5, max_iter=LBFGS_ITERATIONS),
                          budget=LBFGS_READS_PER_STEP)
    kinds = {e.kind for e in counter.in_steps()}
    assert kinds <= {"device->host"}, report(counter.in_steps())  # scalar reads only
    per_step = Counter(e.step for e in counter.in_steps())
    assert set(per_step.values()) == {LBFGS_READS_PER_STEP}, per_step  # exactly, every step


def test_lbfgs_with_line_search_reads_a_small_constant_per_step() -> None:
    """Plus two per line-search evaluation (its loss and gᵀd drive its branches)."""
    check_steps(_mlp("tanh"), optimizer=LBFGS(max_iter=LBFGS_ITERATIONS,
                                              line_search_fn="strong_wolfe"),
                budget=2 * LBFGS_READS_PER_STEP)


LOSS_SCALER_READS_PER_STEP = 1
"""Host reads of one step with a loss scaler (``nnxp.precision``): the found-inf flag (with the
loss's finiteness, stacked: one transfer). Float32 ``fit`` has none."""


@pytest.mark.parametrize("make", [
    _mlp("relu"),
    lambda: [Dense(F, 8), LAYERS["BatchNorm1d"](8), ACTIVATIONS["relu"](), Dense(8, C)],
    lambda: [Dense(F, 8), LAYERS["LayerNorm"](8), ACTIVATIONS["relu"](), Dense(8, C)],
    lambda: [Dense(F, 8, activation="softmax"), Dense(8, C)],
], ids=["mlp", "batchnorm", "layernorm", "softmax"])
def test_bfloat16_without_a_loss_scaler_steps_without_a_sync(make) -> None:
    check_steps(make, optimizer=OPTIMIZERS["adam"](), precision="bfloat16")


def test_float16_with_its_loss_scaler_reads_exactly_one_flag_per_step() -> None:
    counter = check_steps(_mlp("relu"), optimizer=OPTIMIZERS["adam"](), precision="float16",
                          budget=LOSS_SCALER_READS_PER_STEP)
    per_step = Counter(e.step for e in counter.in_steps())
    assert set(per_step.values()) == {LOSS_SCALER_READS_PER_STEP}, per_step
    assert {e.kind for e in counter.in_steps()} == {"device->host"}
    assert all("nnxp/training.py" in e.where and "in _update" in e.where
               for e in counter.in_steps()), report(counter.in_steps())


def test_float16_without_a_loss_scaler_steps_without_a_sync() -> None:
    check_steps(_mlp("relu"), optimizer=OPTIMIZERS["sgd"](momentum=0.9), precision="float16",
                loss_scale=False)


# ----------------------------------------------------------------------------------------------
# fit's own budget at the epoch boundaries
# ----------------------------------------------------------------------------------------------

EPOCH_BUDGET = Counter({
    ("host->device", "nnxp/random.py in permutation"): 1,  # the shuffle order
    ("device->host", "nnxp/training.py in _run_epochs"): 1,  # the logs, one stacked copy
})
"""Per epoch, outside the steps: the permutation (drawn on the host by ``model.data_rng``, so a
seed orders the batches alike on every backend, and moved once) and the one transfer of the
epoch's logs and divergence flag. Keyed by file and function, not line."""


def _per_epoch(counter: SyncCounter) -> Counter[tuple[str, str]]:
    def key(e: Event) -> tuple[str, str]:
        path, rest = e.where.split(":", 1)
        return e.kind, f"{path} in {rest.split(' in ', 1)[1]}"
    return Counter(key(e) for e in counter.outside_steps())


def test_fit_transfers_once_per_epoch_each_way_beyond_its_set_up() -> None:
    layers = _mlp("relu")
    one = check_steps(layers, epochs=1)
    three = check_steps(layers, epochs=3)
    extra = _per_epoch(three)
    extra.subtract(_per_epoch(one))
    extra = +extra  # drop the zero counts
    want = Counter({k: 2 * n for k, n in EPOCH_BUDGET.items()})
    assert extra == want, (f"two more epochs cost {dict(extra)}, expected {dict(want)}:\n"
                           + report(three.outside_steps()))
    # where they come from, by line
    lines = {e.where for e in three.outside_steps()} - {e.where for e in one.outside_steps()}
    assert not lines, lines  # the same lines run every epoch


def test_fit_epoch_budget_catches_a_per_epoch_regression(monkeypatch) -> None:
    """An extra read per epoch (here: the learning rate read back from the device) is caught."""
    real = training.get_lr

    def get_lr_with_a_read(opt: Any) -> Any:
        float(nnxp.backend.namespace_of(_x).sum(_x))
        return real(opt)

    monkeypatch.setattr(training, "get_lr", get_lr_with_a_read)
    with pytest.raises(AssertionError, match="expected"):
        test_fit_transfers_once_per_epoch_each_way_beyond_its_set_up()


STREAM_CHUNK_BUDGET = Counter({
    ("host->device", "nnxp/data.py in device_chunks"): 2,  # per chunk: X and y, one copy each
})
"""Streamed data (:mod:`nnxp.data`), per chunk and epoch: one host-to-device copy of each of the
chunk's arrays (X and y here), made where the chunk is read; the shuffle is drawn on the host
and applied while reading, so no permutation is copied. Per epoch, the one transfer of the logs
(:data:`EPOCH_BUDGET`'s second line) as in memory."""


def test_streamed_fit_copies_each_chunk_once_per_epoch_and_nothing_per_step(
        tmp_path: Any, monkeypatch: Any) -> None:
    X, y = _data()
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    ym = np.load(tmp_path / "y.npy", mmap_mode="r")
    rows = 24  # 64 samples: chunks of 24, 24, 16, so batches of 16 run across chunk boundaries
    counts = []
    # The data (1.5 kB) must exceed the share of the budget that may hold it, while the budget
    # still holds the model's memory plan (3.7 kB), or fit refuses up front.
    monkeypatch.setattr(nnxp.data, "DATA_SHARE", 0.1)
    old = nnxp.backend.set_memory_budget(5000)
    try:
        for epochs in (1, 3):
            with nnxp.use_backend("torch"):
                model = nnxp.Sequential(_mlp("relu")(), seed=0)
                with SyncCounter() as counter:
                    model.fit(nnxp.data.Chunks.from_arrays(Xm, ym, chunk_size=rows), None,
                              epochs=epochs, batch_size=BATCH, verbose=0)
            assert counter.steps == epochs * N // BATCH
            assert_budget(counter.in_steps(), 0, "streamed training steps")
            counts.append(_per_epoch(counter))
    finally:
        nnxp.backend.set_memory_budget(old)
    extra = counts[1]
    extra.subtract(counts[0])
    extra = +extra
    n_chunks = 3
    want = Counter({k: 2 * n_chunks * n for k, n in STREAM_CHUNK_BUDGET.items()})
    want[("device->host", "nnxp/training.py in _run_epochs")] = 2
    assert extra == want, f"two more epochs cost {dict(extra)}, expected {dict(want)}"


@pytest.mark.parametrize("name", sorted(set(OPTIMIZERS) - {"lbfgs"}))
def test_a_shut_gate_costs_no_sync_either(name: str) -> None:
    """A batch that overflows (loss and gradients inf/NaN) shuts the divergence gate: that step
    and the ones after it are no-ops, still without a host read; the divergence is found at the
    end of the epoch, in its one transfer."""
    X, y = _data()
    X[20, :] = 3e38  # in the second batch of 16
    with nnxp.use_backend("torch"):
        model = nnxp.Sequential(_mlp("relu")(), seed=0)
        with SyncCounter() as counter, pytest.raises(nnxp.TrainingDivergedError) as info:
            model.fit(X, y, optimizer=OPTIMIZERS[name](), epochs=1, batch_size=BATCH,
                      shuffle=False, verbose=0)
    assert info.value.step == 2 and counter.steps == N // BATCH
    for step in range(1, counter.steps + 1):
        assert_budget([e for e in counter.events if e.step == step], 0, f"training step {step}")
    assert model.optimizer.iterations == 1


def test_step_tables_read_the_step_numbers_without_a_sync() -> None:
    """Adam reading its bias corrections from step tables (what a recorded step does): after
    the first step, which fills the tables (one host-to-device copy per flat unit), no step
    synchronises or copies from the host; the step count never leaves the device."""
    with nnxp.use_backend("torch"):
        model = nnxp.Sequential(_mlp("relu")(), seed=0)
        X, y = _data()
        opt = nnxp.optim.Adam(lr=0.01)
        opt.bind(model.parameters())
        assert opt.use_step_tables(True)
        with SyncCounter() as counter:
            model.fit(X, y, optimizer=opt, epochs=2, batch_size=BATCH, verbose=0)
        assert opt.step_tables() and opt.reads_host_state() == ()
    assert counter.steps > 2
    assert_budget(counter.in_steps(first=2), 0, "training steps after the first")
    first = [e for e in counter.events if e.step == 1]
    assert len(first) == len(opt.step_tables()), report(first)  # one fill per table
    assert all("steptable.py" in e.where and e.kind == "host->device" for e in first), \
        report(first)
