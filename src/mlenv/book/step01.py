"""Step 1: the normal distribution, and the central limit theorem from sample averages and sums.

The average of N uniform draws on [0, 1) has mean 1/2 and variance 1/(12 N); the sum has mean N/2
and variance N/12. As N grows, both histograms approach the normal the theorem predicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlenv.book._common import pyplot, save, write_results
from mlenv.classical import NormalMLE

TRIALS = 10_000
NS = (1, 2, 4, 10)
SEED = 0


def run(out: Path, data: str | None = None) -> dict[str, Any]:
    plt = pyplot()
    rng = np.random.default_rng(SEED)
    plots = {}

    # the density for a few (mu, sigma)
    x = np.linspace(-10, 10, 1000)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for mu, sigma in ((0, 1), (0, 0.5), (0, 2), (2, 1), (-3, 1)):
        ax.plot(x, NormalMLE(mu, sigma).pdf(x), label=f"mu={mu}, sigma={sigma}")
    ax.set(xlabel="x", ylabel="p(x)", title="normal distribution")
    ax.legend()
    plots["normal_pdf"] = save(fig, out / "normal_pdf.png")

    results: dict[str, Any] = {"trials": TRIALS, "seed": SEED, "average": {}, "sum": {}}
    for kind in ("average", "sum"):
        fig, axes = plt.subplots(1, len(NS), figsize=(14, 3.4))
        for ax, n in zip(axes, NS, strict=True):
            draws = rng.random((TRIALS, n))  # (trials, N) uniform on [0, 1)
            values = draws.mean(axis=1) if kind == "average" else draws.sum(axis=1)
            mu = 0.5 if kind == "average" else n / 2
            sigma = np.sqrt(1 / (12 * n)) if kind == "average" else np.sqrt(n / 12)
            ax.hist(values, bins="auto", density=True, alpha=0.6)
            grid = np.linspace(values.min(), values.max(), 200)
            ax.plot(grid, NormalMLE(mu, sigma).pdf(grid), "r")
            ax.set(title=f"N = {n}", xlabel=f"sample {kind}")
            results[kind][str(n)] = {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "theory_mean": mu,
                "theory_std": float(sigma),
            }
        fig.suptitle(f"sample {kind}s of N uniform draws, with the normal the CLT predicts", y=1.04)
        plots[f"sample_{kind}"] = save(fig, out / f"sample_{kind}.png")
    results["plots"] = plots
    write_results(out, results)
    for kind in ("average", "sum"):
        for n, r in results[kind].items():
            print(
                f"sample {kind:7s} N={n:>2s}: mean {r['mean']:.4f} (theory {r['theory_mean']:.4f})"
                f", std {r['std']:.4f} (theory {r['theory_std']:.4f})"
            )
    return results
