"""Pure array-API kernels: functions of arrays and an explicit namespace ``xp``, nothing else.

A kernel never imports numpy, cupy, torch or array_api_compat, holds no state, never changes the
dtype it is given, and creates new arrays with an explicit ``dtype=`` and ``device=``. Import the
family module you need: ``from nnxp.kernels import dense, activations, losses, optimizers``.
"""

from . import activations, dense, losses, optimizers

__all__ = ["activations", "dense", "losses", "optimizers"]
