"""scikit-learn's own MLP test suite, run against nnxp's estimators.

The module ``sklearn/neural_network/tests/test_mlp.py`` of the installed scikit-learn is read
at test time, its one import of the estimators is pointed at :mod:`nnxp.sklearn`, and its test
functions are collected here, with their own parametrisations. Nothing of it is copied into this
repository. Tests that read scikit-learn's private internals are expected to fail, each with
its reason (``docs/sklearn.md`` lists them too).
"""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

pytest.importorskip("sklearn")

_IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor"

# test name -> why it cannot pass against nnxp's estimators
PRIVATE: dict[str, str] = {}


def _load() -> types.ModuleType | None:
    spec = importlib.util.find_spec("sklearn.neural_network.tests.test_mlp")
    if spec is None or spec.origin is None:  # a wheel without its tests
        return None
    with open(spec.origin, encoding="utf-8") as file:
        source = file.read()
    if source.count(_IMPORT) != 1:
        raise RuntimeError(f"{spec.origin} no longer holds {_IMPORT!r}; update this loader")
    source = source.replace(_IMPORT, "from nnxp.sklearn import MLPClassifier, MLPRegressor")
    module = types.ModuleType("sklearn_test_mlp_against_nnxp")
    module.__file__ = spec.origin
    sys.modules[module.__name__] = module
    exec(compile(source, spec.origin, "exec"), module.__dict__)
    return module


_suite = _load()
if _suite is None:
    pytest.skip("the installed scikit-learn ships without its tests", allow_module_level=True)


@pytest.fixture
def global_random_seed() -> int:
    """scikit-learn's conftest fixture, at its default value."""
    return 42


for _name, _test in vars(_suite).items():
    if _name.startswith("test_") and callable(_test):
        if _name in PRIVATE:
            _test = pytest.mark.xfail(reason=PRIVATE[_name], strict=True)(_test)
        globals()[_name] = _test
