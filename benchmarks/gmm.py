"""Our GaussianMixture against scikit-learn's: 200,000 points in 8 dimensions, 10 components,
the same initial parameters and the same iteration count, side by side.

    .venv/bin/python benchmarks/gmm.py        # writes results/gmm.json
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SklearnGMM

sys.path.insert(0, str(Path(__file__).parent))
from _common import median, write_result
from mlenv.classical import GaussianMixture

N, D, K, ITERATIONS, REPEATS = 200_000, 8, 10, 30, 3


def main() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (K, D))
    X = centres[rng.integers(0, K, N)] + rng.normal(0, 1, (N, D))
    weights, means = np.full(K, 1 / K), X[rng.choice(N, K, replace=False)]
    covs = np.array([np.eye(D)] * K)
    ours_s, theirs_s = [], []
    for _ in range(REPEATS):  # alternate, so load changes hit both
        start = time.perf_counter()
        ours = GaussianMixture(
            K,
            weights_init=weights,
            means_init=means,
            covariances_init=covs,
            max_iter=ITERATIONS,
            tol=0.0,
        ).fit(X)
        ours_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            theirs = SklearnGMM(
                K,
                weights_init=weights,
                means_init=means,
                precisions_init=np.linalg.inv(covs),
                max_iter=ITERATIONS,
                tol=0.0,
            ).fit(X)
        theirs_s.append(time.perf_counter() - start)
    write_result(
        "gmm",
        {
            "data": f"{N} points, {D} dimensions, {K} components, {ITERATIONS} EM iterations",
            "ours_s": median(ours_s),
            "sklearn_s": median(theirs_s),
            "ratio_ours_over_sklearn": median(ours_s) / median(theirs_s),
            "final_mean_log_likelihood": {"ours": ours.score(X), "sklearn": theirs.score(X)},
            "log_likelihood_difference": abs(ours.score(X) - theirs.score(X)),
            "max_mean_difference": float(np.abs(ours.means_ - theirs.means_).max()),
            "targets": {
                "ratio_ours_over_sklearn": "<= 1.0",
                "log_likelihood_difference": "<= 1e-6",
            },
        },
    )


if __name__ == "__main__":
    main()
