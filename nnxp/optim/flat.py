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


def block_elements(setting: int | None, xp: Any, device: Any, dtype: Any) -> int | None:
    """Elements per block of a flat unit's update (:meth:`FlatUnit.update`) for an optimizer's
    ``update_block`` ``setting``: None, the backend's choice
    (:func:`nnxp.backend.update_block_bytes` over the dtype's size); 0, one piece (None);
    n > 0, n."""
    if setting is None:
        nbytes = backend.update_block_bytes(xp, device)
        return None if nbytes is None else max(1, nbytes // backend.itemsize(dtype))
    return int(setting) or None


def _per_element(state: Any, total: int) -> bool:
    """Whether every array of a fresh state record over ``total`` elements has one value per
    element (what a flat record needs: its arrays are split into per-parameter views)."""
    if not dataclasses.is_dataclass(state):
        return False
    return all(tuple(v.shape) == (total,) for v in
               (getattr(state, f.name) for f in dataclasses.fields(state))
               if backend.is_array(v))


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
        # the values first, each old array released as its view takes over, then the
        # gradients: binding never holds more than two copies of the parameters
        self.param = xp.empty((total,), dtype=self.dtype, device=self.device)
        self.param_views = self._views(self.param)
        for (layer, key, _), view in zip(members, self.param_views):
            view[...] = layer.params[key]
            layer.params[key] = view
        self.grad = xp.zeros((total,), dtype=self.dtype, device=self.device)
        self.grad_views = self._views(self.grad)
        self.default_block = block_elements(None, xp, self.device, self.dtype)
        """Elements per block of a blocked update on this library and device (:meth:`update`),
        None for one piece."""
        self._blocks: dict[str, Any] = {}  # the block views of the state, keyed on its arrays
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

    def advance(self, steps: int) -> bool:
        """Advance the flat record's step count (:meth:`nnxp.optim.Optimizer.advance`; the
        members' records are advanced through the optimizer's state dict); whether it has
        one."""
        if self.state is not None and isinstance(getattr(self.state, "step", None), int):
            self.state.step += steps
            return True
        return False

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

    def update(self, kernel: Any, block: int | None, *args: Any) -> None:
        """Run ``kernel(param, grad, state, *args) -> (param, state)``, an elementwise in-place
        update, over the unit: in one piece, or block by block when ``block`` (elements) is
        smaller than the unit.

        Blocked, each block's arrays stay in the CPU's cache across the kernel's operations
        (:func:`nnxp.backend.update_block_bytes`) and the kernel's temporaries are the size of
        a block. Every element gets the operations it gets in one piece: bit for bit the
        same. Each block gets a state record whose arrays are views into the flat state and
        whose scalars (``step``, NAdam's ``mu_product``) are the flat record's; the kernel
        advances every block's scalars alike, and the first block's are kept. A buffer the
        kernel creates on its first use (momentum, AMSGrad's maximum) is created per block and
        gathered into one flat buffer, once.
        """
        total = self.param.shape[0]
        if block is None or total <= block:
            _, self.state = kernel(self.param, self.grad, self.state, *args)
            return
        state = self.state
        fields = self._block_fields(state, block, total)
        scalars = {name: getattr(state, name) for name in fields["scalars"]}
        made: dict[str, tuple[Array, int]] = {}  # buffers made on their first use, gathered
        first = None
        for (lo, hi), views in zip(fields["bounds"], fields["views"]):
            p = self.param[lo:hi]
            record = type(state)(**views, **scalars)
            new_p, record = kernel(p, self.grad[lo:hi], record, *args)
            if new_p is not p:  # a kernel that returned a new array: copied into its block
                p[...] = new_p
            for name in fields["arrays"]:  # likewise for a state array
                value = getattr(record, name)
                if value is not views[name]:
                    views[name][...] = value
            for name in fields["none"]:
                value = getattr(record, name)
                if value is not None:  # straight into one flat buffer: no second copy
                    buf, count = made.get(name) or (
                        self.xp.empty((total,), dtype=value.dtype, device=self.device), 0)
                    buf[lo:hi] = value
                    made[name] = (buf, count + 1)
            first = record if first is None else first
        for name in fields["scalars"]:
            setattr(state, name, getattr(first, name))
        for name, (buf, count) in made.items():
            if count != len(fields["bounds"]):
                raise RuntimeError(f"{type(state).__name__}.{name} was created for some blocks "
                                   "of a flat unit and not others: the update rule is not "
                                   "elementwise (set optimizer.update_block = 0)")
            setattr(state, name, buf)

    def _block_fields(self, state: Any, block: int, total: int) -> dict[str, Any]:
        """The block bounds, the state's fields by kind and each block's views of the state's
        flat arrays (cached while the state holds the same arrays). Every array of a grouped
        flat record has one value per element (:meth:`prepare_state` groups nothing else)."""
        arrays, none, scalars = [], [], []
        for f in dataclasses.fields(state):
            value = getattr(state, f.name)
            if value is None:
                none.append(f.name)
            elif backend.is_array(value):
                arrays.append(f.name)
            else:
                scalars.append(f.name)
        key = (block, type(state), tuple(id(getattr(state, name)) for name in arrays),
               tuple(none))
        cached = self._blocks
        if cached.get("key") == key:
            return cached
        # blocks of about equal size, none above ``block`` (what a memory plan assumes), each
        # starting on a multiple of 16 elements where blocks are that large (aligned for SIMD)
        size = -(-total // -(-total // block))
        if block >= 16:
            size = min(block, -(-size // 16) * 16)
        bounds = [(lo, min(lo + size, total)) for lo in range(0, total, size)]
        views = [{**{name: getattr(state, name)[lo:hi] for name in arrays},
                  **{name: None for name in none}} for lo, hi in bounds]
        self._blocks = {"key": key, "bounds": bounds, "views": views, "arrays": arrays,
                        "none": none, "scalars": scalars}
        return self._blocks

    def _views(self, flat: Array) -> list[Array]:
        views, start = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            views.append(self.xp.reshape(flat[start:start + size], shape))
            start += size
        return views

    def holds_gradients(self) -> bool:
        """Whether every member's ``layer.grads[key]`` is its view into :attr:`grad` (as after
        a backward pass that wrote into the views): the buffer then holds exactly the members'
        current gradients, and nothing else."""
        for layer, key, _, gv, _ in self._slots:
            if layer.grads.get(key) is not gv:
                return False
        return True

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
            state = init(self.param, xp=self.xp, **options)
            if not _per_element(state, self.param.shape[0]):
                return False  # e.g. a user's 0-d device counter: one record per parameter
            self.state = state
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
            if any(backend.is_array(v) and v.ndim == 0 for v in values):
                return None  # a 0-d array per parameter (a device counter): not groupable
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
