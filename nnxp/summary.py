"""The model summary and memory plan: per layer, the bytes one training step needs.

:meth:`Sequential.summary <nnxp.model.Sequential.summary>` and ``nnxp info`` print
:func:`summary`; :func:`memory_plan` returns the numbers behind it (a :class:`MemoryPlan`), and
``fit`` compares its total with the memory available (:func:`nnxp.backend.available_memory`)
before the first step. Everything here works on any object with the model protocol
(``layers``, ``xp``, ``device``, ``dtype``, ``n_features``, ``n_outputs``, ``optimizer``), so
this module does not import :mod:`nnxp.model`.

The model of a training step (docs/training.md, "Memory plan", explains it with an example):

* **parameters**: every ``layer.params`` array in the model's dtype; with mixed precision
  (``precision="float16"``/``"bfloat16"``) the float32 master weights plus the per-step
  low-precision copy the forward and backward passes use.
* **gradients**: one array per parameter, in the master dtype (float32 after unscaling).
* **optimizer state**: per parameter, the arrays the optimizer's state record holds after a
  step (found by running the optimizer's own ``init_state``/``update`` on a 4-element probe,
  so momentum, AMSGrad, centred RMSprop ... are counted as configured), in the master dtype.
* **activations**: what the backward pass keeps, read from each layer's forward: Dense keeps
  its input; ReLU, Sigmoid, Tanh, ELU, SELU and Softmax keep their output; LeakyReLU, PReLU
  and PiecewiseLinear their input; GELU its derivative; SiLU its output and σ(x); Softplus
  its output; RReLU its input and slopes; Maxout
  its input and the (batch, out, k) winner mask; BatchNorm1d and LayerNorm the normalised
  input x̂ and 1/σ; Dropout its mask; Identity, Step, Sign and Standardize nothing. An array
  kept by two layers (a ReLU's output is the next Dense's input) is counted once, on the
  layer that produced it. The batch itself, the loss's cache (two arrays of the output's
  shape) and the outputs the loop keeps for the metrics are rows of their own. With mixed
  precision they are in the low dtype, the loss in float32.
* **workspace**: the largest transient on top of that. During backward, a layer's new weight
  gradient exists beside the previous step's (one largest parameter) plus the incoming and
  outgoing gradients (two of the largest activation); during the optimizer step the
  activations are gone and the update allocates a few temporaries of the largest parameter
  (:data:`UPDATE_TEMPORARIES`; on backends without in-place updates, the new parameter and
  state arrays as well). The workspace is what the worse of the two adds beyond the lines
  above.

Buffers (BatchNorm running statistics) are a line of their own. Not counted: the data set's
copy on the device (``fit`` moves it there once, or streams it in chunks; see
``docs/training.md``), the gradient sum of ``fit(accumulate=k)`` and data-parallel ``fit``'s
copy of the weights (``fit`` adds both to the plan it checks; the default guard copies
nothing), the allocator's rounding and fragmentation, and library workspaces (cuBLAS).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from . import backend
from .layers import (
    ELU,
    GELU,
    SELU,
    BatchNorm1d,
    Dense,
    Dropout,
    Identity,
    LayerNorm,
    LeakyReLU,
    Maxout,
    PiecewiseLinear,
    PReLU,
    ReLU,
    RReLU,
    Sigmoid,
    Sign,
    SiLU,
    Softmax,
    Softplus,
    Standardize,
    Step,
    Tanh,
)
from .optim.flat import block_elements, flat_backend, unit_bounds
from .validation import check_choice, check_count

__all__ = ["LAYER_TEMPORARIES", "PRECISIONS", "UPDATE_TEMPORARIES", "MemoryPlan",
           "format_bytes", "itemsize", "memory_plan", "summary", "summary_rows"]

PRECISIONS = ("float32", "float16", "bfloat16")
"""The ``precision`` values of :func:`memory_plan`: ``"float32"`` is no mixed precision (every
array in the model's own dtype); the other two are mixed precision in that dtype."""

UPDATE_TEMPORARIES: dict[str, Any] = {
    "SGD": lambda o: 2 if o.get("momentum") and o.get("weight_decay") else 1,
    "Adam": lambda o: 3 if o.get("weight_decay") else 2,
    "AdamW": lambda o: 2,
    "Adamax": lambda o: 2,
    "NAdam": lambda o: 3,
    "Adagrad": lambda o: 3,
    "RMSprop": lambda o: 3 if o.get("centered") or o.get("momentum") else 2,
    "Adadelta": lambda o: 3,
}
"""Full-size temporaries (of one parameter) that each optimizer's in-place update allocates at
once, as a function of its options; measured with :mod:`tracemalloc` on NumPy by
``tests/test_memory_plan.py``, which fails when a kernel changes. Unknown optimizers count 3."""

_KEEPS_OUTPUT = (ReLU, Sigmoid, Tanh, ELU, SELU, Softmax, Softplus)
_KEEPS_INPUT = (LeakyReLU, PReLU, PiecewiseLinear)
_KEEPS_NOTHING = (Identity, Step, Sign, Standardize)
_PROBE = 4  # elements of the optimizer probe parameter

LAYER_TEMPORARIES: dict[str, tuple[float, float]] = {
    "Dense": (0, 0), "ReLU": (0, 1), "Sigmoid": (2, 0), "Tanh": (0, 1), "LeakyReLU": (1, 2),
    "ELU": (1, 1), "SELU": (3, 4), "GELU": (2, -1), "GELU(tanh)": (2, -1), "SiLU": (1, 1),
    "Softplus": (2, 1), "Softmax": (1, 0), "PReLU": (2, 2), "RReLU": (3, 2),
    "BatchNorm1d": (1, 2), "LayerNorm": (2, 3), "Dropout": (1, 0), "Identity": (0, 0),
    "Standardize": (1, 0), "PiecewiseLinear": (1, 1), "Step": (2, 0), "Sign": (2, 0),
    "Maxout": (3.5, 2),
}
"""Temporaries (arrays of the layer's output shape) that a layer's forward and backward
allocate beyond its output, cache, input gradient and weight gradients, at their worst
moment: ``(forward, backward)``, measured with :mod:`tracemalloc` on NumPy by
``tests/test_memory_plan.py`` (which fails when a kernel changes). Unknown layers count
``(3, 3)``. GELU's backward is −1: it writes the input gradient into its cached derivative,
so the input gradient costs no array of its own."""


itemsize = backend.itemsize  # bytes per element of a dtype; public here since the summary's start


def _nbytes(x: Any) -> int:
    return math.prod(x.shape) * itemsize(x.dtype)


def format_bytes(n: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


# --- what each layer keeps for backward ---------------------------------------------------------


@dataclasses.dataclass
class _Keeps:
    """A layer's cache in elements: whether it keeps its input / its output, per-sample extra
    arrays, fixed-size extra arrays, and whether the rule is a guess (unknown layer class)."""

    input: bool = False
    output: bool = False
    per_sample: int = 0
    fixed: int = 0
    guessed: bool = False


def _keeps(layer: Any, n_in: int, n_out: int) -> _Keeps:
    if isinstance(layer, Dense):
        keeps = _Keeps(input=True)
        act = getattr(layer, "activation", None)
        if act is not None:  # the fused activation's cache, on the pre-activation z
            inner = _keeps(act, n_out, n_out)
            keeps.output = inner.output
            keeps.per_sample = inner.per_sample + (n_out if inner.input else 0)
            keeps.fixed, keeps.guessed = inner.fixed, inner.guessed
        return keeps
    if isinstance(layer, _KEEPS_OUTPUT):
        return _Keeps(output=True)
    if isinstance(layer, _KEEPS_INPUT):
        return _Keeps(input=True)
    if isinstance(layer, _KEEPS_NOTHING):
        return _Keeps()
    if isinstance(layer, SiLU):
        return _Keeps(output=True, per_sample=n_out)  # y and σ(x)
    if isinstance(layer, GELU):  # the derivative f′(x), finished in the forward pass
        return _Keeps(per_sample=n_out)
    if isinstance(layer, RReLU):
        return _Keeps(input=True, per_sample=n_in)  # the input and the drawn slopes
    if isinstance(layer, Maxout):
        return _Keeps(input=True, per_sample=n_out * int(layer.k))  # winner (batch, out, k)
    if isinstance(layer, BatchNorm1d):
        return _Keeps(per_sample=n_out, fixed=n_out)  # x̂ and 1/σ per feature
    if isinstance(layer, LayerNorm):
        return _Keeps(per_sample=n_out + 1)  # x̂ and 1/σ per sample
    if isinstance(layer, Dropout):
        return _Keeps(per_sample=n_out if layer.p > 0 else 0)  # the scaled mask
    return _Keeps(input=True, output=True, guessed=True)


def _temporaries_of(layer: Any) -> tuple[float, float]:
    if isinstance(layer, Dense):
        act = getattr(layer, "activation", None)
        if act is None:
            return LAYER_TEMPORARIES["Dense"]
        fwd, bwd = _temporaries_of(act)
        return fwd + 1, bwd  # + the pre-activation, unless the activation keeps it
    if isinstance(layer, GELU) and layer.approximate == "tanh":
        return LAYER_TEMPORARIES["GELU(tanh)"]
    for cls in type(layer).__mro__:
        if cls.__name__ in LAYER_TEMPORARIES and cls.__module__.startswith("nnxp."):
            return LAYER_TEMPORARIES[cls.__name__]
    return (3, 3)


def _aliases_input(layer: Any) -> bool:
    """Whether the layer's training output is its input object (no new array)."""
    return isinstance(layer, Identity) or (isinstance(layer, Dropout) and layer.p == 0)


# --- the optimizer's state, from its own declarations -------------------------------------------


class _ProbeLayer:
    """A one-parameter stand-in for a layer, for the optimizer probe."""

    def __init__(self, xp: Any, device: Any, dtype: Any) -> None:
        self.xp = xp
        self.params = {"p": xp.ones((_PROBE,), dtype=dtype, device=device)}
        self.grads = {"p": xp.full((_PROBE,), 0.5, dtype=dtype, device=device)}


def _options_of(opt: Any, group: dict[str, Any]) -> dict[str, Any]:
    names = type(opt).Hyperparameters.names()
    options = {k: group[k] for k in names if k in group}
    if options.get("lr", 1) == 0:  # a frozen group: any rate allocates the same state
        options["lr"] = 1e-3
    return options


def _state_arrays(opt: Any, group: dict[str, Any], xp: Any, device: Any, dtype: Any) -> float:
    """Parameter-sized arrays in the state of one parameter of ``group`` after two steps."""
    if getattr(opt, "requires_closure", False):  # L-BFGS: flat vectors, not per-parameter state
        history = int(group.get("history_size", getattr(opt, "defaults", {}).get(
            "history_size", 100)))
        return 2 * history + 4  # s and y pairs, direction, previous gradient and step, flat grad
    if not (hasattr(type(opt), "Hyperparameters") and hasattr(opt, "bind")):
        return 2.0  # not an nnxp optimizer: assume Adam-like
    probe = type(opt)(**_options_of(opt, group))
    layer = _ProbeLayer(xp, device, dtype)
    probe.bind([(layer, "p")])
    probe.step()
    probe.step()
    record = next(iter(probe.state.values()), None)
    if record is None:
        return 0.0
    values = ([getattr(record, f.name) for f in dataclasses.fields(record)]
              if dataclasses.is_dataclass(record) else list(vars(record).values()))
    return sum(math.prod(v.shape) for v in values if backend.is_array(v)) / _PROBE


def _temporaries(opt: Any, group: dict[str, Any]) -> int:
    if opt is None:
        return UPDATE_TEMPORARIES["SGD"]({})
    rule = UPDATE_TEMPORARIES.get(type(opt).__name__)
    return 3 if rule is None else int(rule(group))


def _optimizer_factors(model: Any, opt: Any) -> tuple[list[float], list[int], str]:
    """Per model parameter (in ``model.parameters()`` order): state arrays and update
    temporaries; and the optimizer's description."""
    refs = [(layer, key) for layer in model.layers for key in layer.params]
    if opt is None:  # fit's default, SGD(lr=0.01): no state
        return [0.0] * len(refs), [_temporaries(None, {})] * len(refs), "SGD(lr=0.01) (default)"
    groups = getattr(opt, "param_groups", None) or [getattr(opt, "defaults", {})]
    default = groups[-1]
    group_of: dict[tuple[int, str], dict[str, Any]] = {}
    for group in groups:
        for member in group.get("params", []) or []:
            if isinstance(member, tuple) and len(member) == 2:
                group_of[(id(member[0]), member[1])] = group
    cache: dict[int, tuple[float, int]] = {}
    states, temps = [], []
    for layer, key in refs:
        group = group_of.get((id(layer), key), default)
        if id(group) not in cache:
            cache[id(group)] = (_state_arrays(opt, group, model.xp, model.device, model.dtype),
                                _temporaries(opt, group))
        s, t = cache[id(group)]
        states.append(s)
        temps.append(t)
    return states, temps, repr(opt)


# --- the plan -------------------------------------------------------------------------------------


@dataclasses.dataclass
class MemoryPlan:
    """The bytes one training step needs, per layer and in total, for ``batch_size`` samples.

    ``rows``: one dict per layer (``index``, ``layer``, ``class``, ``output_shape``, ``params``
    and the bytes ``param_bytes``, ``grad_bytes``, ``optimizer_bytes``, ``activation_bytes``,
    ``buffer_bytes``; ``estimated`` is True for a layer class whose cache is guessed) plus the
    rows ``input`` (the batch) and ``loss`` (its cache and the kept outputs). ``memory``: the
    column totals, ``workspace`` and ``total``. The activation bytes are
    ``activation_fixed + activation_per_sample · batch_size``; :meth:`total_for` and
    :meth:`largest_batch_size` use that to answer for other batch sizes.
    """

    rows: list[dict[str, Any]]
    memory: dict[str, int | None]
    batch_size: int
    precision: str
    dtype: str
    compute_dtype: str
    optimizer: str
    n_features: int | None
    params: int
    activation_per_sample: int | None
    activation_fixed: int
    update_temporaries: int
    steps: list[dict[str, Any]]
    notes: list[str]
    flat: bool = False  # gradients live in the optimizer's flat buffers (nnxp.optim.flat)

    def total_for(self, batch_size: int) -> int | None:
        """The plan's total for another batch size (None when the input width is unknown)."""
        if self.activation_per_sample is None:
            return None
        m = self.memory
        fixed = sum(int(m[k] or 0) for k in ("parameters", "buffers", "optimizer_state"))
        if self.flat:  # the flat gradient buffers outlive every step
            return fixed + int(m["gradients"] or 0) + max(self.backward_peak(batch_size),
                                                          self.update_temporaries)
        # the step releases the last step's gradients first (training._step): they are built
        # up during the backward pass (backward_peak) and all alive for the update
        update = int(m["gradients"] or 0) + self.update_temporaries
        return fixed + max(self.backward_peak(batch_size), update)

    def backward_peak(self, batch_size: int) -> int:
        """The most bytes of activations, gradients and temporaries alive at once in the
        forward and backward passes of one step.

        A replay of the step over the layers' caches (``steps``). Forward: each layer's output,
        cache and temporaries (:data:`LAYER_TEMPORARIES`) appear beside the arrays kept by the
        layers before it; an output nobody keeps is dropped after the next layer. Backward:
        every kept array, the loss cache and ``∂L/∂outputs`` are alive; each layer allocates
        its input gradient, temporaries and weight gradients while its output gradient and the
        weight gradients of the layers above it are alive, and afterwards releases the cached
        arrays no layer below it still holds. (A step starts by releasing the previous step's
        gradients, so none exist in the forward pass.)
        """
        n = batch_size
        steps = self.steps
        if not steps:
            return 0
        pinned = steps[0]["pinned"]
        widths = {0: steps[0]["in_width"]}
        for step in steps:
            widths[step["output"]] = step["out_width"]
        kept = {t for step in steps for t in step["holds"]} | pinned
        # forward
        alive = widths[0] * n
        peak = alive
        current = 0
        for step in steps:
            out = step["output"]
            new = 0 if out == step["input"] else widths[out] * n
            cache = step["extra_ps"] * n + step["extra_fixed"]
            peak = max(peak, alive + new + cache + step["fwd_temp"] * n)
            alive += new + cache
            if current not in kept and current != out:
                alive -= widths[current] * n
            current = out
        # backward
        alive = self.activation_fixed + (self.activation_per_sample or 0) * n
        holders: dict[int, set[int]] = {}
        for step in steps:
            for t in step["holds"]:
                holders.setdefault(t, set()).add(step["index"])
        dy = steps[-1]["out_width"] * n
        peak = max(peak, alive + dy)
        grads = 0  # the weight gradients made so far (the previous step's were released)
        for step in reversed(steps):
            if step["skip"]:
                break
            dx = step["grad_in"] * n
            peak = max(peak, alive + dy + dx + step["bwd_temp"] * n + grads + step["grad_bytes"])
            grads += step["grad_bytes"]
            for t in step["holds"]:
                holders[t].discard(step["index"])
                if not holders[t] and t not in pinned:
                    alive -= widths[t] * n
            alive -= step["extra_ps"] * n + step["extra_fixed"]
            dy = dx
        return peak

    def largest_batch_size(self, limit: int, *, extra: int = 0) -> int:
        """The largest batch size whose total (plus ``extra`` bytes) fits in ``limit`` bytes;
        0 when not even one sample fits."""
        if self.total_for(1) is None or (self.total_for(1) or 0) + extra > limit:
            return 0
        lo, hi = 1, 2
        while (self.total_for(hi) or 0) + extra <= limit and hi < 2**48:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if (self.total_for(mid) or 0) + extra <= limit:
                lo = mid
            else:
                hi = mid
        return lo


def memory_plan(model: Any, batch_size: int = 32, *, precision: str | None = None,
                optimizer: Any = None) -> MemoryPlan:
    """The memory one training step of ``model`` needs with ``batch_size`` samples.

    Parameters
    ----------
    model
        A :class:`~nnxp.Sequential` (or anything with its protocol).
    batch_size
        Samples per step.
    precision
        ``"float32"`` (or ``None``, the default: every array in the model's dtype),
        ``"float16"`` or ``"bfloat16"`` (mixed precision: float32 master weights, gradients and
        optimizer state; activations and a per-step weight copy in the low dtype).
    optimizer
        The optimizer to plan for; by default the model's (``fit``'s default ``SGD`` when it
        has none). It need not be bound yet.

    Output shapes come from one forward pass in evaluation mode on a single zero sample (when
    the model declares its input width); nothing is allocated at ``batch_size``.
    """
    batch_size = check_count(batch_size, argument="batch_size")
    precision = "float32" if precision is None else check_choice(
        precision, PRECISIONS, argument="precision")
    master = itemsize(model.dtype)
    mixed = precision != "float32"
    low = 2 if mixed else master
    opt = optimizer if optimizer is not None else getattr(model, "optimizer", None)
    states, temps, opt_name = _optimizer_factors(model, opt)
    # first-order optimizers keep parameters, gradients and state in flat buffers on these
    # backends (nnxp.optim.flat): Dense writes its gradients into them, nothing is released
    flat = (opt is None or not getattr(opt, "requires_closure", False)) \
        and getattr(opt, "flat", None) is not False and flat_backend(model.xp)

    n_in = model.n_features
    x = None
    if n_in is not None:
        x = model.xp.zeros((1, n_in), dtype=model.dtype, device=model.device)
    width_in = n_in or 0
    rows: list[dict[str, Any]] = []
    kept: list[bool] = [False] * (len(model.layers) + 1)  # tensor i: the input of layer i
    owner = list(range(len(model.layers) + 1))  # which tensor an aliased output really is
    widths = [width_in]
    extras: list[tuple[int, int]] = []
    holds_io: list[tuple[bool, bool]] = []
    guessed = []
    position = 0
    for i, layer in enumerate(model.layers):
        shape: tuple[int, ...] | None = None
        width_out = widths[-1]
        if x is not None:
            x = layer.forward(x, training=False)
            shape = tuple(int(s) for s in x.shape[1:])
            width_out = math.prod(shape)
        keeps = _keeps(layer, widths[-1], width_out)
        if _aliases_input(layer):
            owner[i + 1] = owner[i]
        if keeps.input:
            kept[owner[i]] = True
        if keeps.output:
            kept[owner[i + 1]] = True
        widths.append(width_out)
        holds_io.append((keeps.input, keeps.output))
        extras.append((keeps.per_sample, keeps.fixed))
        guessed.append(keeps.guessed)
        n_params = sum(math.prod(p.shape) for p in layer.params.values())
        state = sum(math.prod(p.shape) * states[position + j]
                    for j, p in enumerate(layer.params.values()))
        position += len(layer.params)
        rows.append({
            "index": i, "layer": repr(layer), "class": type(layer).__name__,
            "output_shape": None if shape is None else (batch_size, *shape),
            "params": n_params,
            "param_bytes": n_params * (master + (2 if mixed else 0)),
            "grad_bytes": n_params * master,
            "optimizer_bytes": int(state * master),
            "buffer_bytes": sum(_nbytes(b) for b in getattr(layer, "buffers", {}).values()),
            "estimated": keeps.guessed,
        })
    n_layers = len(model.layers)
    kept[owner[n_layers]] = True  # the outputs, kept by the loop for the metrics
    n_out = model.n_outputs or widths[-1]
    per_sample = []
    for i in range(n_layers):
        own = (widths[i + 1] if kept[i + 1] and owner[i + 1] == i + 1 else 0)
        per_sample.append(own + extras[i][0])
        rows[i]["activation_bytes"] = ((own + extras[i][0]) * batch_size + extras[i][1]) * low
    input_ps = widths[0]  # the batch: the loop holds it through the step
    loss_ps = 2 * n_out  # the loss cache: two arrays of the outputs' shape, in float32 for AMP
    loss_bytes_ps = loss_ps * (master if mixed else low)
    act_ps = None
    act_fixed = sum(e[1] for e in extras) * low
    if n_in is not None:
        act_ps = (sum(per_sample) + input_ps) * low + loss_bytes_ps
    rows.insert(0, {"index": None, "layer": "input batch", "class": "input",
                    "output_shape": (batch_size, width_in) if n_in else None, "params": 0,
                    "param_bytes": 0, "grad_bytes": 0, "optimizer_bytes": 0,
                    "buffer_bytes": 0, "estimated": False,
                    "activation_bytes": input_ps * batch_size * low})
    rows.append({"index": None, "layer": "loss cache", "class": "loss",
                 "output_shape": (batch_size, n_out), "params": 0, "param_bytes": 0,
                 "grad_bytes": 0, "optimizer_bytes": 0, "buffer_bytes": 0, "estimated": False,
                 "activation_bytes": loss_bytes_ps * batch_size})

    sizes = [math.prod(p.shape) for layer in model.layers for p in layer.params.values()]
    largest = max(sizes, default=0)
    if flat:  # an update's temporaries are the size of a whole unit (one group assumed),
        # or of one block of it where the update runs block by block (on a CPU)
        largest = max((sum(sizes[lo:hi]) for lo, hi in unit_bounds(sizes)), default=0)
        block = block_elements(getattr(opt, "update_block", None), model.xp, model.device,
                               model.dtype)
        if block is not None:
            largest = min(largest, block)
    inplace = backend.supports_inplace(model.xp)
    temp_count = max(temps, default=1)
    if not inplace:  # a new parameter and new state arrays on every update
        temp_count += 1 + math.ceil(max(states, default=0))
    first = next((i for i, layer in enumerate(model.layers) if layer.params), n_layers)
    pinned = {0, owner[n_layers]}  # the batch and the outputs: the loop holds them
    steps = []
    for i, layer in enumerate(model.layers):
        holds = set()
        keeps_in, keeps_out = holds_io[i]
        if keeps_in:
            holds.add(owner[i])
        if keeps_out:
            holds.add(owner[i + 1])
        n_params = sum(math.prod(p.shape) for p in layer.params.values())
        steps.append({"index": i, "holds": holds, "pinned": pinned,
                      "tensors": {t: widths[t] * low for t in holds},
                      "input": owner[i], "output": owner[i + 1],
                      "in_width": widths[i] * low, "out_width": widths[i + 1] * low,
                      "fwd_temp": int(_temporaries_of(layer)[0] * widths[i + 1] * low),
                      "bwd_temp": int(_temporaries_of(layer)[1] * widths[i + 1] * low),
                      "extra_ps": extras[i][0] * low, "extra_fixed": extras[i][1] * low,
                      "grad_out": widths[i + 1] * low,
                      "grad_in": 0 if i <= first else widths[i] * low,
                      "grad_bytes": 0 if flat and isinstance(layer, Dense) and not mixed
                      else n_params * (master + (low if mixed else 0)),
                      "skip": i < first})
    memory: dict[str, int | None] = {
        "parameters": sum(r["param_bytes"] for r in rows),
        "gradients": sum(r["grad_bytes"] for r in rows),
        "buffers": sum(r["buffer_bytes"] for r in rows),
        "optimizer_state": sum(r["optimizer_bytes"] for r in rows),
        "activations": None if act_ps is None else act_fixed + act_ps * batch_size,
    }
    plan = MemoryPlan(
        rows=rows, memory=memory, batch_size=batch_size, precision=precision,
        dtype=backend.dtype_name(model.dtype), compute_dtype=precision if mixed else
        backend.dtype_name(model.dtype), optimizer=opt_name, n_features=n_in,
        params=sum(sizes), activation_per_sample=act_ps, activation_fixed=act_fixed,
        update_temporaries=temp_count * largest * master, steps=steps, notes=[], flat=flat)
    if any(guessed):
        names = sorted({r["class"] for r in rows if r["estimated"]})
        plan.notes.append(f"cache of {', '.join(names)} not known: counted as its input and "
                          "output")
    total = plan.total_for(batch_size)
    if total is None:
        plan.notes.append("the input width is unknown: activations not counted")
        total = sum(int(v or 0) for v in memory.values()) + plan.update_temporaries
        memory["workspace"] = plan.update_temporaries
    else:
        memory["workspace"] = total - sum(int(v or 0) for v in memory.values())
    memory["total"] = total
    return plan


def summary_rows(model: Any, batch_size: int = 32, *, precision: str | None = None,
                 optimizer: Any = None) -> dict[str, Any]:
    """The numbers behind :func:`summary` as a dict: ``rows`` (the layers, with the byte
    columns of :class:`MemoryPlan`), ``params``, ``memory``, ``batch_size``, ``n_features``,
    ``dtype``, ``precision`` and ``plan`` (the :class:`MemoryPlan` itself)."""
    plan = memory_plan(model, batch_size, precision=precision, optimizer=optimizer)
    layers = [r for r in plan.rows if r["index"] is not None]
    return {"rows": layers, "params": plan.params, "memory": plan.memory,
            "batch_size": batch_size, "n_features": plan.n_features, "dtype": plan.dtype,
            "precision": plan.precision, "plan": plan}


def summary(model: Any, batch_size: int = 32, *, precision: str | None = None,
            optimizer: Any = None) -> str:
    """A table of the layers with their output shapes, parameter counts and the bytes of
    parameters, gradients, optimizer state and cached activations in a training step of
    ``batch_size`` samples, followed by the totals (see :func:`memory_plan`)."""
    plan = memory_plan(model, batch_size, precision=precision, optimizer=optimizer)
    head = ("#", "layer", "output shape", "params", "param B", "grad B", "optim B",
            "activ. B")
    body = []
    for r in plan.rows:
        body.append(("" if r["index"] is None else str(r["index"]),
                     r["layer"] + (" ~" if r["estimated"] else ""),
                     "?" if r["output_shape"] is None else str(r["output_shape"]),
                     f"{r['params']:,}" if r["index"] is not None else "",
                     format_bytes(r["param_bytes"]) if r["param_bytes"] else "",
                     format_bytes(r["grad_bytes"]) if r["grad_bytes"] else "",
                     format_bytes(r["optimizer_bytes"]) if r["optimizer_bytes"] else "",
                     format_bytes(r["activation_bytes"])
                     if plan.n_features is not None and r["activation_bytes"] else ""))
    widths = [max(len(row[c]) for row in [head, *body]) for c in range(len(head))]
    aligns = (">", "<", "<", ">", ">", ">", ">", ">")
    fmt = "  ".join(f"{{:{a}{w}}}" for a, w in zip(aligns, widths))
    rule = "-" * (sum(widths) + 2 * (len(head) - 1))
    where = getattr(model.xp, "__name__", "?").removeprefix("array_api_compat.")
    mode = ("" if plan.precision == "float32"
            else f", mixed precision {plan.precision} (master {plan.dtype})")
    lines = [f"Sequential on {where} ({model.device}), dtype {plan.dtype}{mode}, input width "
             f"{plan.n_features}", rule, fmt.format(*head), rule]
    lines += [fmt.format(*row) for row in body]
    lines.append(rule)
    mem = plan.memory
    n_bytes = plan.params * itemsize(model.dtype)
    lines.append(f"parameters: {plan.params:,} ({format_bytes(n_bytes)})")
    lines.append(f"memory plan for a training step with batch_size={batch_size}, optimizer "
                 f"{plan.optimizer}:")
    for key, label in (("parameters", "parameters"), ("gradients", "gradients"),
                       ("buffers", "buffers"), ("optimizer_state", "optimizer state"),
                       ("activations", "activations"), ("workspace", "workspace")):
        value = mem[key]
        lines.append(f"  {label:<16} {'n/a' if value is None else format_bytes(value)}")
    lines.append(f"  {'total':<16} {format_bytes(mem['total'] or 0)}")
    if plan.activation_per_sample is not None:
        lines.append(f"  per sample       {format_bytes(plan.activation_per_sample)} of "
                     "activations")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)
