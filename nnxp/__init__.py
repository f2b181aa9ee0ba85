"""nnxp: neural networks whose every kernel is written once against the Python array API.

The same source runs on NumPy (CPU), CuPy (NVIDIA GPUs), PyTorch and array-api-strict; pick one
with :func:`set_backend`, :func:`use_backend` or the ``NNXP_BACKEND`` environment variable.
"""

from . import init, kernels, layers, losses, optim
from .backend import (
    BACKENDS,
    BackendError,
    BackendInfo,
    asarray,
    get_backend,
    set_backend,
    to_numpy,
    use_backend,
)
from .gradcheck import GradcheckError, GradcheckResult, gradcheck
from .layers import BackwardError
from .model import History, Sequential, TrainingDivergedError

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendError",
    "BackendInfo",
    "BackwardError",
    "GradcheckError",
    "GradcheckResult",
    "History",
    "Sequential",
    "TrainingDivergedError",
    "__version__",
    "asarray",
    "get_backend",
    "gradcheck",
    "init",
    "kernels",
    "layers",
    "losses",
    "optim",
    "set_backend",
    "to_numpy",
    "use_backend",
]
