"""Pure array-API kernels: functions of arrays and an explicit namespace ``xp``, nothing else.

A kernel never imports numpy, cupy, torch or array_api_compat, holds no state, never changes the
dtype it is given, and creates new arrays with an explicit ``dtype=`` and ``device=``.
"""

from .activations import relu, relu_backward
from .dense import DenseCache, dense_backward, dense_forward
from .losses import (
    SoftmaxCrossEntropyCache,
    log_softmax,
    softmax,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
)
from .optimizers import sgd_update

__all__ = [
    "DenseCache",
    "SoftmaxCrossEntropyCache",
    "dense_backward",
    "dense_forward",
    "log_softmax",
    "relu",
    "relu_backward",
    "sgd_update",
    "softmax",
    "softmax_cross_entropy",
    "softmax_cross_entropy_backward",
]
