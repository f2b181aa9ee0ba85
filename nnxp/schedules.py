"""Learning-rate schedules (torch.optim.lr_scheduler semantics and values).

Each schedule except :class:`ReduceLROnPlateau` is a pure function of the epoch,
:meth:`Schedule.lr_at(epoch, base_lr) <Schedule.lr_at>`, where ``epoch`` counts *completed*
epochs (0 before training starts) and ``base_lr`` is a parameter group's learning rate when the
schedule was attached (stored as ``group["initial_lr"]``, as torch does). Attached to an
optimizer — ``StepLR(optimizer, step_size=30)`` or later with ``schedule.bind(optimizer)`` — it
edits every parameter group's ``"lr"``:

* on attaching, the groups get ``lr_at(0, base)``;
* ``schedule.step()`` moves to the next epoch and applies ``lr_at``; ``schedule.step(epoch=e)``
  jumps to epoch ``e``. Call it once per epoch, *after* the epoch's updates, as with torch.

:class:`ReduceLROnPlateau` instead reacts to a monitored value: ``schedule.step(val_loss)``
(``metric`` is its first positional argument; ``requires_metric`` is True so that a
``LearningRateScheduler`` callback knows to pass it).

The values equal torch's closed forms; torch computes most schedules recursively (each lr from
the previous one), which agrees to rounding error (≈1e-16 relative).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

from .validation import check_choice, check_int, check_real_range


class Schedule:
    """Base class: attaching to an optimizer, stepping, and saving the position.

    Subclasses implement :meth:`lr_at`.
    """

    requires_metric = False

    def __init__(self, optimizer: Any = None) -> None:
        self.optimizer: Any = None
        self.base_lrs: list[float] = []
        self.last_epoch = 0
        self._last_lr: list[float] = []
        if optimizer is not None:
            self.bind(optimizer)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        """The learning rate after ``epoch`` completed epochs for a group starting at base_lr."""
        raise NotImplementedError

    def bind(self, optimizer: Any) -> Schedule:
        """Attach to ``optimizer`` (anything with ``param_groups``) and apply epoch 0.

        Each group's ``"initial_lr"`` is set to its current ``"lr"`` unless present already
        (e.g. from a resumed optimizer), and becomes that group's base rate.
        """
        groups = getattr(optimizer, "param_groups", None)
        if not groups or not all(isinstance(g, dict) and "lr" in g for g in groups):
            raise TypeError(f"{type(self).__name__} needs an optimizer with param_groups "
                            f"holding 'lr', got {optimizer!r}")
        self.optimizer = optimizer
        self.base_lrs = [float(g.setdefault("initial_lr", g["lr"])) for g in groups]
        self.last_epoch = 0
        self._apply()
        return self

    def _require(self) -> Any:
        if self.optimizer is None:
            raise RuntimeError(f"{type(self).__name__}.step() before it is attached: pass the "
                               "optimizer to the constructor or call schedule.bind(optimizer)")
        return self.optimizer

    def _apply(self) -> list[float]:
        groups = self._require().param_groups
        lrs = [self.lr_at(self.last_epoch, base) for base in self.base_lrs]
        for group, lr in zip(groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs
        return lrs

    def step(self, epoch: int | None = None, metric: float | None = None) -> list[float]:
        """Advance one epoch (or jump to ``epoch``) and set every group's lr; returns them.

        ``metric`` is accepted for a uniform callback interface and ignored here.
        """
        self._require()
        if epoch is None:
            self.last_epoch += 1
        else:
            self.last_epoch = check_int(epoch, argument=f"{type(self).__name__}: epoch", low=0)
        return self._apply()

    def get_last_lr(self) -> list[float]:
        """The learning rates set by the last ``bind``/``step``, one per group."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """``{"last_epoch": int, "base_lrs": [float, ...]}``."""
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a saved position (re-applies the learning rate when attached)."""
        self.last_epoch = int(state["last_epoch"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        if self.optimizer is not None:
            self._apply()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._options().items())
        return f"{type(self).__name__}({opts})"

    def _options(self) -> dict[str, Any]:
        return {}


class StepLR(Schedule):
    """Decay by ``gamma`` every ``step_size`` epochs: ``lr = base · γ^⌊epoch / step_size⌋``.

    torch.optim.lr_scheduler.StepLR. Parameters: ``step_size`` (int >= 1), ``gamma`` (> 0,
    default 0.1).
    """

    def __init__(self, optimizer: Any = None, *, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = check_int(step_size, argument="StepLR: step_size", low=1)
        self.gamma = check_real_range(gamma, argument="StepLR: gamma", low=0.0, low_open=True)
        super().__init__(optimizer)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        return base_lr * self.gamma ** (epoch // self.step_size)

    def _options(self) -> dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma}


class MultiStepLR(Schedule):
    """Decay by ``gamma`` at each milestone: ``lr = base · γ^{#\\{m ∈ milestones : m <= epoch\\}}``.

    torch.optim.lr_scheduler.MultiStepLR (a milestone listed twice decays twice). Parameters:
    ``milestones`` (ints >= 1, sorted here), ``gamma`` (> 0, default 0.1).
    """

    def __init__(self, optimizer: Any = None, *, milestones: Sequence[int],
                 gamma: float = 0.1) -> None:
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
            raise ValueError(f"MultiStepLR: milestones must be a list of ints, got "
                             f"{milestones!r}")
        self.milestones = sorted(check_int(m, argument="MultiStepLR: milestones[]", low=1)
                                 for m in milestones)
        self.gamma = check_real_range(gamma, argument="MultiStepLR: gamma", low=0.0,
                                      low_open=True)
        super().__init__(optimizer)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)

    def _options(self) -> dict[str, Any]:
        return {"milestones": self.milestones, "gamma": self.gamma}


class ExponentialLR(Schedule):
    """Decay by ``gamma`` every epoch: ``lr = base · γ^epoch``.

    torch.optim.lr_scheduler.ExponentialLR. Parameter: ``gamma`` (> 0).
    """

    def __init__(self, optimizer: Any = None, *, gamma: float) -> None:
        self.gamma = check_real_range(gamma, argument="ExponentialLR: gamma", low=0.0,
                                      low_open=True)
        super().__init__(optimizer)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        return base_lr * self.gamma**epoch

    def _options(self) -> dict[str, Any]:
        return {"gamma": self.gamma}


class CosineAnnealingLR(Schedule):
    """Cosine annealing from ``base`` down to ``eta_min`` over ``T_max`` epochs.

    .. math::
        lr = η_{min} + (base − η_{min}) \\frac{1 + \\cos(π \\, epoch / T_{max})}{2}

    torch.optim.lr_scheduler.CosineAnnealingLR (Loshchilov & Hutter (2017), "SGDR: stochastic
    gradient descent with warm restarts", without the restarts). Past ``T_max`` the cosine goes on,
    so the rate climbs back towards ``base`` over the next ``T_max`` epochs, as torch's does; stop
    stepping (or use ``epoch <= T_max``) for a rate that stays at ``eta_min``.
    Parameters: ``T_max`` (int >= 1), ``eta_min`` (>= 0, default 0).
    """

    def __init__(self, optimizer: Any = None, *, T_max: int, eta_min: float = 0.0) -> None:  # noqa: N803
        self.T_max = check_int(T_max, argument="CosineAnnealingLR: T_max", low=1)
        self.eta_min = check_real_range(eta_min, argument="CosineAnnealingLR: eta_min")
        super().__init__(optimizer)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2

    def _options(self) -> dict[str, Any]:
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class LinearWarmup(Schedule):
    """Linear warm-up from ``start_factor · base`` to ``base``, then optionally ``after``.

    .. math::
        lr = base \\Big(f_0 + (1 − f_0) \\frac{epoch}{W}\\Big) \\quad (epoch < W), \\qquad
        lr = \\text{after.lr\\_at}(epoch − W, base) \\quad (epoch \\ge W)

    (or ``base`` when there is no ``after``). The warm-up part is
    torch.optim.lr_scheduler.LinearLR(start_factor=f₀, end_factor=1, total_iters=W); with
    ``after`` it matches SequentialLR([LinearLR(...), after], milestones=[W]). Goyal et al. (2017),
    "Accurate, large minibatch SGD: training ImageNet in 1 hour" motivates the warm-up.

    Parameters
    ----------
    warmup_epochs
        W (int >= 1), default 5.
    start_factor
        f₀ in (0, 1], default 1/3 (torch's LinearLR default).
    after
        An unattached schedule to follow the warm-up, its epochs counted from the end of it.
    """

    def __init__(self, optimizer: Any = None, *, warmup_epochs: int = 5,
                 start_factor: float = 1.0 / 3, after: Schedule | None = None) -> None:
        self.warmup_epochs = check_int(warmup_epochs, argument="LinearWarmup: warmup_epochs",
                                       low=1)
        self.start_factor = check_real_range(start_factor, argument="LinearWarmup: start_factor",
                                             low=0.0, low_open=True, high=1.0)
        if after is not None and (not isinstance(after, Schedule) or after.requires_metric):
            raise ValueError(f"LinearWarmup: after must be an epoch schedule such as "
                             f"CosineAnnealingLR(T_max=...), got {after!r}")
        self.after = after
        super().__init__(optimizer)

    def lr_at(self, epoch: int, base_lr: float) -> float:
        w = self.warmup_epochs
        if epoch < w:
            return base_lr * (self.start_factor + (1.0 - self.start_factor) * epoch / w)
        if self.after is not None:
            return self.after.lr_at(epoch - w, base_lr)
        return base_lr

    def _options(self) -> dict[str, Any]:
        return {"warmup_epochs": self.warmup_epochs, "start_factor": self.start_factor,
                "after": self.after}


class ReduceLROnPlateau(Schedule):
    """Multiply the learning rate by ``factor`` when a monitored value stops improving.

    torch.optim.lr_scheduler.ReduceLROnPlateau. After each epoch, ``step(value)``:

    1. ``value`` is *better* than the best so far when (``mode="min"``) ``value < best·(1 −
       threshold)`` (``threshold_mode="rel"``) or ``value < best − threshold`` (``"abs"``);
       mirrored for ``mode="max"``. A better value resets the count of bad epochs, a worse one
       adds 1;
    2. during a cool-down (``cooldown`` epochs after a reduction) the bad epochs are not counted;
    3. once the count exceeds ``patience``, every group's lr becomes ``max(lr · factor, min_lr)``
       (changes smaller than ``eps`` are skipped), the cool-down starts and the count resets.

    Parameters
    ----------
    mode
        ``"min"`` (a loss) or ``"max"`` (an accuracy).
    factor
        In [0, 1), default 0.1.
    patience
        Bad epochs tolerated before reducing (int >= 0), default 10.
    threshold, threshold_mode
        What counts as an improvement; default 1e-4 relative.
    cooldown
        Epochs to wait after a reduction (int >= 0).
    min_lr
        Floor (a float, or one per group).
    eps
        Minimal change worth applying, default 1e-8.
    """

    requires_metric = True

    def __init__(self, optimizer: Any = None, *, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float | Sequence[float] = 0.0,
                 eps: float = 1e-8) -> None:
        n = "ReduceLROnPlateau"
        self.mode = check_choice(mode, ("min", "max"), argument=f"{n}: mode")
        self.threshold_mode = check_choice(threshold_mode, ("rel", "abs"),
                                           argument=f"{n}: threshold_mode")
        self.factor = check_real_range(factor, argument=f"{n}: factor", high=1.0, high_open=True)
        self.patience = check_int(patience, argument=f"{n}: patience", low=0)
        self.threshold = check_real_range(threshold, argument=f"{n}: threshold")
        self.cooldown = check_int(cooldown, argument=f"{n}: cooldown", low=0)
        self.eps = check_real_range(eps, argument=f"{n}: eps")
        if isinstance(min_lr, (list, tuple)):
            self._min_lrs: list[float] | None = [
                check_real_range(m, argument=f"{n}: min_lr[]") for m in min_lr]
            self.min_lr: Any = list(self._min_lrs)
        else:
            self.min_lr = check_real_range(min_lr, argument=f"{n}: min_lr")
            self._min_lrs = None
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        super().__init__(optimizer)

    def bind(self, optimizer: Any) -> Schedule:
        """Attach to ``optimizer``; the learning rates are left as they are."""
        groups = getattr(optimizer, "param_groups", None)
        if not groups or not all(isinstance(g, dict) and "lr" in g for g in groups):
            raise TypeError(f"ReduceLROnPlateau needs an optimizer with param_groups holding "
                            f"'lr', got {optimizer!r}")
        if self._min_lrs is not None and len(self._min_lrs) != len(groups):
            raise ValueError(f"ReduceLROnPlateau: min_lr has {len(self._min_lrs)} entries but "
                             f"the optimizer has {len(groups)} parameter groups")
        self.optimizer = optimizer
        self.base_lrs = [float(g["lr"]) for g in groups]
        self._last_lr = list(self.base_lrs)
        self.last_epoch = 0
        return self

    def lr_at(self, epoch: int, base_lr: float) -> float:
        raise TypeError("ReduceLROnPlateau depends on the monitored values, not on the epoch "
                        "alone: call step(value) once per epoch")

    def is_better(self, value: float, best: float) -> bool:
        """Whether ``value`` improves on ``best`` under ``mode`` and ``threshold``."""
        if self.mode == "min":
            bound = best * (1 - self.threshold) if self.threshold_mode == "rel" \
                else best - self.threshold
            return value < bound
        bound = best * (1 + self.threshold) if self.threshold_mode == "rel" \
            else best + self.threshold
        return value > bound

    def step(self, metric: float | None = None, epoch: int | None = None) -> list[float]:  # type: ignore[override]
        """Record this epoch's monitored ``metric`` and reduce the rates if it has plateaued."""
        groups = self._require().param_groups
        if metric is None:
            raise ValueError("ReduceLROnPlateau.step needs the monitored value, e.g. "
                             "schedule.step(val_loss)")
        value = float(metric)
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        if self.is_better(value, self.best):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            mins = self._min_lrs or [float(self.min_lr)] * len(groups)
            for group, floor in zip(groups, mins):
                old = float(group["lr"])
                new = max(old * self.factor, floor)
                if old - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [float(g["lr"]) for g in groups]
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "best": self.best,
                "num_bad_epochs": self.num_bad_epochs, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_epoch = int(state["last_epoch"])
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])

    def _options(self) -> dict[str, Any]:
        return {"mode": self.mode, "factor": self.factor, "patience": self.patience,
                "threshold": self.threshold, "threshold_mode": self.threshold_mode,
                "cooldown": self.cooldown, "min_lr": self.min_lr}


SCHEDULES: dict[str, type[Schedule]] = {
    "step": StepLR, "multistep": MultiStepLR, "exponential": ExponentialLR,
    "cosine": CosineAnnealingLR, "warmup": LinearWarmup, "plateau": ReduceLROnPlateau,
}
"""Every schedule class by short name."""
