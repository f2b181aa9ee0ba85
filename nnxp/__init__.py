"""nnxp: neural networks whose every kernel is written once against the Python array API.

The same source runs on NumPy (CPU), CuPy (NVIDIA GPUs), PyTorch and array-api-strict; pick one
with :func:`set_backend`, :func:`use_backend` or the ``NNXP_BACKEND`` environment variable.
"""

from . import (
    callbacks,
    data,
    datasets,
    diagnostics,
    init,
    io,
    kernels,
    layers,
    losses,
    metrics,
    optim,
    schedules,
)
from ._version import __version__
from .backend import (
    BACKENDS,
    BackendError,
    BackendInfo,
    asarray,
    get_backend,
    get_memory_budget,
    get_tf32,
    set_backend,
    set_memory_budget,
    set_tf32,
    tf32,
    to_numpy,
    use_backend,
)
from .gradcheck import GradcheckError, GradcheckResult, gradcheck
from .init import SymmetryWarning
from .io import FormatError, load
from .layers import BackwardError
from .model import Sequential
from .perceptron import Perceptron
from .training import History, MemoryPlanError, TrainingDivergedError

__all__ = [
    "BACKENDS",
    "BackendError",
    "BackendInfo",
    "BackwardError",
    "FormatError",
    "GradcheckError",
    "GradcheckResult",
    "History",
    "MemoryPlanError",
    "Perceptron",
    "Sequential",
    "SymmetryWarning",
    "TrainingDivergedError",
    "__version__",
    "asarray",
    "callbacks",
    "data",
    "datasets",
    "diagnostics",
    "get_backend",
    "get_memory_budget",
    "get_tf32",
    "gradcheck",
    "init",
    "io",
    "load",
    "kernels",
    "layers",
    "losses",
    "metrics",
    "optim",
    "schedules",
    "set_backend",
    "set_memory_budget",
    "set_tf32",
    "tf32",
    "to_numpy",
    "use_backend",
]
