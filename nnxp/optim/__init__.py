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
Per-parameter state (moment estimates, momentum buffers, step counts) is a typed record per
optimizer (``optimizer.state[i]`` is e.g. an :class:`~nnxp.kernels.optimizers.AdamState` with
fields ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``), created on the first step with
the parameter's dtype and device; its buffers are updated in place on mutable backends.
``state_dict()`` returns it as plain NumPy arrays and Python numbers, and ``load_state_dict()``
moves such a dict onto whatever backend the parameters live on when next bound or stepped.
Binding again to the same parameters (same layers, same keys, same order) keeps the state, so
``fit`` can be called repeatedly; binding to different parameters starts afresh.

Modules
-------
:mod:`~nnxp.optim.base` (the :class:`Optimizer` base and the :class:`Hyperparameters` record),
:mod:`~nnxp.optim.sgd`, :mod:`~nnxp.optim.adaptive` (Adagrad, RMSprop, Adadelta),
:mod:`~nnxp.optim.adam` (Adam, AdamW, Adamax, NAdam), :mod:`~nnxp.optim.lbfgs` and
:mod:`~nnxp.optim.clipping`. Each first-order optimizer is a declaration — hyperparameters, state
record, kernels — and :mod:`~nnxp.optim.base` holds the one step loop that runs them all.
"""

from __future__ import annotations

from typing import Any

from .adam import Adam, Adamax, AdamW, NAdam
from .adaptive import Adadelta, Adagrad, RMSprop
from .base import Hyperparameters, Optimizer, ParamRef, hyperparameter
from .clipping import clip_grad_norm_, clip_grad_value_
from .lbfgs import LBFGS
from .sgd import SGD

__all__ = [
    "OPTIMIZERS", "SGD", "Adadelta", "Adagrad", "Adam", "AdamW", "Adamax", "Hyperparameters",
    "LBFGS", "NAdam", "Optimizer", "ParamRef", "RMSprop", "clip_grad_norm_", "clip_grad_value_",
    "get_optimizer", "hyperparameter",
]

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
