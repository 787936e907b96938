"""Step 2: maximum likelihood. The MLE of a normal is the sample mean and the standard deviation
with ddof 0; the fitted normal then answers questions about the data (P(x <= 160), P(x > 180))
and generates new samples that look like it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlenv.book._common import book_file, load_matrix, pyplot, save, write_results
from mlenv.classical import NormalMLE


def run(out: Path, data: str | None = None) -> dict[str, Any]:
    plt = pyplot()
    path = book_file("height.txt", data)
    xs = load_matrix(path, 1, "a height in cm")
    model = NormalMLE().fit(xs)
    results = {
        "data": str(path),
        "n": int(xs.size),
        "mu": model.mu_,
        "sigma": model.sigma_,
        "p_le_160": float(model.cdf(160)),
        "p_gt_180": float(1 - model.cdf(180)),
    }
    grid = np.linspace(150, 190, 1000)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.hist(xs, bins="auto", density=True, alpha=0.6, label="data")
    ax.plot(grid, model.pdf(grid), "r", label="fitted normal")
    ax.set(xlabel="height (cm)", ylabel="probability density", title="MLE fit")
    ax.legend()
    fit_png = save(fig, out / "fit.png")
    samples = model.sample(10_000, random_state=0)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.hist(xs, bins="auto", density=True, alpha=0.6, label="original")
    ax.hist(samples, bins="auto", density=True, alpha=0.6, label="generated (10,000)")
    ax.set(xlabel="height (cm)", ylabel="probability density", title="generated vs data")
    ax.legend()
    results["plots"] = {"fit": fit_png, "generate": save(fig, out / "generate.png")}
    write_results(out, results)
    print(f"mu = {model.mu_:.6f}, sigma = {model.sigma_:.6f}")
    print(f"P(x <= 160) = {results['p_le_160']:.6f}, P(x > 180) = {results['p_gt_180']:.6f}")
    return results
