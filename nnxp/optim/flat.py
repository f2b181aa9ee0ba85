"""Flat parameter buffers: the grouped update of a first-order optimizer (issue 13).

Built when the optimizer is bound (:meth:`nnxp.optim.Optimizer.bind`), a :class:`FlatUnit`
gathers the parameters of one parameter group that share a namespace, a
dtype and a device. Their values, their gradients and the optimizer's state *live* in one flat
1-D buffer each; the layers hold views into them (``layer.params[key]``), and the layers that
know the protocol write their gradients straight into the gradient views
(``layer.grad_views[key]``, see :class:`nnxp.layers.Layer`). The optimizer's kernel then runs
once per unit — one pass per operation over all of the unit's parameters, as torch's
``foreach``/``fused`` paths do — instead of once per parameter. Every kernel is elementwise, so
the result is bit for bit the per-parameter path's.

Nothing is copied per step while the views stay in place. Whatever replaces an array (a
restored snapshot, a loaded checkpoint, a max-norm constraint, a user's assignment, a layer
that assigns a new gradient array) is noticed at the next step by an identity test and copied
into its slot (one copy); a parameter that changed shape, dtype, namespace or device makes the
optimizer rebuild the layout. The per-parameter state records of ``optimizer.state`` stay what
they were (``state_dict``, ``load_state_dict``, ``opt.state[i].exp_avg``): their arrays are views
into the unit's flat state, their scalars (``step``) are kept equal to the unit's.

Which backends use it is decided by measurement, per backend (:data:`FLAT_BACKENDS`;
``docs/design.md``, "Flat parameter buffers"); backends without in-place writes keep the
functional per-parameter path.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .. import backend
from ..kernels.optimizers import gate_gradient
from ..typing import Array

FLAT_BACKENDS = frozenset({"numpy", "torch", "cupy"})
"""Backends on which a first-order optimizer keeps parameters, gradients and state in flat
buffers (measured: fewer operations per step and no slower on numpy and torch CPU; CuPy
follows torch CUDA's reasoning — one launch per operation — and still needs a GPU run)."""

Member = tuple[Any, str, int]
"""``(layer, key, index)``: a parameter and its position in the bound list."""


UNIT_MIN = 2**20
"""Elements below which a bucket of parameters is never split into several units."""


def unit_bounds(sizes: list[int]) -> list[tuple[int, int]]:
    """Split consecutive parameters of ``sizes`` elements into units of at most about
    ``cap = max(largest parameter, UNIT_MIN)`` elements: ``[(start, stop), ...]`` member
    ranges (a unit may run over ``cap`` by an eighth, so small biases join their neighbour).

    An update's temporaries are arrays the size of its unit, so one unit over every parameter
    would give the update the peak memory of one copy of the model per temporary: the default
    ``fit`` would exceed 1.3× its live set (issue 11; measured 1.37× with SGD and 1.43× with
    Adam on the big MLP as one unit). Capped at the largest parameter, the peak is what the
    per-parameter path had, while a model of many small parameters stays one unit (one pass
    per operation): the big MLP is two units, the small MLP one.
    """
    if not sizes:
        return []
    cap = max(max(sizes), UNIT_MIN)
    bounds: list[tuple[int, int]] = []
    start, filled = 0, 0
    for i, size in enumerate(sizes):
        if i > start and filled + size > cap + cap // 8:
            bounds.append((start, i))
            start, filled = i, 0
        filled += size
    bounds.append((start, len(sizes)))
    return bounds


def flat_backend(xp: Any) -> bool:
    """Whether parameters on ``xp`` get the flat layout (in-place writes and a measured gain)."""
    return backend.supports_inplace(xp) and backend.namespace_name(xp) in FLAT_BACKENDS


class FlatUnit:
    """The flat buffers of some parameters of one group: one update unit.

    ``param`` and ``grad`` are 1-D arrays; ``state`` the optimizer's record over them (None
    until the first step, or while it cannot be formed, see :meth:`prepare_state`).
    """

    def __init__(self, members: list[Member], xp: Any) -> None:
        self.members = members
        self.xp = xp
        first = members[0][0].params[members[0][1]]
        self.dtype, self.device = first.dtype, first.device
        self.shapes = [tuple(layer.params[key].shape) for layer, key, _ in members]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        total = sum(self.sizes)
        self.param = xp.empty((total,), dtype=self.dtype, device=self.device)
        self.grad = xp.zeros((total,), dtype=self.dtype, device=self.device)
        self.param_views = self._views(self.param)
        self.grad_views = self._views(self.grad)
        # what sync() checks every step, one tuple per member (members and views never change)
        self._slots = [(layer, key, pv, gv, k) for k, ((layer, key, _), pv, gv)
                       in enumerate(zip(members, self.param_views, self.grad_views))]
        self.state: Any = None
        self.grouped = True  # False once its state could not be grouped (see prepare_state)
        self.records: list[Any] = []  # the members' per-parameter records (views into state)
        # the optimizer's state dict the records were last checked in (load_state_dict and
        # bind replace that dict, so a new one means: check again)
        self._states: dict[int, Any] | None = None
        self._arrays: dict[str, Any] = {}  # the state's array fields at the last sync
        for (layer, key, _), view in zip(members, self.param_views):
            view[...] = layer.params[key]
            layer.params[key] = view
        for (layer, key, _), view in zip(members, self.grad_views):
            grad = layer.grads.get(key)
            if grad is not None:
                view[...] = grad
            views = getattr(layer, "grad_views", None)
            if isinstance(views, dict):
                views[key] = view

    def forget_state(self) -> None:
        """The members' records were edited from outside (:meth:`Optimizer.rewind` took back
        their step counts, or dropped them): rebuild the flat record from them at the next
        step rather than trusting the one this unit holds."""
        self._states = None
        self.records = []

    def advance(self, steps: int) -> None:
        """Advance the flat record's step count (:meth:`nnxp.optim.Optimizer.advance`; the
        members' records are advanced through the optimizer's state dict)."""
        if self.state is not None and isinstance(getattr(self.state, "step", None), int):
            self.state.step += steps

    def gate_gradients(self, gate: Array) -> None:
        """Zero the flat gradient where the 0-d ``gate`` is false: in one in-place operation
        where the library has one (:func:`nnxp.backend.zero_unless`), else view by view (a
        temporary of one parameter's size, not of the whole unit)."""
        zero = backend.zero_unless(self.xp)
        if zero is not None:
            zero(self.grad, gate)
            return
        for view in self.grad_views:
            view[...] = gate_gradient(view, gate, xp=self.xp)

    def _views(self, flat: Array) -> list[Array]:
        views, start = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            views.append(self.xp.reshape(flat[start:start + size], shape))
            start += size
        return views

    def release(self) -> None:
        """Stop the layers writing gradients into this unit (the arrays stay valid)."""
        for (layer, key, _), view in zip(self.members, self.grad_views):
            views = getattr(layer, "grad_views", None)
            if isinstance(views, dict) and views.get(key) is view:
                del views[key]

    def sync(self) -> bool:
        """Put replaced parameters and gradients back into their slots; False when one no
        longer fits (another shape, dtype, namespace or device: rebuild the layout).

        Raises KeyError naming the key of a parameter without a gradient.
        """
        for layer, key, pv, gv, k in self._slots:
            params = layer.params
            p = params[key]
            if p is not pv:
                if not self._fits(p, k):
                    return False
                pv[...] = p
                params[key] = pv
            g = layer.grads.get(key)
            if g is not gv:  # a layer that assigns its gradients, or a user: copied in, and
                if g is None:  # the array they assigned stays theirs
                    raise KeyError(key)
                if not self._fits(g, k):
                    return False
                gv[...] = g
        return True

    def _fits(self, x: Any, k: int) -> bool:
        return (backend.is_array(x) and tuple(x.shape) == self.shapes[k]
                and x.dtype == self.dtype and x.device == self.device)

    # --- state ------------------------------------------------------------------------------

    def prepare_state(self, states: dict[int, Any], state_cls: Any, init: Any,
                      group: dict[str, Any], init_names: tuple[str, ...]) -> bool:
        """Make ``self.state`` match the members' records in ``states``.

        Fresh members (no record) get a flat record from ``init``; records from elsewhere
        (``load_state_dict``, a rebuilt layout) are copied into a flat record when their
        scalars agree and the same buffers are allocated. Returns False when they cannot be
        grouped (different step counts, say): the members are then updated one by one.
        """
        if states is self._states:  # the records this unit made, in the dict it made them in
            return True
        records = [states.get(i) for _, _, i in self.members]
        if self.records and all(a is b for a, b in zip(records, self.records)):
            self._states = states
            return True
        if all(r is None for r in records):
            options = {name: group[name] for name in init_names}
            self.state = init(self.param, xp=self.xp, **options)
        elif any(r is None for r in records):
            return False
        else:
            state = self._gather(records, state_cls)
            if state is None:
                return False
            self.state = state
        self._spread(states, state_cls)
        self._states = states
        return True

    def _gather(self, records: list[Any], state_cls: Any) -> Any:
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(state_cls):
            values = [getattr(r, f.name) for r in records]
            arrays = [backend.is_array(v) and v.ndim > 0 for v in values]
            if all(arrays):
                if any(tuple(v.shape) != s for v, s in zip(values, self.shapes)):
                    return None
                fields[f.name] = self.xp.concat(
                    [self.xp.reshape(v, (-1,)) for v in values], axis=0)
            elif any(arrays):
                return None
            elif any(v != values[0] for v in values[1:]):
                return None
            else:
                fields[f.name] = values[0]
        return state_cls(**fields)

    def _spread(self, states: dict[int, Any], state_cls: Any) -> None:
        """One per-parameter record per member whose arrays are views into ``self.state``."""
        self.records = []
        self._arrays = {}
        self._scalars = []
        for f in dataclasses.fields(state_cls):
            value = getattr(self.state, f.name)
            if backend.is_array(value) and value.ndim > 0:
                self._arrays[f.name] = value
            elif not backend.is_array(value) and value is not None:
                self._scalars.append(f.name)
            else:
                self._arrays[f.name] = value  # None: a buffer not allocated yet
        views = {name: (self._views(v) if v is not None else [None] * len(self.members))
                 for name, v in self._arrays.items()}
        for k, (_, _, i) in enumerate(self.members):
            fields = {name: views[name][k] for name in views}
            fields.update({name: getattr(self.state, name) for name in self._scalars})
            record = state_cls(**fields)
            states[i] = record
            self.records.append(record)

    def after_update(self, states: dict[int, Any], state_cls: Any) -> None:
        """Keep the members' records equal to the flat record after an update."""
        state = self.state
        for name, value in self._arrays.items():
            if getattr(state, name) is not value:  # a buffer created (momentum, AMSGrad)
                self._spread(states, state_cls)
                return
        for name in self._scalars:
            value = getattr(state, name)
            for record in self.records:
                setattr(record, name, value)
