"""L-BFGS with torch's stopping rules and its strong-Wolfe line search (full batch)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

from .. import backend
from ..kernels import optimizers as k
from ..typing import Array
from ..validation import check_above_zero, check_choice, check_count, check_nonneg
from . import base
from .base import Optimizer, gradient, hyperparameter, record_items, xp_of


@dataclass
class LBFGSState:
    """What L-BFGS carries from one :meth:`LBFGS.step` call to the next (torch's names).

    ``old_dirs`` / ``old_stps`` hold the curvature pairs ``y`` / ``s`` (oldest first) and ``ro``
    their ``1 / yᵀs`` (0-d arrays on the device, so the recursion never reads back); ``d`` and
    ``t`` are the last direction and step length, ``H_diag`` the
    initial Hessian scaling; ``prev_flat_grad`` / ``prev_loss`` the gradient and loss before the
    last move; the counters add up over every call.
    """

    func_evals: int = 0
    n_iter: int = 0
    d: Array | None = None
    t: float | None = None
    old_dirs: list[Array] = field(default_factory=list)
    old_stps: list[Array] = field(default_factory=list)
    ro: list[Any] = field(default_factory=list)  # 0-d arrays (floats when loaded from a file)
    H_diag: Any = 1.0  # noqa: N815 - torch's name, kept in checkpoints; a 0-d array or float
    prev_flat_grad: Array | None = None
    prev_loss: float | None = None


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

    @dataclass(frozen=True)
    class Hyperparameters(base.Hyperparameters):
        lr: float = hyperparameter(1.0, check_above_zero)
        max_iter: int = hyperparameter(20, check_count)
        max_eval: int | None = hyperparameter(None, check_count)  # None: max_iter * 5 // 4
        tolerance_grad: float = hyperparameter(1e-7, check_nonneg)
        tolerance_change: float = hyperparameter(1e-9, check_nonneg)
        history_size: int = hyperparameter(100, check_count)
        line_search_fn: str | None = hyperparameter(
            None, partial(check_choice, choices=(None, "strong_wolfe")))

        def __post_init__(self) -> None:
            if self.max_eval is None and isinstance(self.max_iter, numbers.Integral) \
                    and not isinstance(self.max_iter, bool):
                object.__setattr__(self, "max_eval", int(self.max_iter) * 5 // 4)
            super().__post_init__()

    requires_closure = True
    group_options: ClassVar[tuple[str, ...]] = ()  # one group: torch's L-BFGS has no others

    # --- flat vectors ---------------------------------------------------------------------

    def _xp(self) -> Any:
        return xp_of(*self._refs[0])

    def _flat_grad(self) -> Array:
        xp = self._xp()
        return xp.concat([xp.reshape(gradient(layer, key), (-1,)) for layer, key in self._refs])

    def _clone_params(self) -> list[Array]:
        xp = self._xp()
        return [xp.asarray(layer.params[key], copy=True) for layer, key in self._refs]

    def _set_params(self, values: list[Array]) -> None:
        for i, ((layer, key), v) in enumerate(zip(self._refs, values)):
            layer.params[key] = k.assign(layer.params[key], v, self._inplace[i])

    def _add_step(self, t: float, d: Array) -> None:
        xp = self._xp()
        offset = 0
        for i, (layer, key) in enumerate(self._refs):
            p = layer.params[key]
            n = math.prod(p.shape)
            chunk = xp.reshape(d[offset:offset + n], p.shape)
            layer.params[key] = k.add_scaled(p, chunk, t, self._inplace[i])
            offset += n

    def _dot(self, a: Array, b: Array) -> Array:
        """``aᵀb`` as a 0-d array: stays on the device."""
        return self._xp().sum(a * b)

    def _absmax(self, a: Array) -> Array:
        """``max |a|`` as a 0-d array: stays on the device."""
        xp = self._xp()
        return xp.max(xp.abs(a))

    def _read(self, *values: Any) -> list[float]:
        """Python floats of 0-d arrays (and of numbers, passed through), with one transfer.

        The arrays are stacked on the device and copied to the host together: every host
        read of a step goes through here, so the count per step is the number of calls.
        """
        arrays = [v for v in values if not isinstance(v, numbers.Real)]
        if len(arrays) > 1:
            xp = self._xp()
            dtypes = {a.dtype for a in arrays}
            if len(dtypes) > 1:
                arrays = [xp.astype(a, xp.float64) for a in arrays]
            try:
                host = iter(backend.to_numpy(xp.stack(arrays)).tolist())
            except (TypeError, ValueError, RuntimeError):  # a closure's loss on another device
                host = iter([backend.to_float(a) for a in arrays])
        else:
            host = iter([backend.to_float(a) for a in arrays])
        return [float(v) if isinstance(v, numbers.Real) else next(host) for v in values]

    def _evaluate(self, closure: Callable[[], Any], x: list[Array], t: float,
                  d: Array) -> tuple[float, Array, float]:
        """``(f, g, gᵀd)`` at ``x + t d``, the parameters left at ``x``; one host read."""
        self._add_step(t, d)
        loss = closure()
        g = self._flat_grad()
        self._set_params(x)
        loss_f, gtd = self._read(loss, self._dot(g, d))
        return loss_f, g, gtd

    # --- the step -------------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None, *, gate: Any = None) -> Any:
        """Run up to ``max_iter`` L-BFGS iterations; returns the closure's first loss.

        ``gate`` (the first-order optimizers' device-side gate) is not supported: L-BFGS reads
        the host every iteration anyway, and ``fit`` never passes one to it.

        Host reads (device-to-host transfers; several 0-d arrays are stacked into one): the
        closure's loss when it returns an array (``fit``'s closure returns a float, read
        there: one per evaluation either way); one when the step starts (``max|g|`` and the
        curvature ``yᵀs`` of the pending pair); per iteration, one for ``gᵀd`` (the descent
        test) and one after the move for the stopping tests (``max|g|``, ``max|t d|``) with
        the next pair's ``yᵀs``; with ``line_search_fn="strong_wolfe"``, per function
        evaluation of the line search one more for its ``gᵀd``, which its branches need. A
        step of ``m = max_iter`` iterations without a line search or early stop, under
        ``fit``, reads ``3m`` times whatever the history length: the two-loop recursion keeps
        its inner products, ``ρ`` and the Hessian scaling on the device as 0-d arrays (torch
        reads ``yᵀs``, ``gᵀd`` and the stopping tests back the same way).
        """
        if gate is not None:
            raise TypeError("LBFGS.step() takes no gate: it is a closure optimizer that checks "
                            "its values on the host")
        if closure is None:
            raise TypeError("LBFGS.step needs a closure: a function that recomputes the loss on "
                            "the full batch, fills the gradients (e.g. via "
                            "model.loss_and_grads(X, y)) and returns the loss")
        self._require_bound()
        if self._pending is not None:
            self._materialize()
        group = self.param_groups[-1]
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tol_grad, tol_change = group["tolerance_grad"], group["tolerance_change"]
        history_size = group["history_size"]
        st = self.state.get(0)
        if st is None:
            st = self.state[0] = LBFGSState()
        xp = self._xp()

        orig_loss = closure()
        current_evals = 1
        st.func_evals += 1
        flat_grad = self._flat_grad()
        self.iterations += 1

        d: Any = st.d
        t: Any = st.t
        h_diag = st.H_diag
        old_dirs, old_stps, ro = st.old_dirs, st.old_stps, st.ro
        prev_flat_grad, prev_loss = st.prev_flat_grad, st.prev_loss

        # read together: the loss, max|g|, and what the first iteration will need on the host
        pair = self._pair(flat_grad, prev_flat_grad, d, t) if st.n_iter > 0 else None
        first = xp.sum(xp.abs(flat_grad)) if st.n_iter == 0 else 0.0
        loss, g_max, abs_sum, ys_f = self._read(
            orig_loss, self._absmax(flat_grad), first, 0.0 if pair is None else pair[2])
        if g_max <= tol_grad:
            return orig_loss

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            st.n_iter += 1
            if st.n_iter == 1:
                d = -flat_grad
                old_dirs, old_stps, ro, h_diag = [], [], [], 1.0
            else:
                assert pair is not None
                y, s, ys = pair
                if ys_f > 1e-10:
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
            if st.n_iter == 1:
                t = min(1.0, 1.0 / abs_sum) * lr
            else:
                t = lr
            strong_wolfe = group["line_search_fn"] == "strong_wolfe"
            if strong_wolfe:
                gtd, d_norm = self._read(self._dot(flat_grad, d), self._absmax(d))
            else:
                (gtd,) = self._read(self._dot(flat_grad, d))
            if gtd > -tol_change:
                break

            ls_evals = 0
            d_max = math.inf
            if strong_wolfe:
                x_init = self._clone_params()

                def obj(x: list[Array], step: float,
                        direction: Array) -> tuple[float, Array, float]:
                    return self._evaluate(closure, x, step, direction)

                loss, flat_grad, t, ls_evals = self._strong_wolfe(
                    obj, x_init, t, d, loss, flat_grad, gtd, d_norm, tolerance_change=tol_change)
                self._add_step(t, d)
                pair = self._pair(flat_grad, prev_flat_grad, d, t)
                g_max, d_max, ys_f = self._read(self._absmax(flat_grad), self._absmax(d * t),
                                                pair[2])
                opt_cond = g_max <= tol_grad
            else:
                self._add_step(t, d)
                opt_cond = False
                if n_iter != max_iter:
                    value = closure()
                    flat_grad = self._flat_grad()
                    pair = self._pair(flat_grad, prev_flat_grad, d, t)
                    loss, g_max, d_max, ys_f = self._read(
                        value, self._absmax(flat_grad), self._absmax(d * t), pair[2])
                    opt_cond = g_max <= tol_grad
                    ls_evals = 1
            current_evals += ls_evals
            st.func_evals += ls_evals

            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if d_max <= tol_change:
                break
            if abs(loss - prev_loss) < tol_change:
                break

        st.d, st.t, st.H_diag = d, t, h_diag
        st.old_dirs, st.old_stps, st.ro = old_dirs, old_stps, ro
        st.prev_flat_grad, st.prev_loss = prev_flat_grad, prev_loss
        return orig_loss

    def _pair(self, flat_grad: Array, prev_flat_grad: Array, d: Array,
              t: float) -> tuple[Array, Array, Array]:
        """The curvature pair of the last move, ``(y, s, yᵀs)``, all on the device."""
        y = flat_grad - prev_flat_grad
        s = d * t
        return y, s, self._dot(y, s)

    def _strong_wolfe(
        self, obj: Callable[[list[Array], float, Array], tuple[float, Array, float]],
        x: list[Array], t: float, d: Array, f: float, g: Array, gtd: float, d_norm: float, *,
        c1: float = 1e-4, c2: float = 0.9, tolerance_change: float = 1e-9, max_ls: int = 25,
    ) -> tuple[float, Array, float, int]:
        """torch's strong-Wolfe search: bracketing, then zoom with safeguarded cubic steps.

        ``d_norm = max|d|``; ``obj`` returns the loss, gradient and ``gᵀd`` (one host read).
        """
        f_new, g_new, gtd_new = obj(x, t, d)
        evals = 1
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
            f_new, g_new, gtd_new = obj(x, t, d)
            evals += 1
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
            f_new, g_new, gtd_new = obj(x, t, d)
            evals += 1
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

    def _export_state(self) -> dict[int, dict[str, Any]]:
        """The L-BFGS memory, curvature pairs stacked as ``(k, n)`` NumPy arrays."""
        st = self.state.get(0)
        if st is None:
            return {}
        saved: dict[str, Any] = {}
        for name, value in record_items(st):
            if name in ("old_dirs", "old_stps"):
                saved[name] = _stack_rows(value) if value else None
            elif name == "ro":
                saved[name] = [backend.to_float(r) for r in value]
            elif name == "H_diag":  # a 0-d array after the first pair: saved as a float
                saved[name] = backend.to_float(value)
            elif backend.is_array(value):
                saved[name] = backend.to_numpy(value).copy()
            elif value is not None:
                saved[name] = value
        return {0: saved}

    def _materialize(self) -> None:
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

        known = {f.name for f in dataclasses.fields(LBFGSState)}
        unknown = sorted(set(saved) - known)
        if unknown:
            raise ValueError(f"LBFGS.load_state_dict: unknown state entries {unknown}; L-BFGS "
                             f"keeps {sorted(known)}")
        entry: dict[str, Any] = {}
        for name, value in saved.items():
            if name in ("old_dirs", "old_stps"):
                entry[name] = [] if value is None else [move(row) for row in value]
            elif name == "ro":
                entry[name] = [float(r) for r in value]
            elif backend.is_array(value) and getattr(value, "ndim", 0) > 0:
                entry[name] = move(value)
            elif backend.is_array(value):
                entry[name] = value.item()
            else:
                entry[name] = value
        self.state[0] = LBFGSState(**entry)


def _stack_rows(rows: list[Array]) -> Any:
    """Stack 1-D arrays of any backend into one 2-D NumPy array (for state_dict)."""
    return backend.to_numpy([backend.to_numpy(r) for r in rows])

