"""Seconds per epoch: nnxp.sklearn's MLP estimators beside sklearn.neural_network's, one run.

Both estimators get the same data, hyperparameters and ``random_state`` (so they do the same
arithmetic: tests/test_sklearn_parity.py), ``tol=0`` and ``n_iter_no_change=max_iter`` so that
every fit runs exactly ``max_iter`` epochs. Fits alternate between the libraries, ``ROUNDS``
times, and the fastest fit of each counts (the machine is shared: the minimum is the least
disturbed). The ratio is nnxp's time over scikit-learn's: below 1 means nnxp is faster.

    PYTHONPATH=. python benchmarks/sklearn_epoch.py [--rounds 5] [--out PREFIX]

writes PREFIX.json and PREFIX.md (default benchmarks/results/sklearn-epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np
import sklearn
import sklearn.neural_network as skl
from sklearn.datasets import load_digits, make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

import nnxp
import nnxp.sklearn as nxs


def _digits():
    X, y = load_digits(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def _wide():
    X, y = make_classification(n_samples=10000, n_features=100, n_informative=30, n_classes=5,
                               random_state=0)
    return X, y


def _regression():
    X, y = make_regression(n_samples=10000, n_features=50, noise=1.0, random_state=0)
    return X, y / y.std()


CASES = [
    ("digits 1797x64, hidden 100, adam", _digits, "MLPClassifier",
     dict(hidden_layer_sizes=(100,), max_iter=20)),
    ("digits 1797x64, hidden 100, sgd", _digits, "MLPClassifier",
     dict(hidden_layer_sizes=(100,), solver="sgd", max_iter=20)),
    ("10000x100 5 classes, hidden 256-128, adam", _wide, "MLPClassifier",
     dict(hidden_layer_sizes=(256, 128), max_iter=5)),
    ("10000x50 regression, hidden 100, adam", _regression, "MLPRegressor",
     dict(hidden_layer_sizes=(100,), max_iter=10)),
]


def seconds_per_epoch(cls, params, X, y) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        est = cls(**params).fit(X, y)
        elapsed = time.perf_counter() - start
    return elapsed / est.n_iter_


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/sklearn-epoch")
    args = parser.parse_args()
    nnxp.set_backend("numpy")
    rows = []
    for name, data, estimator, params in CASES:
        X, y = data()
        params = dict(params, random_state=0, tol=0.0, n_iter_no_change=params["max_iter"])
        times: dict[str, list[float]] = {"scikit-learn": [], "nnxp": []}
        for _ in range(args.rounds):
            for label, module in (("scikit-learn", skl), ("nnxp", nxs)):
                cls = getattr(module, estimator)
                times[label].append(seconds_per_epoch(cls, params, X, y))
        sk, nx = min(times["scikit-learn"]), min(times["nnxp"])
        rows.append({"case": name, "sklearn_s_per_epoch": sk, "nnxp_s_per_epoch": nx,
                     "ratio_nnxp_over_sklearn": nx / sk})
        print(f"{name}: scikit-learn {sk * 1e3:.2f} ms, nnxp {nx * 1e3:.2f} ms, "
              f"ratio {nx / sk:.3f}", flush=True)
    meta = {"machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "scikit-learn": sklearn.__version__,
            "nnxp": nnxp.__version__, "rounds": args.rounds,
            "threads": os.environ.get("OMP_NUM_THREADS", "default")}
    with open(args.out + ".json", "w", encoding="utf-8") as file:
        json.dump({"meta": meta, "rows": rows}, file, indent=2)
    with open(args.out + ".md", "w", encoding="utf-8") as file:
        file.write("# nnxp.sklearn vs sklearn.neural_network, seconds per epoch (CPU, NumPy)\n\n")
        file.write(", ".join(f"{k} {v}" for k, v in meta.items()) + "\n\n")
        file.write("| case | scikit-learn ms/epoch | nnxp ms/epoch | nnxp / scikit-learn |\n")
        file.write("|---|---|---|---|\n")
        for r in rows:
            file.write(f"| {r['case']} | {r['sklearn_s_per_epoch'] * 1e3:.2f} | "
                       f"{r['nnxp_s_per_epoch'] * 1e3:.2f} | "
                       f"{r['ratio_nnxp_over_sklearn']:.3f} |\n")


if __name__ == "__main__":
    main()
