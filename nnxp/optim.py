"""Optimizer objects: they own per-parameter state and call the update kernels.

An optimizer is bound to a model's parameters by ``Sequential.fit`` (or by calling
``optimizer.bind(model.parameters())``); ``step()`` then reads every ``layer.grads[key]`` and
updates ``layer.params[key]`` — in place where the backend's arrays are mutable (numpy, cupy,
torch), functionally elsewhere. Every optimizer follows the update rule and the defaults of its
``torch.optim`` namesake; the equations are in the kernels' docstrings
(:mod:`nnxp.kernels.optimizers`) and in ``docs/optimizers.md``.

Parameter groups
----------------
Every optimizer takes ``param_groups=[{...}, ...]``: a list of dicts, each with a ``"params"``
entry that says which parameters belong to the group, and any of the optimizer's options to
override for them::

    Adam(lr=1e-3, weight_decay=1e-2, param_groups=[
        {"params": lambda layer, key: key == "b", "weight_decay": 0.0},     # a selector
        {"params": [(model.layers[0], "W")], "lr": 1e-4},                   # explicit pairs
    ])

``"params"`` is either a callable ``(layer, key) -> bool`` or a list of ``(layer, key)`` pairs.
When the optimizer is bound, each parameter joins the *first* group that claims it; the rest form
a last, implicit group with the constructor's options. After binding, ``optimizer.param_groups``
is a list of dicts (the user's groups in order, then the default group), each holding the options
(``"lr"``, ``"weight_decay"``, ...) and ``"params"``, the list of ``(layer, key)`` pairs in it.
Schedules edit ``group["lr"]``; ``optimizer.lr = x`` sets every group's learning rate, and reading
``optimizer.lr`` gives the default group's.

State
-----
Per-parameter state (moment estimates, momentum buffers, step counts) is created on the first
step with the parameter's dtype and device, and updated in place on mutable backends.
``state_dict()`` returns it as plain NumPy arrays and Python numbers, and ``load_state_dict()``
moves such a dict onto whatever backend the parameters live on when next bound or stepped.
Binding again to the same parameters (same layers, same keys, same order) keeps the state, so
``fit`` can be called repeatedly; binding to different parameters starts afresh.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from . import backend
from .kernels import clipping as clip_k
from .kernels import optimizers as k

Array = Any
ParamRef = tuple[Any, str]
"""``(layer, key)``: the parameter ``layer.params[key]`` with gradient ``layer.grads[key]``."""

Selector = Callable[[Any, str], bool]
Kernel = Callable[[Array, Array, dict[str, Any], Any, bool], tuple[Array, dict[str, Any]]]
"""``update(param, grad, state, xp, inplace) -> (param, state)`` for one parameter group."""


# ----------------------------------------------------------------------------------------------
# Validation helpers: every message names the optimizer, the argument, the bound and the value
# ----------------------------------------------------------------------------------------------


def _number(owner: str, name: str, value: Any) -> float:
    # numbers.Real also admits NumPy scalars (e.g. hyperparameters read back from an NPZ file)
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_") \
            or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    if value != value:
        raise ValueError(f"{owner}: {name} must be a real number, got nan")
    return float(value)


def _nonneg(owner: str, name: str, value: Any) -> float:
    v = _number(owner, name, value)
    if v < 0 or math.isinf(v):
        raise ValueError(f"{owner}: {name} must be a finite number >= 0, got {value!r}")
    return v


def _in_unit(owner: str, name: str, value: Any, *, closed: bool = False) -> float:
    v = _number(owner, name, value)
    if not (0 <= v <= 1 if closed else 0 <= v < 1):
        bound = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{owner}: {name} must be in {bound}, got {value!r}")
    return v


def _positive_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return int(value)


def _flag(owner: str, name: str, value: Any) -> bool:
    if not (isinstance(value, bool) or type(value).__name__ in ("bool", "bool_")):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


def _betas(owner: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {value!r}")
    return (_in_unit(owner, "betas[0]", value[0]), _in_unit(owner, "betas[1]", value[1]))


# ----------------------------------------------------------------------------------------------
# The base class
# ----------------------------------------------------------------------------------------------


class Optimizer:
    """Base class: options and parameter groups, binding, per-parameter state, clipping, step.

    Subclasses set ``_defaults`` through ``super().__init__(defaults, ...)`` and implement
    ``_check(options)`` (validate and normalise one group's options), ``_init_state(param, group)``
    and ``_update(param, grad, state, group)``.

    Parameters
    ----------
    defaults
        The options of the implicit default group (and the base for every user group).
    param_groups
        Optional list of dicts with ``"params"`` (a ``(layer, key) -> bool`` selector or a list of
        ``(layer, key)`` pairs) and option overrides; see the module docstring.
    clip_norm
        When given, rescale all gradients together before every update so that their global
        L2 norm is at most ``clip_norm`` (:func:`clip_grad_norm_`).
    clip_value
        When given, clamp every gradient entry into ``[-clip_value, clip_value]`` before every
        update (:func:`clip_grad_value_`); applied before ``clip_norm`` when both are set.
    """

    requires_closure = False
    """Whether :meth:`step` needs a closure that re-evaluates the loss (L-BFGS)."""

    def __init__(
        self,
        defaults: dict[str, Any],
        *,
        param_groups: Sequence[dict[str, Any]] | None = None,
        clip_norm: float | None = None,
        clip_value: float | None = None,
    ) -> None:
        owner = type(self).__name__
        # A learning rate of 0 is accepted where it has a use (a group frozen on purpose, a
        # schedule that reached 0, load_state_dict), but as the constructor's lr it is a mistake.
        _positive(owner, "lr", defaults["lr"])
        self.defaults = self._check(dict(defaults))
        self.clip_norm = None if clip_norm is None else _positive(owner, "clip_norm", clip_norm)
        self.clip_value = (None if clip_value is None
                           else _positive(owner, "clip_value", clip_value))
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
        self.state: dict[int, dict[str, Any]] = {}
        self._refs: list[ParamRef] = []
        self._ref_ids: list[tuple[int, str]] = []
        self._inplace: list[bool] = []
        self._members: list[list[int]] = []
        # Per group, the records ``(layer, key, index, xp, inplace)`` of its parameters, built
        # once by bind() so that step() does no lookups beyond the arrays themselves.
        self._plan: list[list[tuple[Any, str, int, Any, bool]]] = []
        self._pending: dict[int, dict[str, Any]] | None = None
        self.iterations = 0

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
        options = self._check({**self.defaults, **{k_: v for k_, v in spec.items()
                                                    if k_ != "params"}})
        return {**options, "params": []}

    # --- options --------------------------------------------------------------------------

    def _check(self, options: dict[str, Any]) -> dict[str, Any]:
        """Validate (and normalise) one group's options; raise ValueError naming the culprit."""
        return options

    @property
    def lr(self) -> float:
        """The default group's learning rate; setting it sets every group's."""
        return float(self.param_groups[-1]["lr"])

    @lr.setter
    def lr(self, value: float) -> None:
        value = _nonneg(type(self).__name__, "lr", value)
        for group in self.param_groups:
            group["lr"] = value

    def get_config(self) -> dict[str, Any]:
        """The constructor's options as JSON-able values (parameter groups are not included:
        their selectors are code; :meth:`state_dict` records each group's options and members)."""
        config = {k_: (list(v) if isinstance(v, tuple) else v) for k_, v in self.defaults.items()}
        if self.clip_norm is not None:
            config["clip_norm"] = self.clip_norm
        if self.clip_value is not None:
            config["clip_value"] = self.clip_value
        return config

    def __repr__(self) -> str:
        opts = ", ".join(f"{k_}={v!r}" for k_, v in self.param_groups[-1].items()
                         if k_ not in ("params", "initial_lr"))
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
        if ids != self._ref_ids:
            self.state = {}
        self._refs, self._ref_ids = refs, ids
        self._inplace = [backend.supports_inplace(self._xp_of(layer, key)) for layer, key in refs]
        for group in self.param_groups:
            group["params"] = []
        for i, sel in enumerate(self._selectors):
            if not callable(sel) and not isinstance(sel, _Positions):
                missing = [p for p in sel if (id(p[0]), p[1]) not in set(ids)]
                if missing:
                    raise ValueError(f"{owner}: param_groups[{i}] names {missing[0]!r}, which is "
                                     "not among the parameters being bound")
        self._members = [[] for _ in self.param_groups]
        for i, ref in enumerate(refs):
            g = self._group_of(ref, i)
            self.param_groups[g]["params"].append(ref)
            self._members[g].append(i)
        xps = [self._xp_of(layer, key) for layer, key in refs]
        self._plan = [[(refs[i][0], refs[i][1], i, xps[i], self._inplace[i]) for i in members]
                      for members in self._members]
        if self._pending is not None:
            self._materialize()

    def _group_of(self, ref: ParamRef, position: int) -> int:
        layer, key = ref
        for i, sel in enumerate(self._selectors):
            if isinstance(sel, _Positions):
                if position in sel:
                    return i
            elif callable(sel):
                if sel(layer, key):
                    return i
            elif any(lay is layer and k_ == key for lay, k_ in sel):
                return i
        return len(self.param_groups) - 1

    @staticmethod
    def _xp_of(layer: Any, key: str) -> Any:
        xp = getattr(layer, "xp", None)
        return xp if xp is not None else backend.namespace_of(layer.params[key])

    def _require_bound(self) -> None:
        if not self._refs:
            raise RuntimeError(f"{type(self).__name__}.step() before bind(): call "
                               "optimizer.bind(model.parameters()) or pass it to fit()")

    def _grad(self, ref: ParamRef) -> Array:
        layer, key = ref
        try:
            return layer.grads[key]
        except KeyError:
            raise RuntimeError(f"no gradient for {layer!r}.params[{key!r}]: run backward "
                               "before step()") from None

    # --- the step -------------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply one update to every bound parameter from its current gradient.

        ``closure``, when given, is called first (it should recompute the loss and fill the
        gradients) and its value is returned, as in torch; first-order optimizers do not need it.
        """
        loss = closure() if closure is not None else None
        if not self._refs:
            self._require_bound()
        if self._pending is not None:
            self._materialize()
        if self.clip_value is not None or self.clip_norm is not None:
            self._clip()
        states = self.state
        # the kernel of a subclass that kept the base _update (every optimizer here) is called
        # directly; a subclass that overrides _update gets its own method called
        fast = type(self)._update is Optimizer._update
        for group, records in zip(self.param_groups, self._plan):
            if not records:
                continue
            if fast:
                # options are read from the group on every step: schedules edit group["lr"]
                update = self._kernel(group)
            for layer, key, i, xp, inplace in records:
                try:
                    grad = layer.grads[key]
                except KeyError:
                    raise RuntimeError(f"no gradient for {layer!r}.params[{key!r}]: run "
                                       "backward before step()") from None
                params = layer.params
                param = params[key]
                state = states.get(i)
                if state is None:
                    state = states[i] = self._init_state(param, group, xp)
                if fast:
                    new, new_state = update(param, grad, state, xp, inplace)
                else:
                    new, new_state = self._update(param, grad, state, group, xp, inplace)
                if new_state is not state:
                    states[i] = new_state
                if new is not param:
                    params[key] = new
        self.iterations += 1
        return loss

    def _clip(self) -> None:
        grads = [self._grad(ref) for ref in self._refs]
        xp = self._xp_of(*self._refs[0])
        inplace = all(self._inplace)
        if self.clip_value is not None:
            grads = clip_k.clip_by_value(grads, self.clip_value, xp=xp, inplace=inplace)
        if self.clip_norm is not None:
            grads, _ = clip_k.clip_by_global_norm(grads, self.clip_norm, xp=xp, inplace=inplace)
        for (layer, key), g in zip(self._refs, grads):
            layer.grads[key] = g

    def _init_state(self, param: Array, group: dict[str, Any], xp: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _kernel(self, group: dict[str, Any]) -> Kernel:
        """The update of one group's parameters with the group's current options bound:
        ``update(param, grad, state, xp, inplace) -> (param, state)``. Built once per group and
        step (the options are read then, so schedules' edits apply on the next step); a closure
        with the options as literal keywords costs a fraction of a ``**options`` call."""
        raise NotImplementedError

    def _update(self, param: Array, grad: Array, state: dict[str, Any], group: dict[str, Any],
                xp: Any, inplace: bool) -> tuple[Array, dict[str, Any]]:
        """One parameter's update; by default the closure of :meth:`_kernel`. A subclass may
        override this instead of ``_kernel`` (``step`` then calls it per parameter)."""
        return self._kernel(group)(param, grad, state, xp, inplace)

    # --- saving and loading ---------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state as plain Python numbers and NumPy arrays (copies).

        ``{"optimizer": name, "iterations": int, "param_groups": [options..., "params": [indices
        into the bound parameters]], "state": {index: {name: ndarray | number}}}``; the indices
        follow the order of the pairs given to :meth:`bind` (``model.parameters()``).
        """
        index = {ids: i for i, ids in enumerate(self._ref_ids)}
        groups = []
        for group in self.param_groups:
            entry = {k_: v for k_, v in group.items() if k_ != "params"}
            entry["params"] = [index[(id(lay), key)] for lay, key in group["params"]]
            groups.append(entry)
        state: dict[int, dict[str, Any]]
        if self._pending is not None:
            state = {i: dict(s) for i, s in self._pending.items()}
        else:
            state = {i: {name: (backend.to_numpy(v).copy() if backend.is_array(v) else v)
                         for name, v in s.items()} for i, s in self.state.items()}
        return {"optimizer": type(self).__name__, "iterations": self.iterations,
                "param_groups": groups, "state": state}

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
            opts = {k_: v for k_, v in saved.items() if k_ in self.defaults}
            if "betas" in opts:
                opts["betas"] = tuple(float(b) for b in opts["betas"])
            merged = self._check({**self.defaults, **opts})
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
        pending, self._pending = self._pending or {}, None
        owner = type(self).__name__
        self.state = {}
        for i, saved in pending.items():
            if not 0 <= i < len(self._refs):
                raise ValueError(f"{owner}.load_state_dict: state for parameter {i}, but "
                                 f"{len(self._refs)} parameter(s) are bound")
            layer, key = self._refs[i]
            param = layer.params[key]
            xp = self._xp_of(layer, key)
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
            self.state[i] = entry


class _Positions(frozenset[int]):
    """A group selector by position in the bound list (groups restored from a state_dict)."""


def _positive(owner: str, name: str, value: Any) -> float:
    v = _number(owner, name, value)
    if not v > 0:
        raise ValueError(f"{owner}: {name} must be > 0, got {value!r}")
    return v


# ----------------------------------------------------------------------------------------------
# First-order optimizers
# ----------------------------------------------------------------------------------------------

_GROUP_DOC = """
    param_groups
        Per-group options: ``[{"params": selector or [(layer, key), ...], "lr": ..., ...}]``
        (see :mod:`nnxp.optim`).
    clip_norm, clip_value
        Clip the gradients by global norm / by value before each update (None: off)."""


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay.

    torch.optim.SGD, defaults included (lr = 1e-3). With ``g = ∇f(θ) + λθ``::

        b ← g                      on the first step (a copy; no dampening)
        b ← μ b + (1 − τ) g        afterwards
        d = g + μ b  (nesterov)    or    d = b
        θ ← θ − γ d

    and ``θ ← θ − γ g`` without momentum. Batch, mini-batch and stochastic gradient descent are
    this same optimizer driven with different batch sizes by ``fit(batch_size=...)``. Keras puts
    the learning rate inside the momentum buffer (``v ← μv − γg; θ ← θ + v``), which differs
    from this form when the learning rate changes. Polyak (1964) for momentum; Sutskever et al.
    (2013) for the Nesterov form. See :func:`nnxp.kernels.optimizers.sgd_momentum_update`.

    Parameters
    ----------
    lr
        Learning rate γ (>= 0).
    momentum
        μ >= 0.
    dampening
        τ, the fraction of the gradient held back from the buffer (>= 0).
    weight_decay
        λ >= 0, the L2 penalty added to the gradient.
    nesterov
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
    """ + _GROUP_DOC

    def __init__(self, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *,
                 param_groups: Sequence[dict[str, Any]] | None = None,
                 clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(dict(lr=lr, momentum=momentum, dampening=dampening,
                              weight_decay=weight_decay, nesterov=nesterov),
                         param_groups=param_groups, clip_norm=clip_norm, clip_value=clip_value)

    def _check(self, o: dict[str, Any]) -> dict[str, Any]:
        n = type(self).__name__
        o["lr"] = _nonneg(n, "lr", o["lr"])
        o["momentum"] = _nonneg(n, "momentum", o["momentum"])
        o["dampening"] = _nonneg(n, "dampening", o["dampening"])
        o["weight_decay"] = _nonneg(n, "weight_decay", o["weight_decay"])
        o["nesterov"] = _flag(n, "nesterov", o["nesterov"])
        if o["nesterov"] and (o["momentum"] <= 0 or o["dampening"] != 0):
            raise ValueError(f"{n}: nesterov=True needs momentum > 0 and dampening = 0, got "
                             f"momentum={o['momentum']!r}, dampening={o['dampening']!r}")
        return o

    def _init_state(self, param: Array, group: dict[str, Any], xp: Any) -> dict[str, Any]:
        return k.sgd_init(param, xp=xp)

    def _kernel(self, group: dict[str, Any]) -> Kernel:
        lr = group["lr"]
        momentum = group["momentum"]
        dampening = group["dampening"]
        nesterov = group["nesterov"]
        weight_decay = group["weight_decay"]
        if momentum == 0 and weight_decay == 0:
            plain = k.sgd_update

            def update_plain(param: Array, grad: Array, state: dict[str, Any], xp: Any,
                             inplace: bool) -> tuple[Array, dict[str, Any]]:
                state["step"] += 1
                return plain(param, grad, lr=lr, inplace=inplace), state

            return update_plain

        def update(param: Array, grad: Array, state: dict[str, Any], xp: Any,
                   inplace: bool) -> tuple[Array, dict[str, Any]]:
            return k.sgd_momentum_update(param, grad, state, lr=lr, momentum=momentum,
                                         dampening=dampening, nesterov=nesterov,
                                         weight_decay=weight_decay, xp=xp, inplace=inplace)

        return update


class Adagrad(Optimizer):
    """Adagrad: per-coordinate steps shrinking with the accumulated squared gradients.

    torch.optim.Adagrad, defaults included. With ``g = ∇f(θ) + λθ`` and step count t::

        γ_t = γ / (1 + (t − 1) η)
        G  ← G + g²                 (G starts at initial_accumulator_value)
        θ  ← θ − γ_t g / (√G + ε)

    Duchi, Hazan & Singer (2011), JMLR 12. Keras starts G at 0.1 and uses ε = 1e-7; torch starts
    at 0 with ε = 1e-10. See :func:`nnxp.kernels.optimizers.adagrad_update`.

    Parameters
    ----------
    lr
        γ (>= 0), default 1e-2.
    lr_decay
        η (>= 0).
    weight_decay
        λ (>= 0), L2 penalty added to the gradient.
    initial_accumulator_value
        Starting value of G (>= 0).
    eps
        ε (>= 0), added outside the square root.
    """ + _GROUP_DOC

    def __init__(self, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, *,
                 param_groups: Sequence[dict[str, Any]] | None = None,
                 clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                              initial_accumulator_value=initial_accumulator_value, eps=eps),
                         param_groups=param_groups, clip_norm=clip_norm, clip_value=clip_value)

    def _check(self, o: dict[str, Any]) -> dict[str, Any]:
        n = type(self).__name__
        for name in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            o[name] = _nonneg(n, name, o[name])
        return o

    def _init_state(self, param: Array, group: dict[str, Any], xp: Any) -> dict[str, Any]:
        return k.adagrad_init(param, initial_accumulator_value=group["initial_accumulator_value"],
                              xp=xp)

    def _kernel(self, group: dict[str, Any]) -> Kernel:
        lr = group["lr"]
        lr_decay = group["lr_decay"]
        weight_decay = group["weight_decay"]
        eps = group["eps"]

        def update(param: Array, grad: Array, state: dict[str, Any], xp: Any,
                   inplace: bool) -> tuple[Array, dict[str, Any]]:
            return k.adagrad_update(param, grad, state, lr=lr, lr_decay=lr_decay,
                                    weight_decay=weight_decay, eps=eps, xp=xp, inplace=inplace)

        return update


class RMSprop(Optimizer):
    """RMSprop: divide by a running root mean square of the gradients.

    torch.optim.RMSprop, defaults included. With ``g = ∇f(θ) + λθ``::

        v ← α v + (1 − α) g²
        ḡ ← α ḡ + (1 − α) g                     (centered only)
        s = √(v − ḡ²) + ε  (centered)   or   s = √v + ε
        b ← μ b + g / s;  θ ← θ − γ b          (momentum > 0)
        θ ← θ − γ g / s                         (momentum = 0)

    All averages start at zero (no bias correction). Hinton's Coursera lecture 6e (2012);
    centered: Graves (2013), arXiv:1308.0850. Keras defaults to ρ = 0.9, ε = 1e-7; TensorFlow 1 put
    ε inside the square root. See :func:`nnxp.kernels.optimizers.rmsprop_update`.

    Parameters
    ----------
    lr
        γ (>= 0), default 1e-2.
    alpha
        α, the smoothing constant (>= 0), default 0.99.
    eps
        ε (>= 0), outside the square root.
    weight_decay
        λ (>= 0).
    momentum
        μ (>= 0).
    centered
        Normalise by an estimate of the variance instead of the raw second moment.
    """ + _GROUP_DOC

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, *,
                 param_groups: Sequence[dict[str, Any]] | None = None,
                 clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                              momentum=momentum, centered=centered),
                         param_groups=param_groups, clip_norm=clip_norm, clip_value=clip_value)

    def _check(self, o: dict[str, Any]) -> dict[str, Any]:
        n = type(self).__name__
        for name in ("lr", "alpha", "eps", "weight_decay", "momentum"):
            o[name] = _nonneg(n, name, o[name])
        o["centered"] = _flag(n, "centered", o["centered"])
        return o

    def _init_state(self, param: Array, group: dict[str, Any], xp: Any) -> dict[str, Any]:
        return k.rmsprop_init(param, momentum=group["momentum"], centered=group["centered"],
                              xp=xp)

    def _kernel(self, group: dict[str, Any]) -> Kernel:
        # the kernel creates a momentum buffer or gradient average switched on after step 1
        lr = group["lr"]
        alpha = group["alpha"]
        eps = group["eps"]
        weight_decay = group["weight_decay"]
        momentum = group["momentum"]
        centered = group["centered"]

        def update(param: Array, grad: Array, state: dict[str, Any], xp: Any,
                   inplace: bool) -> tuple[Array, dict[str, Any]]:
            return k.rmsprop_update(param, grad, state, lr=lr, alpha=alpha, eps=eps,
                                    weight_decay=weight_decay, momentum=momentum,
                                    centered=centered, xp=xp, inplace=inplace)

        return update


class Adadelta(Optimizer):
    """Adadelta: steps scaled by the ratio of running RMS of updates and of gradients.

    torch.optim.Adadelta, defaults included. With ``g = ∇f(θ) + λθ``::

        v ← ρ v + (1 − ρ) g²
        Δ = √(u + ε) / √(v + ε) · g
        u ← ρ u + (1 − ρ) Δ²
        θ ← θ − γ Δ

    Zeiler (2012), arXiv:1212.5701 (which has no γ: torch's default γ = 1 recovers it). Keras
    defaults to γ = 1e-3, ρ = 0.95, ε = 1e-7. See :func:`nnxp.kernels.optimizers.adadelta_update`.

    Parameters
    ----------
    lr
        γ (>= 0), default 1.0.
    rho
        ρ in [0, 1], default 0.9.
    eps
        ε (>= 0), inside both square roots, default 1e-6.
    weight_decay
        λ (>= 0).
    """ + _GROUP_DOC

    def __init__(self, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, *,
                 param_groups: Sequence[dict[str, Any]] | None = None,
                 clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay),
                         param_groups=param_groups, clip_norm=clip_norm, clip_value=clip_value)

    def _check(self, o: dict[str, Any]) -> dict[str, Any]:
        n = type(self).__name__
        for name in ("lr", "eps", "weight_decay"):
            o[name] = _nonneg(n, name, o[name])
        o["rho"] = _in_unit(n, "rho", o["rho"], closed=True)
        return o

    def _init_state(self, param: Array, group: dict[str, Any], xp: Any) -> dict[str, Any]:
        return k.adadelta_init(param, xp=xp)

    def _kernel(self, group: dict[str, Any]) -> Kernel:
        lr = group["lr"]
        rho = group["rho"]
        eps = group["eps"]
        weight_decay = group["weight_decay"]

        def update(param: Array, grad: Array, state: dict[str, Any], xp: Any,
                   inplace: bool) -> tuple[Array, dict[str, Any]]:
            return k.adadelta_update(param, grad, state, lr=lr, rho=rho, eps=eps,
                                     weight_decay=weight_decay, xp=xp, inplace=inplace)

        return update


class Adam(Optimizer):
    """Adam: bias-corrected first and second moment estimates.

    torch.optim.Adam, defaults included. With ``g = ∇f(θ) + λθ`` and step count t::

        m ← β₁ m + (1 − β₁) g
        v ← β₂ v + (1 − β₂) g²
        v̂ ← max(v̂, v)  (amsgrad)   or   v̂ = v
        θ ← θ − γ/(1 − β₁ᵗ) · m / (√v̂ / √(1 − β₂ᵗ) + ε)

    Kingma & Ba (2015), ICLR; AMSGrad: Reddi, Kale & Kumar (2018), ICLR. The recommended (and
    default) β₂ is 0.999. ε is added after the bias-corrected square root; Keras' formulation
    adds an ε that is not bias-corrected (default 1e-7), so the two differ slightly early in
    training. ``weight_decay`` here is the coupled L2 penalty; use :class:`AdamW` for decoupled
    decay. See :func:`nnxp.kernels.optimizers.adam_update`.

    Parameters
    ----------
    lr
        γ (>= 0), default 1e-3.
    betas
        (β₁, β₂), each in [0, 1).
    eps
        ε (>= 0).
    weight_decay
        λ (>= 0), added to the gradient.
    amsgrad
        Keep the running maximum of the second moment.
    """ + _GROUP_DOC

    _decoupled = False

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 param_groups: Sequence[dict[str, Any]] | None = None,
                 clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                              amsgrad=amsgrad),
                         param_groups=param_groups, clip_norm=clip_norm, clip_value=clip_value)

    def _check(self, o: dict[str, Any]) -> dict[str, Any]:
        n = type(self).__name__
        for name in ("lr", "eps", "weight_decay"):
            o[name] = _nonneg(n, name, o[name])
        o["betas"] = _betas(n, o["betas"])
        o["amsgrad"] = _flag(n, "amsgrad", o["amsgrad"])
        return o

    def _init_state(self, param: Array, group: dict[str, Any], xp: Any) -> dict[str, Any]:
        return k.adam_init(param, amsgrad=group["amsgrad"], xp=xp)

    def _kernel(self, group: dict[str, Any]) -> Kernel:
        # the kernel creates max_exp_avg_sq when amsgrad is switched on after step 1
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        eps = group["eps"]
        weight_decay = group["weight_decay"]
        amsgrad = group["amsgrad"]
        decoupled = self._decoupled

        def update(param: Array, grad: Array, state: dict[str, Any], xp: Any,
                   inplace: bool) -> tuple[Array, dict[str, Any]]:
            return k.adam_update(param, grad, state, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                 weight_decay=weight_decay, amsgrad=amsgrad, decoupled=decoupled,
                                 xp=xp, inplace=inplace)

        return update


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, ``θ ← θ(1 − γλ)`` before the Adam step.

    torch.optim.AdamW, defaults included (note ``weight_decay=1e-2``, unlike Adam's 0). The decay
    never enters the moment estimates, so it is not divided by √v̂ (Loshchilov & Hutter, 2019,
    "Decoupled weight decay regularization", ICLR). Keras' AdamW uses weight_decay = 0.004 by
    default. Everything else is :class:`Adam`.

    Parameters
    ----------
    lr, betas, eps, amsgrad
        As in :class:`Adam`.
    weight_decay
        λ (>= 0), default 1e-2, multiplied by the *current* learning rate each step.
    """ + _GROUP_DOC

    _decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 param_groups: Sequence[dict[str, Any]] | None = None,
                 clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, param_groups=param_groups, clip_norm=clip_norm,
                         clip_value=clip_value)


class Adamax(Optimizer):
    """Adamax: Adam with an infinity-norm second moment.

    torch.optim.Adamax, defaults included. With ``g = ∇f(θ) + λθ``::

        m ← β₁ m + (1 − β₁) g
        u ← max(β₂ u, |g| + ε)
        θ ← θ − γ/(1 − β₁ᵗ) · m / u

    Kingma & Ba (2015), section 7.1. torch (and this) add ε inside the max; Keras adds it to the
    denominator. See :func:`nnxp.kernels.optimizers.adamax_update`.

    Parameters
    ----------
    lr
        γ (>= 0), default 2e-3.
    betas
        (β₁, β₂), each in [0, 1).
    eps
        ε (>= 0).
    weight_decay
        λ (>= 0).
    """ + _GROUP_DOC

    def __init__(self, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *,
                 param_groups: Sequence[dict[str, Any]] | None = None,
                 clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
                         param_groups=param_groups, clip_norm=clip_norm, clip_value=clip_value)

    def _check(self, o: dict[str, Any]) -> dict[str, Any]:
        n = type(self).__name__
        for name in ("lr", "eps", "weight_decay"):
            o[name] = _nonneg(n, name, o[name])
        o["betas"] = _betas(n, o["betas"])
        return o

    def _init_state(self, param: Array, group: dict[str, Any], xp: Any) -> dict[str, Any]:
        return k.adamax_init(param, xp=xp)

    def _kernel(self, group: dict[str, Any]) -> Kernel:
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        eps = group["eps"]
        weight_decay = group["weight_decay"]

        def update(param: Array, grad: Array, state: dict[str, Any], xp: Any,
                   inplace: bool) -> tuple[Array, dict[str, Any]]:
            return k.adamax_update(param, grad, state, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                   weight_decay=weight_decay, xp=xp, inplace=inplace)

        return update


class NAdam(Optimizer):
    """NAdam: Adam with Nesterov momentum and Dozat's warming momentum schedule.

    torch.optim.NAdam, defaults included. With ``μ_t = β₁(1 − ½·0.96^{tψ})`` and
    ``Π_t = μ_1 ⋯ μ_t``::

        m ← β₁ m + (1 − β₁) g;   v ← β₂ v + (1 − β₂) g²
        s = √(v / (1 − β₂ᵗ)) + ε
        θ ← θ − γ(1 − μ_t)/(1 − Π_t) · g/s − γ μ_{t+1}/(1 − Π_t μ_{t+1}) · m/s

    Dozat (2016), "Incorporating Nesterov momentum into Adam", ICLR workshop. Keras' Nadam fixes
    ψ = 0.004 and uses ε = 1e-7. See :func:`nnxp.kernels.optimizers.nadam_update`.

    Parameters
    ----------
    lr
        γ (>= 0), default 2e-3.
    betas
        (β₁, β₂), each in [0, 1).
    eps
        ε (>= 0).
    weight_decay
        λ (>= 0): L2 added to the gradient, or decoupled (``θ ← θ(1 − γλ)``) with
        ``decoupled_weight_decay=True`` (torch's NAdamW form).
    momentum_decay
        ψ (>= 0), default 4e-3.
    decoupled_weight_decay
        Decay the parameters directly instead of adding λθ to the gradient.
    """ + _GROUP_DOC

    def __init__(self, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *,
                 param_groups: Sequence[dict[str, Any]] | None = None,
                 clip_norm: float | None = None, clip_value: float | None = None) -> None:
        super().__init__(dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                              momentum_decay=momentum_decay,
                              decoupled_weight_decay=decoupled_weight_decay),
                         param_groups=param_groups, clip_norm=clip_norm, clip_value=clip_value)

    def _check(self, o: dict[str, Any]) -> dict[str, Any]:
        n = type(self).__name__
        for name in ("lr", "eps", "weight_decay", "momentum_decay"):
            o[name] = _nonneg(n, name, o[name])
        o["betas"] = _betas(n, o["betas"])
        o["decoupled_weight_decay"] = _flag(n, "decoupled_weight_decay",
                                            o["decoupled_weight_decay"])
        return o

    def _init_state(self, param: Array, group: dict[str, Any], xp: Any) -> dict[str, Any]:
        return k.nadam_init(param, xp=xp)

    def _kernel(self, group: dict[str, Any]) -> Kernel:
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        eps = group["eps"]
        weight_decay = group["weight_decay"]
        momentum_decay = group["momentum_decay"]
        decoupled_weight_decay = group["decoupled_weight_decay"]

        def update(param: Array, grad: Array, state: dict[str, Any], xp: Any,
                   inplace: bool) -> tuple[Array, dict[str, Any]]:
            return k.nadam_update(param, grad, state, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                  weight_decay=weight_decay, momentum_decay=momentum_decay,
                                  decoupled_weight_decay=decoupled_weight_decay, xp=xp,
                                  inplace=inplace)

        return update


# ----------------------------------------------------------------------------------------------
# L-BFGS
# ----------------------------------------------------------------------------------------------


class LBFGS(Optimizer):
    """Limited-memory BFGS over all bound parameters as one flat vector (full batch).

    A port of torch.optim.LBFGS (same defaults, same stopping rules, same strong-Wolfe line
    search with cubic interpolation), written against the array API. Each :meth:`step` runs up to
    ``max_iter`` iterations, each of which:

    1. builds the search direction ``d = −H g`` by the two-loop recursion over the last
       ``history_size`` curvature pairs ``(s, y)``, pairs with ``yᵀs <= 1e-10`` being skipped,
       and the initial Hessian scaling ``H₀ = (sᵀy / yᵀy) I``
       (:func:`nnxp.kernels.optimizers.lbfgs_direction`);
    2. picks the step ``t``: ``min(1, 1/‖g‖₁)·lr`` on the very first iteration, ``lr`` after;
       with ``line_search_fn="strong_wolfe"`` refines it until the strong Wolfe conditions
       ``f(θ + t d) <= f(θ) + c₁ t gᵀd`` and ``|∇f(θ + t d)ᵀd| <= −c₂ gᵀd`` hold
       (c₁ = 1e-4, c₂ = 0.9, at most 25 evaluations; Nocedal & Wright, Algorithms 3.5–3.6);
    3. moves ``θ ← θ + t d`` and stops on ``max|g| <= tolerance_grad``, ``max|t d| <=
       tolerance_change``, ``|Δf| < tolerance_change``, ``max_iter`` iterations or ``max_eval``
       evaluations.

    Nocedal (1980), "Updating quasi-Newton matrices with limited storage", Math. Comp. 35; Liu &
    Nocedal (1989). Unlike the first-order optimizers, ``step`` needs a ``closure`` that
    recomputes the loss on the full batch, fills every ``layer.grads`` and returns the loss; the
    value of its first call is returned. SciPy's L-BFGS-B uses a different (Moré–Thuente) line
    search and its own stopping rules, so trajectories differ from SciPy's.

    Parameters
    ----------
    lr
        Step length scale (> 0), default 1.
    max_iter
        Iterations per ``step`` call, default 20.
    max_eval
        Closure evaluations per ``step`` call, default ``max_iter * 5 // 4``.
    tolerance_grad, tolerance_change
        Stopping tolerances on the gradient's max-norm and on changes of θ and f.
    history_size
        Curvature pairs kept, default 100.
    line_search_fn
        ``None`` (a fixed step ``t``, torch's default) or ``"strong_wolfe"``.
    """

    requires_closure = True

    def __init__(self, lr: float = 1.0, max_iter: int = 20, max_eval: int | None = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9,
                 history_size: int = 100, line_search_fn: str | None = None) -> None:
        if max_eval is None and isinstance(max_iter, numbers.Integral) \
                and not isinstance(max_iter, bool):
            max_eval = int(max_iter) * 5 // 4
        super().__init__(dict(lr=lr, max_iter=max_iter, max_eval=max_eval,
                              tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                              history_size=history_size, line_search_fn=line_search_fn))

    def _check(self, o: dict[str, Any]) -> dict[str, Any]:
        n = type(self).__name__
        o["lr"] = _positive(n, "lr", o["lr"])
        o["max_iter"] = _positive_int(n, "max_iter", o["max_iter"])
        o["max_eval"] = _positive_int(n, "max_eval", o["max_eval"])
        o["history_size"] = _positive_int(n, "history_size", o["history_size"])
        o["tolerance_grad"] = _nonneg(n, "tolerance_grad", o["tolerance_grad"])
        o["tolerance_change"] = _nonneg(n, "tolerance_change", o["tolerance_change"])
        if o["line_search_fn"] not in (None, "strong_wolfe"):
            raise ValueError(f"{n}: line_search_fn must be None or 'strong_wolfe', got "
                             f"{o['line_search_fn']!r}")
        return o

    # --- flat vectors ---------------------------------------------------------------------

    def _xp(self) -> Any:
        return self._xp_of(*self._refs[0])

    def _flat_grad(self) -> Array:
        xp = self._xp()
        return xp.concat([xp.reshape(self._grad(ref), (-1,)) for ref in self._refs])

    def _clone_params(self) -> list[Array]:
        xp = self._xp()
        return [xp.asarray(layer.params[key], copy=True) for layer, key in self._refs]

    def _set_params(self, values: list[Array]) -> None:
        for i, ((layer, key), v) in enumerate(zip(self._refs, values)):
            layer.params[key] = k._assign(layer.params[key], v, self._inplace[i])

    def _add_step(self, t: float, d: Array) -> None:
        xp = self._xp()
        offset = 0
        for i, (layer, key) in enumerate(self._refs):
            p = layer.params[key]
            n = math.prod(p.shape)
            chunk = xp.reshape(d[offset:offset + n], p.shape)
            layer.params[key] = k._add_scaled(p, chunk, t, self._inplace[i])
            offset += n

    def _dot(self, a: Array, b: Array) -> float:
        return backend.to_float(self._xp().sum(a * b))

    def _absmax(self, a: Array) -> float:
        xp = self._xp()
        return backend.to_float(xp.max(xp.abs(a)))

    def _evaluate(self, closure: Callable[[], Any], x: list[Array], t: float,
                  d: Array) -> tuple[float, Array]:
        self._add_step(t, d)
        loss = backend.to_float(closure())
        g = self._flat_grad()
        self._set_params(x)
        return loss, g

    # --- the step -------------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run up to ``max_iter`` L-BFGS iterations; returns the closure's first loss."""
        if closure is None:
            raise TypeError("LBFGS.step needs a closure: a function that recomputes the loss on "
                            "the full batch, fills the gradients (e.g. via "
                            "model.loss_and_grads(X, y)) and returns the loss")
        self._require_bound()
        if self._pending is not None:
            self._materialize_lbfgs()
        group = self.param_groups[-1]
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tol_grad, tol_change = group["tolerance_grad"], group["tolerance_change"]
        history_size = group["history_size"]
        st = self.state.setdefault(0, {"func_evals": 0, "n_iter": 0})
        xp = self._xp()

        orig_loss = closure()
        loss = backend.to_float(orig_loss)
        current_evals = 1
        st["func_evals"] += 1
        flat_grad = self._flat_grad()
        self.iterations += 1
        if self._absmax(flat_grad) <= tol_grad:
            return orig_loss

        d: Any = st.get("d")
        t: Any = st.get("t")
        old_dirs: list[Array] = st.get("old_dirs", [])
        old_stps: list[Array] = st.get("old_stps", [])
        ro: list[float] = st.get("ro", [])
        h_diag = st.get("H_diag", 1.0)
        prev_flat_grad: Any = st.get("prev_flat_grad")
        prev_loss: Any = st.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            st["n_iter"] += 1
            if st["n_iter"] == 1:
                d = -flat_grad
                old_dirs, old_stps, ro, h_diag = [], [], [], 1.0
            else:
                y = flat_grad - prev_flat_grad
                s = d * t
                ys = self._dot(y, s)
                if ys > 1e-10:
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    h_diag = ys / self._dot(y, y)
                d = k.lbfgs_direction(flat_grad, old_dirs, old_stps, ro, h_diag, dot=self._dot)
            prev_flat_grad = xp.asarray(flat_grad, copy=True)
            prev_loss = loss
            if st["n_iter"] == 1:
                t = min(1.0, 1.0 / backend.to_float(xp.sum(xp.abs(flat_grad)))) * lr
            else:
                t = lr
            gtd = self._dot(flat_grad, d)
            if gtd > -tol_change:
                break

            ls_evals = 0
            if group["line_search_fn"] == "strong_wolfe":
                x_init = self._clone_params()

                def obj(x: list[Array], step: float, direction: Array) -> tuple[float, Array]:
                    return self._evaluate(closure, x, step, direction)

                loss, flat_grad, t, ls_evals = self._strong_wolfe(
                    obj, x_init, t, d, loss, flat_grad, gtd, tolerance_change=tol_change)
                self._add_step(t, d)
                opt_cond = self._absmax(flat_grad) <= tol_grad
            else:
                self._add_step(t, d)
                opt_cond = False
                if n_iter != max_iter:
                    loss = backend.to_float(closure())
                    flat_grad = self._flat_grad()
                    opt_cond = self._absmax(flat_grad) <= tol_grad
                    ls_evals = 1
            current_evals += ls_evals
            st["func_evals"] += ls_evals

            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if self._absmax(d * t) <= tol_change:
                break
            if abs(loss - prev_loss) < tol_change:
                break

        st.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=h_diag,
                  prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return orig_loss

    def _strong_wolfe(
        self, obj: Callable[[list[Array], float, Array], tuple[float, Array]],
        x: list[Array], t: float, d: Array, f: float, g: Array, gtd: float, *,
        c1: float = 1e-4, c2: float = 0.9, tolerance_change: float = 1e-9, max_ls: int = 25,
    ) -> tuple[float, Array, float, int]:
        """torch's strong-Wolfe search: bracketing, then zoom with safeguarded cubic steps."""
        d_norm = self._absmax(d)
        f_new, g_new = obj(x, t, d)
        evals = 1
        gtd_new = self._dot(g_new, d)
        t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
        done = False
        ls_iter = 0
        bracket: list[float] = []
        bracket_f: list[float] = []
        bracket_g: list[Array] = []
        bracket_gtd: list[float] = []
        while ls_iter < max_ls:
            if f_new > f + c1 * t * gtd or (ls_iter > 1 and f_new >= f_prev):
                bracket, bracket_f = [t_prev, t], [f_prev, f_new]
                bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
                break
            if abs(gtd_new) <= -c2 * gtd:
                bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
                done = True
                break
            if gtd_new >= 0:
                bracket, bracket_f = [t_prev, t], [f_prev, f_new]
                bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
                break
            min_step = t + 0.01 * (t - t_prev)
            max_step = t * 10
            tmp = t
            t = k.cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                                    bounds=(min_step, max_step))
            t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
            f_new, g_new = obj(x, t, d)
            evals += 1
            gtd_new = self._dot(g_new, d)
            ls_iter += 1
        if ls_iter == max_ls:
            bracket, bracket_f, bracket_g = [0.0, t], [f, f_new], [g, g_new]

        insuf_progress = False
        low, high = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
        while not done and ls_iter < max_ls:
            if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
                break
            t = k.cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0],
                                    bracket[1], bracket_f[1], bracket_gtd[1])
            hi_b, lo_b = max(bracket), min(bracket)
            eps = 0.1 * (hi_b - lo_b)
            if min(hi_b - t, t - lo_b) < eps:
                if insuf_progress or t >= hi_b or t <= lo_b:
                    t = hi_b - eps if abs(t - hi_b) < abs(t - lo_b) else lo_b + eps
                    insuf_progress = False
                else:
                    insuf_progress = True
            else:
                insuf_progress = False
            f_new, g_new = obj(x, t, d)
            evals += 1
            gtd_new = self._dot(g_new, d)
            ls_iter += 1
            if f_new > f + c1 * t * gtd or f_new >= bracket_f[low]:
                bracket[high], bracket_f[high] = t, f_new
                bracket_g[high], bracket_gtd[high] = g_new, gtd_new
                low, high = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
            else:
                if abs(gtd_new) <= -c2 * gtd:
                    done = True
                elif gtd_new * (bracket[high] - bracket[low]) >= 0:
                    bracket[high], bracket_f[high] = bracket[low], bracket_f[low]
                    bracket_g[high], bracket_gtd[high] = bracket_g[low], bracket_gtd[low]
                bracket[low], bracket_f[low] = t, f_new
                bracket_g[low], bracket_gtd[low] = g_new, gtd_new
        return bracket_f[low], bracket_g[low], bracket[low], evals

    # --- saving and loading ---------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Options and the L-BFGS memory (curvature pairs stacked as ``(k, n)`` NumPy arrays)."""
        out = super().state_dict()
        if self._pending is not None:
            return out
        st = self.state.get(0)
        if st is None:
            return out
        saved: dict[str, Any] = {}
        for name, value in st.items():
            if name in ("old_dirs", "old_stps"):
                saved[name] = (np_stack(value) if value else None)
            elif name == "ro":
                saved[name] = [float(r) for r in value]
            elif backend.is_array(value):
                saved[name] = backend.to_numpy(value).copy()
            else:
                saved[name] = value
        out["state"] = {0: saved}
        return out

    def _materialize(self) -> None:
        self._materialize_lbfgs()

    def _materialize_lbfgs(self) -> None:
        pending, self._pending = self._pending or {}, None
        self.state = {}
        saved = pending.get(0)
        if saved is None:
            return
        xp = self._xp()
        layer, key = self._refs[0]
        ref = layer.params[key]

        def move(a: Any) -> Array:
            return backend.asarray(a, dtype=ref.dtype, xp=xp, device=ref.device, copy=True)

        st: dict[str, Any] = {}
        for name, value in saved.items():
            if name in ("old_dirs", "old_stps"):
                st[name] = [] if value is None else [move(row) for row in value]
            elif name == "ro":
                st[name] = [float(r) for r in value]
            elif backend.is_array(value) and getattr(value, "ndim", 0) > 0:
                st[name] = move(value)
            elif backend.is_array(value):
                st[name] = value.item()
            else:
                st[name] = value
        self.state[0] = st


def np_stack(rows: list[Array]) -> Any:
    """Stack 1-D arrays of any backend into one 2-D NumPy array (for state_dict)."""
    return backend.to_numpy([backend.to_numpy(r) for r in rows])


# ----------------------------------------------------------------------------------------------
# Gradient clipping on (layer, key) pairs
# ----------------------------------------------------------------------------------------------


def _grads_of(params: Sequence[ParamRef], fn: str) -> list[Array]:
    refs = list(params)
    if not refs:
        raise ValueError(f"{fn} needs at least one (layer, key) pair, got none")
    out = []
    for layer, key in refs:
        if key not in layer.grads:
            raise RuntimeError(f"{fn}: no gradient for {layer!r}.params[{key!r}]; run "
                               "backward first")
        out.append(layer.grads[key])
    return out


def clip_grad_norm_(
    params: Sequence[ParamRef], max_norm: float, norm_type: float = 2.0, *,
    error_if_nonfinite: bool = False,
) -> float:
    """Rescale the gradients of ``params`` together so that their global norm is <= max_norm.

    torch.nn.utils.clip_grad_norm_ semantics: with ``‖g‖`` the ``norm_type``-norm of all
    gradients concatenated, every gradient is multiplied by ``min(1, max_norm / (‖g‖ + 1e-6))``
    (so gradients within the bound are left unchanged), in place on mutable backends and by
    replacing ``layer.grads[key]`` elsewhere. This is the standard remedy for exploding gradients:
    it keeps the direction and caps the step length.

    Parameters
    ----------
    params
        ``(layer, key)`` pairs, e.g. ``model.parameters()``.
    max_norm
        The bound (> 0).
    norm_type
        p of the p-norm (> 0), ``math.inf`` for the max-norm.
    error_if_nonfinite
        Raise instead of clipping when the total norm is NaN or infinite.

    Returns
    -------
    float
        The total norm *before* clipping (one device-to-host transfer).
    """
    max_norm = _positive("clip_grad_norm_", "max_norm", max_norm)
    norm_type = _positive("clip_grad_norm_", "norm_type", norm_type)
    refs = list(params)
    grads = _grads_of(refs, "clip_grad_norm_")
    layer0, key0 = refs[0]
    xp = Optimizer._xp_of(layer0, key0)
    total = clip_k.global_norm(grads, norm_type=norm_type, xp=xp)
    total_f = backend.to_float(total)
    if error_if_nonfinite and not math.isfinite(total_f):
        raise FloatingPointError(f"clip_grad_norm_: the total gradient norm is {total_f}; the "
                                 "gradients exploded or the loss is NaN (lower the learning rate)")
    inplace = all(backend.supports_inplace(Optimizer._xp_of(lay, key)) for lay, key in refs)
    clipped, _ = clip_k.clip_by_global_norm(grads, max_norm, norm_type=norm_type, xp=xp,
                                            inplace=inplace)
    for (layer, key), g in zip(refs, clipped):
        layer.grads[key] = g
    return total_f


def clip_grad_value_(params: Sequence[ParamRef], clip_value: float) -> None:
    """Clamp every gradient entry of ``params`` into ``[-clip_value, clip_value]``.

    torch.nn.utils.clip_grad_value_ semantics; in place on mutable backends.
    """
    clip_value = _positive("clip_grad_value_", "clip_value", clip_value)
    refs = list(params)
    grads = _grads_of(refs, "clip_grad_value_")
    layer0, key0 = refs[0]
    xp = Optimizer._xp_of(layer0, key0)
    inplace = all(backend.supports_inplace(Optimizer._xp_of(lay, key)) for lay, key in refs)
    for (layer, key), g in zip(refs, clip_k.clip_by_value(grads, clip_value, xp=xp,
                                                          inplace=inplace)):
        layer.grads[key] = g


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD, "adagrad": Adagrad, "rmsprop": RMSprop, "adadelta": Adadelta, "adam": Adam,
    "adamw": AdamW, "adamax": Adamax, "nadam": NAdam, "lbfgs": LBFGS,
}
"""Every optimizer class by lower-case name (drives the contract tests)."""


def get_optimizer(spec: str | Optimizer, **kwargs: Any) -> Optimizer:
    """An optimizer object from a name in :data:`OPTIMIZERS` (with options) or as it is."""
    if isinstance(spec, Optimizer):
        return spec
    if not isinstance(spec, str) or spec.lower() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {spec!r}; valid names are {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[spec.lower()](**kwargs)
