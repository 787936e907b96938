"""Step 4: a Gaussian mixture. Two components with fixed parameters describe the Old Faithful
eruptions (duration, waiting time); the mixture's density drawn over the data, and 500 samples
drawn from it (pick a component by its weight, then draw from that normal)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlenv.book._common import book_file, load_matrix, pyplot, save, write_results
from mlenv.classical import GaussianMixture

PHIS = np.array([0.35, 0.65])
MUS = np.array([[2.0, 54.50], [4.3, 80.0]])
COVS = np.array([[[0.07, 0.44], [0.44, 33.7]], [[0.17, 0.94], [0.94, 36.0]]])
SAMPLES, SEED = 500, 0


def mixture_density(points: np.ndarray) -> np.ndarray:
    """p(x) = sum_k phi_k N(x | mu_k, cov_k), for every row of ``points``."""
    from mlenv.classical.gaussian import gaussian_logpdf

    return sum(
        phi * np.exp(gaussian_logpdf(points, mu, cov))
        for phi, mu, cov in zip(PHIS, MUS, COVS, strict=True)
    )


def grid_density(density: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, Y = np.meshgrid(np.arange(1, 6, 0.1), np.arange(40, 100, 1.0))
    Z = density(np.stack([X.ravel(), Y.ravel()], axis=1)).reshape(X.shape)
    return X, Y, Z


def run(out: Path, data: str | None = None) -> dict[str, Any]:
    plt = pyplot()
    path = book_file("old_faithful.txt", data)
    xs = load_matrix(path, 2, "eruption duration and waiting time")
    X, Y, Z = grid_density(mixture_density)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(xs[:, 0], xs[:, 1], s=8, label="data")
    ax.contour(X, Y, Z)
    ax.set(
        xlabel="eruption duration (min)",
        ylabel="waiting time (min)",
        title="fixed 2-component mixture",
    )
    density_png = save(fig, out / "mixture_density.png")

    gmm = GaussianMixture(2, weights_init=PHIS, means_init=MUS, covariances_init=COVS)
    gmm.weights_, gmm.means_, gmm.covariances_ = PHIS, MUS, COVS  # a given model, not fitted
    samples, components = gmm.sample(SAMPLES, random_state=SEED)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(xs[:, 0], xs[:, 1], s=8, alpha=0.6, label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=8, alpha=0.6, label=f"{SAMPLES} samples")
    ax.set(xlabel="eruption duration (min)", ylabel="waiting time (min)", title="sampling")
    ax.legend()
    results = {
        "data": str(path),
        "n": len(xs),
        "phis": PHIS,
        "mus": MUS,
        "covs": COVS,
        "mean_log_likelihood": float(np.log(mixture_density(xs)).mean()),
        "samples_per_component": np.bincount(components, minlength=2),
        "sample_mean": samples.mean(axis=0),
        "plots": {"density": density_png, "samples": save(fig, out / "samples.png")},
    }
    write_results(out, results)
    print(
        f"mean log-likelihood of the data under the fixed mixture: "
        f"{results['mean_log_likelihood']:.6f}"
    )
    print(
        f"{SAMPLES} samples: {results['samples_per_component'].tolist()} per component, "
        f"mean {np.round(results['sample_mean'], 4).tolist()}"
    )
    return results
