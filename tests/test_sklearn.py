"""nnxp.sklearn: scikit-learn's own estimator checks, Pipeline, GridSearchCV, pickling,
partial_fit, early stopping, string labels and the backend parameter."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone
from sklearn.datasets import load_iris, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import nnxp
from nnxp.sklearn import MLPClassifier, MLPRegressor

# Short fits stop at max_iter on purpose; test_convergence_warning_at_max_iter checks the warning.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _small(cls, **kw):
    """Small, fast settings for the behaviour tests."""
    options = dict(hidden_layer_sizes=(16,), max_iter=60, learning_rate_init=0.02,
                   random_state=0)
    options.update(kw)
    return cls(**options)


# Checks expected to fail, with the reason; none is needed at present.
EXPECTED_FAILURES: dict[str, str] = {}


# scikit-learn's estimator checks at the settings its own test_common gives its own MLPs
# (max_iter=100, ConvergenceWarning/UserWarning/FutureWarning ignored), and both at max_iter=50
# as well, where scikit-learn's own pass too (check_regressors_train needs R² > 0.5 then).
# They run on the default backend only: they test the estimator API, not arithmetic;
# test_backend_parameter_trains_there_and_returns_numpy runs an estimator on every backend.
@parametrize_with_checks([MLPClassifier(max_iter=100), MLPRegressor(max_iter=100),
                          MLPClassifier(max_iter=50), MLPRegressor(max_iter=50)],
                         expected_failed_checks=lambda est: EXPECTED_FAILURES)
def test_scikit_learn_estimator_checks(estimator, check) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        check(estimator)


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return X, y


def test_string_labels_are_mapped_to_outputs_and_back(iris) -> None:
    X, y = iris
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    clf = _small(MLPClassifier, max_iter=150).fit(StandardScaler().fit_transform(X), names)
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    Xs = StandardScaler().fit_transform(X)
    pred = clf.predict(Xs)
    assert pred.dtype == names.dtype and set(pred) <= set(names)
    assert clf.score(Xs, names) > 0.9
    proba = clf.predict_proba(Xs)
    assert isinstance(proba, np.ndarray) and proba.shape == (150, 3)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], pred)
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(Xs)), proba, rtol=1e-6)
    assert len(clf.loss_curve_) == clf.n_iter_ and clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_pipeline_and_grid_search(iris) -> None:
    X, y = iris
    pipe = Pipeline([("scale", StandardScaler()), ("mlp", _small(MLPClassifier, max_iter=80))])
    grid = GridSearchCV(pipe, {"mlp__hidden_layer_sizes": [(4,), (16,)],
                               "mlp__learning_rate_init": [0.001, 0.03]}, cv=3)
    grid.fit(X, y)
    assert grid.best_params_["mlp__learning_rate_init"] == 0.03
    assert grid.best_score_ > 0.85
    assert grid.score(X, y) > 0.9
    assert grid.best_estimator_.named_steps["mlp"].get_params()["hidden_layer_sizes"] in [
        (4,), (16,)]


def test_regressor_learns_and_supports_multioutput() -> None:
    X, y = make_regression(n_samples=200, n_features=5, n_targets=2, noise=0.1, random_state=0)
    y = y / y.std(axis=0)
    reg = _small(MLPRegressor, hidden_layer_sizes=(32,), max_iter=200).fit(X, y)
    assert reg.predict(X).shape == (200, 2) and reg.score(X, y) > 0.9
    reg1 = _small(MLPRegressor, max_iter=200).fit(X, y[:, 0])
    assert reg1.predict(X).shape == (200,) and reg1.score(X, y[:, 0]) > 0.9


def test_partial_fit_needs_classes_first_and_continues(iris) -> None:
    X, y = iris
    X = StandardScaler().fit_transform(X)
    clf = _small(MLPClassifier)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(X, y)
    clf.partial_fit(X[:75], y[:75], classes=[0, 1, 2])
    weights = clf.coefs_[0].copy()
    clf.partial_fit(X[75:], y[75:])
    assert clf.n_iter_ == 1 and clf.t_ == 150  # scikit-learn's: n_iter_ counts this call's
    assert not np.array_equal(weights, clf.coefs_[0])
    with pytest.raises(ValueError, match="classes not in"):
        clf.partial_fit(X[:3], [0, 1, 7])
    for _ in range(100):
        clf.partial_fit(X, y)
    assert clf.score(X, y) > 0.9


def test_early_stopping_keeps_the_best_validation_epoch(iris) -> None:
    X, y = iris
    X = StandardScaler().fit_transform(X)
    clf = _small(MLPClassifier, early_stopping=True, validation_fraction=0.2, max_iter=300,
                 n_iter_no_change=5, learning_rate_init=0.05).fit(X, y)
    assert clf.n_iter_ < 300
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    plain = _small(MLPClassifier, max_iter=300, n_iter_no_change=3, tol=0.5).fit(X, y)
    assert plain.n_iter_ == 5 and plain.validation_scores_ is None  # 1 + (3 + 1) no-improves


def test_same_random_state_same_model_and_pickle_round_trip(iris) -> None:
    X, y = iris
    a = _small(MLPClassifier).fit(X, y)
    b = clone(a).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(c.predict_proba(X), a.predict_proba(X))
    c.partial_fit(X, y)  # the optimizer state travelled too: the same step as a's
    a.partial_fit(X, y)
    assert c.t_ == a.t_ == 61 * 150
    np.testing.assert_array_equal(c.coefs_[0], a.coefs_[0])


def test_backend_parameter_trains_there_and_returns_numpy(bk, iris, monkeypatch) -> None:
    spec = bk.spec
    X, y = iris
    X = StandardScaler().fit_transform(X)
    seen = []
    real = nnxp.sklearn._loss_and_grads

    def spy(X, *args, **kwargs):
        seen.append(nnxp.backend.backend_name_of(X))
        return real(X, *args, **kwargs)

    monkeypatch.setattr(nnxp.sklearn, "_loss_and_grads", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = _small(MLPClassifier, backend=spec, max_iter=30).fit(X, y)
        monkeypatch.undo()
        ref = _small(MLPClassifier, max_iter=30, backend="numpy").fit(X, y)
    assert set(seen) == {spec.split(":")[0]}
    assert nnxp.get_backend().name == bk.name  # fit restores the active backend
    assert all(isinstance(c, np.ndarray) for c in clf.coefs_ + clf.intercepts_)
    assert isinstance(clf.predict(X), np.ndarray) and isinstance(clf.predict_proba(X),
                                                                 np.ndarray)
    np.testing.assert_allclose(clf.loss_curve_, ref.loss_curve_, rtol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(X), ref.predict_proba(X), rtol=1e-6,
                               atol=1e-8)


@pytest.mark.parametrize("params, match", [
    ({"hidden_layer_sizes": (0,)}, "hidden_layer_sizes must be > 0"),
    ({"solver": "nope"}, "'solver' parameter .* must be a str among"),
    ({"max_iter": 0}, "'max_iter' parameter .* must be an int in the range"),
    ({"learning_rate_init": -1.0}, "'learning_rate_init' parameter"),
    ({"learning_rate": "fast"}, "'learning_rate' parameter"),
    ({"alpha": -1.0}, "'alpha' parameter"),
    ({"batch_size": 0}, "batch_size"),
    ({"early_stopping": True, "validation_fraction": 1.5}, "validation_fraction"),
    ({"activation": "nope"}, "nope"),
])
def test_bad_hyperparameters_are_reported_in_fit(params, match, iris) -> None:
    X, y = iris
    clf = MLPClassifier(**params)  # __init__ never validates (scikit-learn's rule)
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y)


def test_importing_nnxp_does_not_import_scikit_learn() -> None:
    import subprocess
    import sys

    code = "import sys, nnxp; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.filterwarnings("error::sklearn.exceptions.ConvergenceWarning")
def test_convergence_warning_at_max_iter_not_before(iris) -> None:
    X, y = iris
    X = StandardScaler().fit_transform(X)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(5\) reached"):
        _small(MLPClassifier, max_iter=5).fit(X, y)
    converged = _small(MLPClassifier, max_iter=500, tol=0.5, n_iter_no_change=2).fit(X, y)
    assert converged.n_iter_ == 4  # stopped by tol: no warning (it would raise here)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_training_steps_never_wait_for_the_host(solver, monkeypatch) -> None:
    """The GPU rule (docs/design.md), counted on torch CPU with tests/test_sync.py's counter:
    per epoch one host-to-device copy (the shuffled order) and one read (the epoch loss), none
    in the 4 steps of an epoch, with sample weights and the L2 term on."""
    pytest.importorskip("torch")
    from test_sync import SyncCounter, report

    rng = np.random.default_rng(0)
    X, y, w = rng.normal(size=(64, 5)), rng.integers(0, 3, 64), np.linspace(0.5, 1.5, 64)

    def events(epochs: int) -> list:
        est = MLPClassifier(hidden_layer_sizes=(8,), solver=solver, max_iter=epochs,
                            batch_size=16, alpha=1e-3, backend="torch", random_state=0)
        with SyncCounter() as counter:
            est.fit(X, y, sample_weight=w)
        return counter.events

    two, five = events(2), events(5)
    assert len(five) - len(two) == 2 * 3, report(five)
