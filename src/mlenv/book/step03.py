"""Step 3: the multivariate normal. Its density written out (checked against scipy), drawn as a
surface and as contours, and fitted to height and weight by maximum likelihood."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlenv.book._common import book_file, load_matrix, pyplot, save, write_results
from mlenv.classical import MultivariateNormal


def pdf_by_hand(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> float:
    """N(x | mu, cov) = exp(-(x-mu)^T cov^-1 (x-mu) / 2) / sqrt((2 pi)^D det cov)."""
    d = len(x)
    z = 1 / np.sqrt((2 * np.pi) ** d * np.linalg.det(cov))
    return float(z * np.exp(-0.5 * (x - mu) @ np.linalg.inv(cov) @ (x - mu)))


def run(out: Path, data: str | None = None) -> dict[str, Any]:
    from scipy.stats import multivariate_normal

    plt = pyplot()
    mu, cov = np.array([0.5, -0.2]), np.array([[2.0, 0.3], [0.3, 0.5]])
    x = np.array([0.0, 0.0])
    by_hand, by_scipy = pdf_by_hand(x, mu, cov), float(multivariate_normal(mu, cov).pdf(x))
    grid = np.arange(-5, 5, 0.1)
    X, Y = np.meshgrid(grid, grid)
    points = np.stack([X.ravel(), Y.ravel()], axis=1)
    Z = MultivariateNormal(mu, cov).pdf(points).reshape(X.shape)
    fig = plt.figure(figsize=(6.4, 5))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(X, Y, Z, cmap="viridis")
    ax.set(xlabel="x", ylabel="y", zlabel="p(x, y)", title="multivariate normal")
    surface = save(fig, out / "surface.png")
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.contour(X, Y, Z)
    ax.set(xlabel="x", ylabel="y", title="contours")
    contour = save(fig, out / "contour.png")

    path = book_file("height_weight.txt", data)
    xs = load_matrix(path, 2, "height and weight")
    mle = MultivariateNormal(ddof=0).fit(xs)
    unbiased = MultivariateNormal(ddof=1).fit(xs)
    small = xs[:500]
    gx, gy = np.meshgrid(
        np.linspace(small[:, 0].min(), small[:, 0].max(), 100),
        np.linspace(small[:, 1].min(), small[:, 1].max(), 100),
    )
    gz = mle.pdf(np.stack([gx.ravel(), gy.ravel()], 1)).reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(small[:, 0], small[:, 1], s=4, alpha=0.6)
    ax.contour(gx, gy, gz)
    ax.set(xlabel="height (cm)", ylabel="weight (kg)", title="MLE fit (first 500 points shown)")
    fit = save(fig, out / "fit.png")
    results = {
        "pdf_check": {"x": x, "mu": mu, "cov": cov, "by_hand": by_hand, "scipy": by_scipy},
        "data": str(path),
        "n": len(xs),
        "mu": mle.mean_,
        "cov_mle": mle.covariance_,
        "cov_unbiased": unbiased.covariance_,
        "plots": {"surface": surface, "contour": contour, "fit": fit},
    }
    write_results(out, results)
    print(f"pdf at {x.tolist()}: by hand {by_hand:.10f}, scipy {by_scipy:.10f}")
    print(f"mu = {mle.mean_.round(6).tolist()}")
    print(f"cov (MLE, ddof=0) = {mle.covariance_.round(6).tolist()}")
    print(f"cov (unbiased, ddof=1) = {unbiased.covariance_.round(6).tolist()}")
    return results
