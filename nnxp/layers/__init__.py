"""Layers: thin stateful objects over the kernels, one module per family.

See :mod:`nnxp.layers.base` for the layer protocol every layer follows.
"""

from .activations import (
    ACTIVATIONS,
    ELU,
    GELU,
    SELU,
    Identity,
    LeakyReLU,
    Maxout,
    PiecewiseLinear,
    PReLU,
    ReLU,
    RReLU,
    Sigmoid,
    Sign,
    SiLU,
    Softmax,
    Softplus,
    Step,
    Tanh,
    get_activation,
)
from .base import BackwardError, Layer
from .core import Dense
from .normalization import BatchNorm1d, LayerNorm
from .preprocessing import Standardize
from .regularization import Dropout

__all__ = [
    "ACTIVATIONS",
    "ELU",
    "GELU",
    "Identity",
    "LeakyReLU",
    "Maxout",
    "PReLU",
    "PiecewiseLinear",
    "RReLU",
    "SELU",
    "SiLU",
    "Sigmoid",
    "Sign",
    "Softmax",
    "Softplus",
    "Standardize",
    "Step",
    "Tanh",
    "get_activation",
    "BackwardError",
    "BatchNorm1d",
    "Dense",
    "Dropout",
    "Layer",
    "LayerNorm",
    "ReLU",
]
