"""The optimizer base: declared hyperparameters, parameter groups, binding, one step, state_dict.

A first-order optimizer is a declaration, not code: its class body holds its docstring, a frozen
:class:`Hyperparameters` record (every option with its default and its check), the typed record of
its per-parameter state, and the pure functions that create and update that state (from
:mod:`nnxp.kernels.optimizers`). :class:`Optimizer` derives the rest from those declarations: the
constructor and its signature, option checks for the constructor, for every parameter group and
for ``load_state_dict``, the one dispatch loop of :meth:`Optimizer.step`, and saving and loading.

A new update rule therefore takes a kernel and a dozen declarative lines::

    @dataclass(frozen=True)
    class SignSGDHyperparameters(Hyperparameters):
        lr: float = hyperparameter(1e-3, check_nonneg)

    class SignSGD(Optimizer):
        \"\"\"θ ← θ − γ sign(g).\"\"\"
        Hyperparameters = SignSGDHyperparameters
        State = SGDState
        init_state = staticmethod(sgd_init)
        update = staticmethod(sign_sgd_update)   # (param, grad, state, *, lr, xp, inplace)
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from .. import backend
from ..kernels import clipping as clip_k
from ..kernels import optimizers as opt_k
from ..typing import Array
from ..validation import check_above_zero, check_flag, check_int, check_nonneg
from .flat import FlatUnit, flat_backend, unit_bounds
from .steptable import StepTable

ParamRef = tuple[Any, str]
"""``(layer, key)``: the parameter ``layer.params[key]`` with gradient ``layer.grads[key]``."""

Check = Callable[..., Any]
"""``check(value, *, argument) -> normalised value``, raising TypeError/ValueError that name
``argument`` (the functions of :mod:`nnxp.validation`)."""

_GROUP_OPTIONS = ("param_groups", "clip_norm", "clip_value")
_GROUP_OPTIONS_DOC = """    param_groups
        Per-group options: ``[{"params": selector or [(layer, key), ...], "lr": ..., ...}]``
        (see :mod:`nnxp.optim`).
    clip_norm, clip_value
        Clip the gradients by global norm / by value before each update (None: off).
"""


def hyperparameter(default: Any, check: Check) -> Any:
    """Declare one option of a :class:`Hyperparameters` record: its default and its check."""
    return dataclasses.field(default=default, metadata={"check": check})


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """Base of every optimizer's options record.

    Subclasses are frozen dataclasses whose fields are the optimizer's constructor options, in
    signature order, each declared with :func:`hyperparameter` (default and check). Building a
    record runs every field's check in this one place — the message names the optimizer (the
    class that holds the record), the option, the bound and the value — and stores the
    normalised values (floats, a ``(β₁, β₂)`` tuple). Constraints between options go in
    :meth:`validate`.
    """

    def __post_init__(self) -> None:
        owner = type(self).owner()
        for field in dataclasses.fields(self):
            check = field.metadata.get("check")
            if check is not None:
                value = check(getattr(self, field.name), argument=f"{owner}: {field.name}")
                object.__setattr__(self, field.name, value)
        self.validate(owner)

    def validate(self, owner: str) -> None:
        """Checks that involve several options (raise ValueError naming them); none here."""

    @classmethod
    def owner(cls) -> str:
        """The name messages use: the optimizer class the record is declared for."""
        return cls.__qualname__.split(".")[0].removesuffix("Hyperparameters")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in signature order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def as_dict(self) -> dict[str, Any]:
        """The options as a plain dict (the form of a parameter group)."""
        return {name: getattr(self, name) for name in self.names()}


class Optimizer:
    """Base class: options and parameter groups, binding, per-parameter state, clipping, step.

    Subclasses declare (see the module docstring):

    ``Hyperparameters``
        a frozen :class:`Hyperparameters` dataclass: the options, their defaults and checks; the
        constructor ``Subclass(*options, param_groups=None, clip_norm=None, clip_value=None)``
        is made from it, positional arguments in field order.
    ``State``
        the per-parameter state record (a dataclass; ``None`` marks a buffer not allocated).
    ``init_state(param, *, xp, **options) -> State``
        creates the state of one parameter on its first step.
    ``update(param, grad, state, *, xp, inplace, **options) -> (param, State)``
        one parameter's update, torch-exact, in place when ``inplace``.

    ``init_state`` and ``update`` receive the options their signatures name, read from the
    parameter's group on every step (so a schedule's edit of ``group["lr"]`` applies at once).
    An optimizer with its own algorithm (:class:`~nnxp.optim.LBFGS`) overrides :meth:`step`.

    Parameters
    ----------
    hyperparameters
        The options of the implicit default group (and the base for every user group).
    param_groups
        Optional list of dicts with ``"params"`` (a ``(layer, key) -> bool`` selector or a list of
        ``(layer, key)`` pairs) and option overrides; see :mod:`nnxp.optim`.
    clip_norm
        When given, rescale all gradients together before every update so that their global
        L2 norm is at most ``clip_norm`` (:func:`~nnxp.optim.clip_grad_norm_`).
    clip_value
        When given, clamp every gradient entry into ``[-clip_value, clip_value]`` before every
        update (:func:`~nnxp.optim.clip_grad_value_`); applied before ``clip_norm`` when both
        are set.
    """

    Hyperparameters: ClassVar[type[Hyperparameters]]
    State: ClassVar[Any]
    init_state: ClassVar[Callable[..., Any]]
    update: ClassVar[Callable[..., Any]]

    requires_closure: ClassVar[bool] = False
    """Whether :meth:`step` needs a closure that re-evaluates the loss (L-BFGS)."""

    group_options: ClassVar[tuple[str, ...]] = _GROUP_OPTIONS
    """The keyword-only constructor options besides the hyperparameters (none for L-BFGS)."""

    host_reads: ClassVar[tuple[str, ...] | None] = None
    """The host-side (Python) fields of the state records that :meth:`update` reads, so that
    their value enters the arithmetic (Adam's bias corrections read ``step``). A recorded
    step (``fit(capture=True)``) would freeze such a value, so the recording is refused for
    them; the other host fields are bookkeeping — the step count ``step`` — which a replay
    advances by hand (:meth:`advance`). ``None`` (an optimizer that does not say): every host
    field counts as read."""

    step_scalars: ClassVar[Callable[..., Any] | None] = None
    """``step_scalars(t, **options)``: the numbers of step ``t`` that :meth:`update` computes
    from the host-side ``step`` (Adam's bias corrections: :func:`nnxp.kernels.optimizers.
    adam_scalars`), when its update also takes them as ``scalars=`` 0-d arrays. A recorded
    step then reads them from a device table (:meth:`use_step_tables`, rows made by
    :meth:`step_scalar_rows`), and ``step`` becomes bookkeeping. None: the update has no such
    numbers, or cannot take them."""

    table_reads: ClassVar[tuple[str, ...]] = ("step",)
    """The host fields of :attr:`host_reads` that only enter :attr:`step_scalars`: with step
    tables on they are bookkeeping (NAdam adds its ``mu_product``)."""

    _update_options: ClassVar[tuple[str, ...]] = ()
    _scalar_options: ClassVar[tuple[str, ...]] = ()
    _init_options: ClassVar[tuple[str, ...]] = ()
    _bind_update: ClassVar[Callable[..., Callable[..., Any]]]
    _update_gated: ClassVar[bool] = False
    _read_options: ClassVar[Callable[[dict[str, Any]], Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = cls.__dict__.get("Hyperparameters")
        if declared is not None and "__init__" not in cls.__dict__:
            cls.__init__ = _constructor(cls, declared)  # type: ignore[method-assign]
        if cls.__doc__ and cls.group_options and "Parameters\n    ---" in cls.__doc__ \
                and "param_groups\n" not in cls.__doc__:
            # the keyword-only options every first-order optimizer shares, documented once
            cls.__doc__ = cls.__doc__.rstrip() + "\n" + _GROUP_OPTIONS_DOC
        declared = getattr(cls, "Hyperparameters", None)
        if declared is not None and hasattr(cls, "update") and hasattr(cls, "init_state"):
            # which options each function takes, worked out once per class, not per step
            names = declared.names()
            cls._update_options = _keywords(cls.update, names)
            cls._init_options = _keywords(cls.init_state, names)
            unused = set(names) - set(cls._update_options) - set(cls._init_options)
            if unused:
                raise TypeError(f"{cls.__name__} declares the option(s) {sorted(unused)}, "
                                "which neither its init_state nor its update accepts")
            if cls.step_scalars is not None:
                cls._scalar_options = _keywords(cls.step_scalars, names)
            cls._update_gated = "gate" in inspect.signature(cls.update).parameters
            cls._bind_update = _keyword_binder(cls.update, cls._update_options,
                                               gated=cls._update_gated)
            # a group's option values as one tuple, in the binder's order (C-level itemgetter)
            read = cls._update_options
            cls._read_options = (operator.itemgetter(*read) if len(read) > 1
                                 else lambda group: tuple(group[name] for name in read))

    def __init__(
        self,
        *args: Any,
        param_groups: Sequence[dict[str, Any]] | None = None,
        clip_norm: float | None = None,
        clip_value: float | None = None,
        **hyperparameters: Any,
    ) -> None:
        owner = type(self).__name__
        for name, value in (("param_groups", param_groups), ("clip_norm", clip_norm),
                            ("clip_value", clip_value)):
            if value is not None and name not in self.group_options:
                raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}")
        declared = getattr(type(self), "Hyperparameters", None)
        if declared is None:
            raise TypeError(f"{owner} declares no Hyperparameters record; see nnxp.optim.base")
        names = declared.names()
        if len(args) > len(names):
            raise TypeError(f"{owner}() takes at most {len(names)} positional option(s) "
                            f"({', '.join(names)}), got {len(args)}")
        for name, value in zip(names, args):
            if name in hyperparameters:
                raise TypeError(f"{owner}() got multiple values for argument {name!r}")
            hyperparameters[name] = value
        unknown = sorted(set(hyperparameters) - set(names))
        if unknown:
            raise TypeError(f"{owner}() got unexpected option(s) {unknown}; valid options are "
                            f"{list(names)}")
        # A learning rate of 0 is accepted where it has a use (a group frozen on purpose, a
        # schedule that reached 0, load_state_dict), but as the constructor's lr it is a mistake.
        if "lr" in hyperparameters:
            check_above_zero(hyperparameters["lr"], argument=f"{owner}: lr")
        self.defaults: dict[str, Any] = self._options(hyperparameters)
        self.clip_norm = (None if clip_norm is None
                          else check_above_zero(clip_norm, argument=f"{owner}: clip_norm"))
        self.clip_value = (None if clip_value is None
                           else check_above_zero(clip_value, argument=f"{owner}: clip_value"))
        self._selectors: list[Any] = []
        groups: list[dict[str, Any]] = []
        if param_groups is not None:
            if isinstance(param_groups, dict) or not isinstance(param_groups, Sequence):
                raise TypeError(f"{owner}: param_groups must be a list of dicts, got "
                                f"{type(param_groups).__name__}")
            for i, spec in enumerate(param_groups):
                groups.append(self._make_group(i, spec))
        groups.append({**self.defaults, "params": []})
        self.param_groups: list[dict[str, Any]] = groups
        self.state: dict[int, Any] = {}
        self._refs: list[ParamRef] = []
        self._ref_ids: list[tuple[int, str]] = []
        self._inplace: list[bool] = []
        # Per group, the records ``(layer, key, index, xp, inplace)`` of its parameters, built
        # once by bind() so that step() does no lookups beyond the arrays themselves.
        self._plan: list[list[tuple[Any, str, int, Any, bool]]] = []
        self._pending: dict[int, dict[str, Any]] | None = None
        self.iterations = 0
        self.flat: bool | None = None
        """Grouped updates over flat buffers: None (the default) where the backend gains from
        them (:data:`nnxp.optim.flat.FLAT_BACKENDS`), False never; see :mod:`nnxp.optim.flat`."""
        self._update_block: int | None = None
        # use_step_tables: None (off) or the StepTable of each flat unit, by id
        self._step_tables: dict[int, StepTable] | None = None
        # Per group, its update units (built by bind): FlatUnit for the
        # parameters living in flat buffers, the plan's record for those updated one by one.
        self._units: list[list[Any]] | None = None
        self._units_flat: bool | None = None  # the value of flat the units were built for

    @property
    def update_block(self) -> int | None:
        """Elements per block of a flat unit's update: None (the default) for the backend's
        choice (blocks of 256 KiB on a CPU, one piece on a GPU:
        :func:`nnxp.backend.update_block_bytes`), 0 for one piece, n > 0 for blocks of n
        elements. The result is the same bit for bit; only speed and temporaries change."""
        return self._update_block

    @update_block.setter
    def update_block(self, value: int | None) -> None:
        self._update_block = None if value is None else check_int(
            value, argument=f"{type(self).__name__}.update_block", low=0)

    # --- options --------------------------------------------------------------------------

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Options checked and normalised by the declared record, as a group dict."""
        return type(self).Hyperparameters(**options).as_dict()

    def _make_group(self, i: int, spec: Any) -> dict[str, Any]:
        owner = type(self).__name__
        if not isinstance(spec, dict) or "params" not in spec:
            raise ValueError(f"{owner}: param_groups[{i}] must be a dict with a 'params' entry "
                             f"(a (layer, key) -> bool selector or a list of (layer, key) pairs), "
                             f"got {spec!r}")
        unknown = sorted(set(spec) - set(self.defaults) - {"params"})
        if unknown:
            raise ValueError(f"{owner}: param_groups[{i}] has unknown option(s) {unknown}; valid "
                             f"options are {sorted(self.defaults)}")
        selector = spec["params"]
        if callable(selector):
            self._selectors.append(selector)
        else:
            pairs = list(selector)
            for pair in pairs:
                if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], str)):
                    raise ValueError(f"{owner}: param_groups[{i}]['params'] must hold (layer, "
                                     f"key) pairs, got {pair!r}")
            self._selectors.append(pairs)
        options = self._options({**self.defaults,
                                 **{k: v for k, v in spec.items() if k != "params"}})
        return {**options, "params": []}

    @property
    def lr(self) -> float:
        """The default group's learning rate; setting it sets every group's."""
        return float(self.param_groups[-1]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        value = check_nonneg(value, argument=f"{type(self).__name__}: lr")
        for group in self.param_groups:
            group["lr"] = value

    def get_config(self) -> dict[str, Any]:
        """The constructor's options as JSON-able values (parameter groups are not included:
        their selectors are code; :meth:`state_dict` records each group's options and members)."""
        config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.defaults.items()}
        if self.clip_norm is not None:
            config["clip_norm"] = self.clip_norm
        if self.clip_value is not None:
            config["clip_value"] = self.clip_value
        return config

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.param_groups[-1].items()
                         if k not in ("params", "initial_lr"))
        extra = len(self.param_groups) - 1
        more = f", param_groups=<{extra} group(s)>" if extra else ""
        return f"{type(self).__name__}({opts}{more})"

    # --- binding --------------------------------------------------------------------------

    def bind(self, params: Sequence[ParamRef]) -> None:
        """Attach to ``params`` (pairs of ``(layer, key)``) and sort them into the groups.

        State is kept when the pairs are the same as at the previous bind (so ``fit`` can be
        called again), and dropped otherwise; it is allocated lazily on the next step.
        """
        refs = list(params)
        owner = type(self).__name__
        for ref in refs:
            if not (isinstance(ref, tuple) and len(ref) == 2 and hasattr(ref[0], "params")
                    and ref[1] in ref[0].params):
                raise ValueError(f"{owner}.bind expects (layer, key) pairs with key in "
                                 f"layer.params, got {ref!r}")
        ids = [(id(layer), key) for layer, key in refs]
        self._release_units()
        if ids != self._ref_ids:
            self.state = {}
        self._refs, self._ref_ids = refs, ids
        self._inplace = [backend.supports_inplace(xp_of(layer, key)) for layer, key in refs]
        for group in self.param_groups:
            group["params"] = []
        known = set(ids)
        for i, sel in enumerate(self._selectors):
            if not callable(sel) and not isinstance(sel, _Positions):
                missing = [p for p in sel if (id(p[0]), p[1]) not in known]
                if missing:
                    raise ValueError(f"{owner}: param_groups[{i}] names {missing[0]!r}, which is "
                                     "not among the parameters being bound")
        members: list[list[int]] = [[] for _ in self.param_groups]
        for i, ref in enumerate(refs):
            g = self._group_of(ref, i)
            self.param_groups[g]["params"].append(ref)
            members[g].append(i)
        self._plan = [[(refs[i][0], refs[i][1], i, xp_of(*refs[i]), self._inplace[i])
                       for i in group_members] for group_members in members]
        if self._pending is not None:
            self._materialize()
        if type(self).step is Optimizer.step:
            # the parameters move into their flat buffers now, not at the first step, so
            # that every step (a recorded one included) finds the same arrays
            self._units = self._build_units()

    def _group_of(self, ref: ParamRef, position: int) -> int:
        layer, key = ref
        for i, sel in enumerate(self._selectors):
            if isinstance(sel, _Positions):
                if position in sel:
                    return i
            elif callable(sel):
                if sel(layer, key):
                    return i
            elif any(lay is layer and k == key for lay, k in sel):
                return i
        return len(self.param_groups) - 1

    def _require_bound(self) -> None:
        if not self._refs:
            raise RuntimeError(f"{type(self).__name__}.step() before bind(): call "
                               "optimizer.bind(model.parameters()) or pass it to fit()")

    # --- the step -------------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None, *,
             gate: Array | None = None) -> Any:
        """Apply one update to every bound parameter from its current gradient.

        ``closure``, when given, is called first (it should recompute the loss and fill the
        gradients) and its value is returned, as in torch; first-order optimizers do not need it.

        ``gate``, a 0-d boolean array on the parameters' device, makes the step a no-op on the
        device where it is false, without a host read (torch's fused-Adam ``found_inf``): the
        gradients are zeroed where it is shut (:func:`gated_gradient`, which replaces
        ``layer.grads[key]``, so it may hold inf/NaN) and the kernels leave every parameter and
        state buffer as it was. With the gate true the result is bit-identical to ``step()``.
        The host-side step counts still advance; call :meth:`rewind` with the number of skipped
        steps once it is known.
        """
        loss = closure() if closure is not None else None
        if not self._refs:
            self._require_bound()
        if self._pending is not None:
            self._materialize()
        units_of_groups = self._layout()
        if self.clip_value is not None or self.clip_norm is not None:
            self._clip(units_of_groups)
        states = self.state
        cls = type(self)
        bind, read, init, init_names = (cls._bind_update, cls._read_options, cls.init_state,
                                        cls._init_options)
        for group, units in zip(self.param_groups, units_of_groups):
            if not units:
                continue
            # the group's options are read on every step (schedules and callbacks edit them
            # between steps) and bound once for all of the group's parameters
            update = bind(*read(group))
            for unit in units:
                if type(unit) is FlatUnit:
                    # all of the unit's parameters in one pass per operation (block by block
                    # on a CPU: FlatUnit.update)
                    block = self._block_of(unit)
                    if not self._grouped(unit, group):
                        # state that cannot be grouped (loaded with unequal step counts, say):
                        # one by one, in place on the views, until the next bind
                        self._update_each(unit.members, group, update, gate)
                        continue
                    table = None
                    unit_update = update
                    if self._step_tables is not None:  # this step's numbers from the device
                        table = self._table_of(unit, group)
                        unit_update = _with_scalars(cls, group, table.scalars())
                    if gate is not None:  # the whole unit gated (see gated_gradient)
                        unit.gate_gradients(gate)
                        unit.update(functools.partial(_gated_update, cls, unit_update), block,
                                    unit.xp, True, gate)
                    else:
                        unit.update(unit_update, block, unit.xp, True)
                    if table is not None:
                        table.advance()
                    unit.after_update(states, cls.State)
                    continue
                layer, key, i, xp, inplace = unit
                try:
                    grad = layer.grads[key]
                except KeyError:
                    raise _no_gradient(layer, key) from None
                params = layer.params
                param = params[key]
                state = states.get(i)
                if state is None:
                    state = init(param, xp=xp, **{name: group[name] for name in init_names})
                if gate is not None:  # one update unit, gated (see gated_gradient)
                    grad = gated_gradient(layer, key, gate, xp)
                    new, states[i] = _gated_update(cls, update, param, grad, state, xp,
                                                   inplace, gate)
                else:
                    new, states[i] = update(param, grad, state, xp, inplace)
                if new is not param:
                    params[key] = new
        self.iterations += 1
        return loss

    def prepare_state(self) -> None:
        """Gather state records given from outside (``load_state_dict``, a rebuilt layout) into
        the flat units now, as the next :meth:`step` would first: so that a recorded step's
        check (``fit(capture=True)``) sees the arrays the steps will keep using, not a one-off
        replacement by the step that gathers them."""
        if self._pending is not None:
            self._materialize()
        for group, units in zip(self.param_groups, self._units or ()):
            for unit in units:
                if type(unit) is FlatUnit and any(
                        self.state.get(i) is not None for _, _, i in unit.members):
                    self._grouped(unit, group)

    def _grouped(self, unit: FlatUnit, group: dict[str, Any]) -> bool:
        """Whether ``unit``'s flat record is ready for an update over the whole unit (made or
        gathered now if needed); when it cannot be, the unit is marked to update its
        parameters one by one until the next bind."""
        cls = type(self)
        if unit.grouped and unit.prepare_state(self.state, cls.State, cls.init_state, group,
                                               cls._init_options):
            return True
        unit.grouped = False
        return False

    def rewind(self, steps: int) -> None:
        """Take back the host-side step counts of ``steps`` gated steps that were skipped.

        A gated :meth:`step` left the arrays alone but advanced ``iterations`` and each record's
        ``step`` (and NAdam's ``mu_product``, recomputed by the optimizer's ``rewind_state``);
        a record that goes back to step 0 is dropped, so that the next step creates it afresh
        exactly as torch would (a momentum buffer starts as a copy of the gradient).
        """
        if steps <= 0:
            return
        self.iterations = max(0, self.iterations - steps)
        group_of = self._groups_by_index()
        for i, record in list(self.state.items()):
            count = getattr(record, "step", None)
            if not isinstance(count, int):
                continue
            if count - steps <= 0:
                del self.state[i]
                continue
            record.step = count - steps
            type(self).rewind_state(record, group_of[i])
        for group_units in getattr(self, "_units", None) or ():
            for unit in group_units:
                if type(unit) is FlatUnit:  # its flat record still holds the old counts
                    unit.forget_state()

    def reads_host_state(self) -> tuple[str, ...] | None:
        """The host fields this optimizer's update reads with its current options
        (:attr:`host_reads`; ``None``: all of them; not ``step`` while its numbers come from
        step tables, :meth:`use_step_tables`)."""
        reads = type(self).host_reads
        if reads is not None and self._step_tables is not None and self._tables_cover():
            return tuple(name for name in reads if name not in type(self).table_reads)
        return reads

    def _tables_cover(self) -> bool:
        """Whether step tables serve every update of a step: every parameter in a grouped flat
        unit of float32 or float64 (a parameter updated on its own computes its numbers on the
        host; a 0-d half-precision array would round them otherwise than a Python float does)."""
        units = self._units
        return units is not None and all(
            type(unit) is FlatUnit and unit.grouped
            and backend.dtype_name(unit.dtype) in ("float32", "float64")
            for group_units in units for unit in group_units)

    # --- step tables (a recorded step that reads the step count) ----------------------------

    def use_step_tables(self, on: bool = True) -> bool:
        """Read the numbers the update computes from the step count (Adam's bias corrections,
        :attr:`step_scalars`) from a table on the device, indexed by a device counter
        (:mod:`nnxp.optim.steptable`), instead of computing them on the host: the same numbers,
        bit for bit, and no host value a recorded step would freeze. ``fit(capture=True)``
        turns it on while it records. Returns whether this optimizer can (it has
        :attr:`step_scalars`). ``on=False`` drops the tables. Only grouped flat units of
        float32 or float64 read tables; while any other unit exists, :meth:`reads_host_state`
        still names ``step``, so a recording is refused rather than frozen."""
        check_flag(on, argument="on")
        if not on or type(self).step_scalars is None:
            self._step_tables = None
            return False
        if self._step_tables is None:
            self._step_tables = {}
        return True

    def refresh_step_tables(self) -> None:
        """Refill the step tables that the next step would find out of date (another step
        count, other options, rows used up), in place, now: before a step is recorded, so that
        the recording reads them and copies nothing from the host."""
        if self._step_tables is None:
            return
        for group, units in zip(self.param_groups, self._units or ()):
            for unit in units:
                if type(unit) is FlatUnit and unit.state is not None and unit.grouped:
                    self._table_of(unit, group)

    def step_tables(self) -> list[StepTable]:
        """The step tables in use (empty when :meth:`use_step_tables` is off)."""
        return list((self._step_tables or {}).values())

    @property
    def uses_step_tables(self) -> bool:
        """Whether :meth:`use_step_tables` is on."""
        return self._step_tables is not None

    def host_counts(self) -> Any:
        """The host values a :meth:`step` moves — ``iterations``, every state record's host
        fields (``step``, NAdam's running product), the step tables' host counters — for
        :meth:`restore_host_counts` (a recording runs a step's Python once without its device
        work, and takes back what that run moved exactly, not by undoing a step)."""
        records = list(self.state.values()) + [
            unit.state for group_units in self._units or () for unit in group_units
            if type(unit) is FlatUnit and unit.state is not None]
        return (self.iterations,
                [(r, [(f.name, getattr(r, f.name)) for f in dataclasses.fields(r)
                      if not backend.is_array(getattr(r, f.name))])
                 for r in records if dataclasses.is_dataclass(r)],
                [(t, t.host_k) for t in self.step_tables()])

    def restore_host_counts(self, saved: Any) -> None:
        """Put back what :meth:`host_counts` saved."""
        self.iterations, records, tables = saved
        for record, fields in records:
            for name, value in fields:
                setattr(record, name, value)
        for table, host_k in tables:
            table.host_k = host_k

    def _table_of(self, unit: FlatUnit, group: dict[str, Any]) -> StepTable:
        """``unit``'s step table, valid for its next step (refilled in place when not)."""
        tables = self._step_tables
        assert tables is not None
        table = tables.get(id(unit))
        if table is None or table.xp is not unit.xp:
            table = tables[id(unit)] = StepTable(type(self).step_scalar_rows, unit.xp,
                                                 unit.dtype, unit.device)
        options = {name: group[name] for name in type(self)._scalar_options}
        if not table.current(unit.state.step, options):
            table.fill(unit.state, options)
        return table

    @classmethod
    def step_scalar_rows(cls, record: Any, count: int,
                         options: dict[str, Any]) -> list[tuple[float, ...]]:
        """:attr:`step_scalars` of the ``count`` steps after ``record``'s (a step table's
        rows). An update whose numbers depend on more host state than ``step`` (NAdam's
        running product) overrides it to carry that state from row to row."""
        fn = cls.step_scalars
        assert fn is not None
        return [fn(record.step + 1 + j, **options) for j in range(count)]

    @staticmethod
    def advance_state(record: Any, steps: int, options: dict[str, Any]) -> None:
        """After :meth:`advance` moved ``record.step`` by ``steps``: move the other host fields
        that follow the step count as that many steps would (none for most optimizers; NAdam's
        running product)."""

    def advance(self, steps: int = 1, *, replayed: bool = False) -> None:
        """Advance the host-side step counts as ``steps`` calls of :meth:`step` would:
        ``iterations`` and each state record's ``step`` (the flat units' records included).
        ``replayed``: the steps were replays of a recorded step, which moved the step tables'
        device counters already (their host mirrors move with them); otherwise the tables are
        refilled at the next step.

        For a recorded step that is replayed (``fit(capture=True)``): the replay runs the
        device work only, so the Python counts are moved on here. Only valid when the update
        does not read ``step`` (:meth:`reads_host_state`).
        """
        self.iterations += steps
        cls = type(self)
        group_of = self._groups_by_index()
        for i, record in self.state.items():
            if isinstance(getattr(record, "step", None), int):
                record.step += steps
                cls.advance_state(record, steps, group_of[i])
        for group, group_units in zip(self.param_groups, getattr(self, "_units", None) or ()):
            for unit in group_units:
                if type(unit) is FlatUnit and unit.advance(steps):
                    cls.advance_state(unit.state, steps, group)
        if replayed:  # the replays moved the device counters: the host mirrors follow
            for table in (self._step_tables or {}).values():
                table.host_k += steps
        self.refresh_step_tables()  # out of date or used up: refilled now, between steps

    def _groups_by_index(self) -> dict[int, dict[str, Any]]:
        """The parameter group of each bound parameter, by its index in the state dict."""
        return {i: group for group, records in zip(self.param_groups, self._plan)
                for _, _, i, _, _ in records}

    @staticmethod
    def rewind_state(record: Any, options: dict[str, Any]) -> None:
        """Recompute the host-side fields of ``record`` that depend on its (rewound) ``step``;
        nothing besides ``step`` for most optimizers (NAdam overrides it)."""


    def flat_gradients(self) -> tuple[list[Array], set[int]]:
        """The flat gradient buffers that hold their members' current gradients
        (:meth:`FlatUnit.holds_gradients`), and the ids of the members' gradient arrays they
        cover: a caller that reads every gradient (the divergence gate of ``fit``) reads each
        such buffer once instead of each parameter's view of it — one reduction per unit
        rather than per parameter, over a contiguous 1-D array."""
        buffers: list[Array] = []
        covered: set[int] = set()
        for group_units in self._units or ():
            for unit in group_units:
                if type(unit) is FlatUnit and unit.holds_gradients():
                    buffers.append(unit.grad)
                    covered.update(map(id, unit.grad_views))
        return buffers, covered

    def _update_each(self, members: list[tuple[Any, str, int]], group: dict[str, Any],
                     update: Callable[..., Any], gate: Array | None = None) -> None:
        """The per-parameter update of ``members`` (a unit whose state cannot be grouped)."""
        cls = type(self)
        for layer, key, i in members:
            xp = xp_of(layer, key)
            param = layer.params[key]
            state = self.state.get(i)
            if state is None:
                state = cls.init_state(param, xp=xp,
                                       **{name: group[name] for name in cls._init_options})
            if gate is not None:
                grad = gated_gradient(layer, key, gate, xp)
                _, self.state[i] = _gated_update(cls, update, param, grad, state, xp, True,
                                                 gate)
            else:
                _, self.state[i] = update(param, gradient(layer, key), state, xp, True)

    # --- flat buffers -------------------------------------------------------------------

    def _layout(self) -> list[list[Any]]:
        """The update units of every group, checked (and repaired) for this step."""
        units = self._units
        if units is not None and self.flat is not self._units_flat:
            units = None  # opt.flat changed since the layout was built
        if units is not None:
            try:
                for group_units in units:
                    for unit in group_units:
                        if type(unit) is FlatUnit and not unit.sync():
                            units = None
                            break
                    if units is None:
                        break
            except KeyError as exc:
                missing = next((layer, key) for layer, key in self._refs
                               if key == exc.args[0] and key not in layer.grads)
                raise _no_gradient(*missing) from None
        if units is None:
            self._release_units()
            units = self._units = self._build_units()
        return units

    def _build_units(self) -> list[list[Any]]:
        """Per group: one FlatUnit per (namespace, dtype, device) of its in-place parameters
        (when :attr:`flat` allows), the plan's per-parameter records for the rest."""
        result: list[list[Any]] = []
        for records in self._plan:
            units: list[Any] = []
            buckets: dict[tuple[Any, ...], list[tuple[Any, str, int]]] = {}
            for record in records:
                layer, key, i, xp, inplace = record
                if inplace and self.flat is not False and flat_backend(xp):
                    p = layer.params[key]
                    buckets.setdefault((id(xp), str(p.dtype), str(p.device)), []).append(
                        (layer, key, i))
                else:
                    units.append(record)
            for members in buckets.values():
                for part in _flat_chunks(members):
                    units.append(FlatUnit(part, xp_of(part[0][0], part[0][1])))
            result.append(units)
        self._units_flat = self.flat
        return result

    def update_sizes(self) -> list[int]:
        """The number of elements each update call of a step runs over: one entry per flat
        unit (all of its parameters, or one block of them: :meth:`FlatUnit.update`) and per
        parameter updated on its own. An update's
        temporaries are arrays of these sizes, so a memory plan takes the largest of them,
        not the largest parameter, where parameters share a flat buffer."""
        units = self._units
        if units is None:
            units = [list(records) for records in self._plan]
        return [min(sum(unit.sizes), self._block_of(unit) or sum(unit.sizes))
                if type(unit) is FlatUnit else math.prod(unit[0].params[unit[1]].shape)
                for group_units in units for unit in group_units]

    def _block_of(self, unit: FlatUnit) -> int | None:
        """Elements per block of ``unit``'s update (:attr:`update_block`), None for one piece."""
        setting = self.update_block
        return unit.default_block if setting is None else (setting or None)

    def _release_units(self) -> None:
        for group_units in getattr(self, "_units", None) or ():
            for unit in group_units:
                if type(unit) is FlatUnit:
                    unit.release()
        self._units = None
        if self._step_tables is not None:  # keyed on the units: made afresh for new ones
            self._step_tables.clear()

    def _clip(self, units_of_groups: list[list[Any]]) -> None:
        # the gradients the update will read: a flat unit's views, else layer.grads
        flat = {i: view for units in units_of_groups for unit in units
                if type(unit) is FlatUnit
                for (_, _, i), view in zip(unit.members, unit.grad_views)}
        grads = [flat[i] if i in flat else gradient(layer, key)
                 for i, (layer, key) in enumerate(self._refs)]
        xp = xp_of(*self._refs[0])
        inplace = all(self._inplace)
        if self.clip_value is not None:
            grads = clip_k.clip_by_value(grads, self.clip_value, xp=xp, inplace=inplace)
        if self.clip_norm is not None:
            grads, _ = clip_k.clip_by_global_norm(grads, self.clip_norm, xp=xp, inplace=inplace)
        for i, ((layer, key), g) in enumerate(zip(self._refs, grads)):
            view = flat.get(i)
            if view is not None and g is not view:
                view[...] = g
            layer.grads[key] = g if view is None else view  # the clipped gradients, as read

    # --- saving and loading ---------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state as plain Python numbers and NumPy arrays (copies).

        ``{"optimizer": name, "iterations": int, "param_groups": [options..., "params": [indices
        into the bound parameters]], "state": {index: {name: ndarray | number}}}``; the indices
        follow the order of the pairs given to :meth:`bind` (``model.parameters()``), and a
        state buffer that was never allocated (``None`` in the record) is left out.
        """
        index = {ids: i for i, ids in enumerate(self._ref_ids)}
        groups = []
        for group in self.param_groups:
            entry = {k: v for k, v in group.items() if k != "params"}
            entry["params"] = [index[(id(lay), key)] for lay, key in group["params"]]
            groups.append(entry)
        state: dict[int, dict[str, Any]]
        if self._pending is not None:
            state = {i: dict(s) for i, s in self._pending.items()}
        else:
            state = self._export_state()
        return {"optimizer": type(self).__name__, "iterations": self.iterations,
                "param_groups": groups, "state": state}

    def _export_state(self) -> dict[int, dict[str, Any]]:
        """Every state record as ``{name: NumPy copy | number}``, unallocated buffers left out."""
        return {i: {name: (backend.to_numpy(v).copy() if backend.is_array(v) else v)
                    for name, v in record_items(record) if v is not None}
                for i, record in self.state.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore options, step counts and buffers saved by :meth:`state_dict`.

        The arrays may come from any backend (or from an NPZ file as NumPy arrays); they are
        moved onto the parameters' backend, device and dtype when the optimizer is next bound or
        stepped. Integer-like string keys (as JSON leaves them) are accepted.
        """
        owner = type(self).__name__
        name = state_dict.get("optimizer", owner)
        if name != owner:
            raise ValueError(f"{owner}.load_state_dict got the state of a {name} optimizer")
        groups = state_dict.get("param_groups", [])
        if len(groups) > 1 and len(self.param_groups) == 1:
            # an optimizer rebuilt from its config: recreate the saved groups by position
            self._selectors = [_Positions(int(i) for i in g.get("params", []))
                               for g in groups[:-1]]
            self.param_groups = [{**self.defaults, "params": []} for _ in groups]
            if self._refs:
                self.bind(self._refs)
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{owner}.load_state_dict: the saved state has {len(groups)} "
                             f"parameter group(s), this optimizer has {len(self.param_groups)}")
        checked = []
        for saved in groups:
            opts = {k: v for k, v in saved.items() if k in self.defaults}
            merged = self._options({**self.defaults, **opts})
            if "initial_lr" in saved:
                merged["initial_lr"] = float(saved["initial_lr"])
            checked.append(merged)
        for group, opts in zip(self.param_groups, checked):
            group.update(opts)
        self.iterations = int(state_dict.get("iterations", 0))
        self._pending = {int(i): {name: (backend.to_numpy(v).copy() if backend.is_array(v)
                                         else v) for name, v in s.items()}
                         for i, s in state_dict.get("state", {}).items()}
        self.state = {}
        if self._refs:
            self._materialize()

    def _materialize(self) -> None:
        """Move the state of :meth:`load_state_dict` onto the bound parameters' backend."""
        pending, self._pending = self._pending or {}, None
        owner = type(self).__name__
        self.state = {}
        fields = [f.name for f in dataclasses.fields(type(self).State)]
        for i, saved in pending.items():
            if not 0 <= i < len(self._refs):
                raise ValueError(f"{owner}.load_state_dict: state for parameter {i}, but "
                                 f"{len(self._refs)} parameter(s) are bound")
            layer, key = self._refs[i]
            param = layer.params[key]
            xp = xp_of(layer, key)
            unknown = sorted(set(saved) - set(fields))
            if unknown:
                raise ValueError(f"{owner}.load_state_dict: the state of parameter {i} has "
                                 f"unknown entries {unknown}; {owner} keeps {list(fields)}")
            entry: dict[str, Any] = {}
            for name, value in saved.items():
                if backend.is_array(value) and value.ndim > 0:
                    if tuple(value.shape) != tuple(param.shape):
                        raise ValueError(f"{owner}.load_state_dict: {name!r} of parameter {i} "
                                         f"has shape {tuple(value.shape)}, the parameter "
                                         f"{tuple(param.shape)}")
                    entry[name] = backend.asarray(value, dtype=param.dtype, xp=xp,
                                                  device=param.device, copy=True)
                elif backend.is_array(value):
                    entry[name] = value.item()
                else:
                    entry[name] = value
            try:
                self.state[i] = type(self).State(**entry)
            except TypeError:
                raise ValueError(f"{owner}.load_state_dict: the state of parameter {i} lacks "
                                 f"entries; it has {sorted(entry)}, {owner} keeps "
                                 f"{list(fields)}") from None


class _Positions(frozenset[int]):
    """A group selector by position in the bound list (groups restored from a state_dict)."""


def xp_of(layer: Any, key: str) -> Any:
    """The array namespace of ``layer.params[key]`` (the layer's own ``xp`` when it has one)."""
    xp = getattr(layer, "xp", None)
    return xp if xp is not None else backend.namespace_of(layer.params[key])


def gradient(layer: Any, key: str) -> Array:
    """``layer.grads[key]``, or a RuntimeError saying that backward has not run."""
    try:
        return layer.grads[key]
    except KeyError:
        raise _no_gradient(layer, key) from None


def record_items(record: Any) -> list[tuple[str, Any]]:
    """A state record's ``(field name, value)`` pairs, without copying (unlike
    ``dataclasses.asdict``, which deep-copies every array)."""
    return [(f.name, getattr(record, f.name)) for f in dataclasses.fields(record)]


def gated_gradient(layer: Any, key: str, gate: Array, xp: Any) -> Array:
    """``layer.grads[key]`` with its entries zeroed where ``gate`` is false, stored back in
    ``layer.grads`` (so that the ungated array is released before the update allocates its
    temporaries: the peak memory of a gated step is that of an ungated one)."""
    grad = opt_k.gate_gradient(layer.grads[key], gate, xp=xp)
    layer.grads[key] = grad
    return grad


def _gated_update(cls: Any, update: Callable[..., Any], param: Array, grad: Array, state: Any,
                  xp: Any, inplace: bool, gate: Array) -> tuple[Array, Any]:
    """One gated update unit: the kernel's own ``gate`` where it takes one; otherwise (a user's
    kernel) the update runs on copies and ``where(gate, new, old)`` selects, per array."""
    if cls._update_gated:
        return update(param, grad, state, xp, inplace, gate)
    old = [(name, v) for name, v in record_items(state) if backend.is_array(v)] \
        if dataclasses.is_dataclass(state) else []
    copies = {name: xp.asarray(v, copy=True) for name, v in old}
    before = xp.asarray(param, copy=True)
    new, new_state = update(param, grad, state, xp, inplace)
    new = _select(new, before, gate, xp, inplace)
    for name, v in copies.items():
        setattr(new_state, name, _select(getattr(new_state, name), v, gate, xp, inplace))
    return new, new_state


def _with_scalars(cls: Any, group: dict[str, Any], scalars: tuple[Array, ...]
                  ) -> Callable[..., Any]:
    """``call(param, grad, state, xp, inplace, gate=None)`` (as the bound update) passing this
    step's numbers as ``scalars=`` (:meth:`Optimizer.use_step_tables`)."""
    options = {name: group[name] for name in cls._update_options}
    fn = cls.update

    def call(param: Array, grad: Array, state: Any, xp: Any, inplace: bool,
             gate: Array | None = None) -> Any:
        return fn(param, grad, state, **options, xp=xp, inplace=inplace, gate=gate,
                  scalars=scalars)

    return call


def _select(new: Array, old: Array, gate: Array, xp: Any, inplace: bool) -> Array:
    chosen = xp.where(gate, new, old)
    if inplace:
        new[...] = chosen
        return new
    return chosen


def _flat_chunks(members: list[tuple[Any, str, int]]) -> list[list[tuple[Any, str, int]]]:
    """The members of one flat bucket in units (:func:`nnxp.optim.flat.unit_bounds`)."""
    sizes = [math.prod(layer.params[key].shape) for layer, key, _ in members]
    return [members[lo:hi] for lo, hi in unit_bounds(sizes)]


def _no_gradient(layer: Any, key: str) -> RuntimeError:
    return RuntimeError(f"no gradient for {layer!r}.params[{key!r}]: run backward before step()")


def _keywords(fn: Callable[..., Any], names: Sequence[str]) -> tuple[str, ...]:
    """The options among ``names`` that ``fn`` takes as keywords."""
    accepted = inspect.signature(fn).parameters
    return tuple(name for name in names if name in accepted)


def _keyword_binder(fn: Callable[..., Any], names: Sequence[str], *,
                    gated: bool = False) -> Callable[..., Any]:
    """``bind(*values)`` returning ``call(param, grad, state, xp, inplace)``, which calls ``fn``
    with the options ``names`` as literal keywords (and ``call(..., gate)`` passing ``gate=``
    when ``gated``: ``fn`` takes a gate).

    The step loop calls the kernel once per parameter; passing the options as ``**options``
    costs about a microsecond per call more than literal keywords (CPython builds and unpacks
    the dict each time), which is a measurable share of a small MLP's step. So, as dataclasses
    do for ``__init__``, the caller is written once per optimizer class from the declared option
    names (identifiers, checked by the dataclass) and compiled.
    """
    for name in names:
        if not name.isidentifier():
            raise ValueError(f"option name {name!r} is not an identifier")
    keywords = "".join(f"{name}={name}, " for name in names)
    gate_arg, gate_kw = (", gate=None", ", gate=gate") if gated else ("", "")
    source = (f"def bind({', '.join(names)}):\n"
              f"    def call(param, grad, state, xp, inplace{gate_arg}):\n"
              f"        return fn(param, grad, state, {keywords}xp=xp, inplace=inplace"
              f"{gate_kw})\n"
              f"    return call\n")
    namespace: dict[str, Any] = {"fn": fn}
    exec(source, namespace)  # noqa: S102 - source built from checked identifiers only
    return namespace["bind"]


def _constructor(cls: type[Optimizer], declared: type[Hyperparameters]) -> Callable[..., None]:
    """``cls.__init__`` with the signature of the declared options (for help() and IDEs)."""

    def __init__(self: Optimizer, *args: Any, **kwargs: Any) -> None:
        Optimizer.__init__(self, *args, **kwargs)

    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                 default=f.default)
               for f in dataclasses.fields(declared)]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
               for name in cls.group_options]
    __init__.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__doc__ = f"Create a {cls.__name__}; the options are documented on the class."
    return __init__
