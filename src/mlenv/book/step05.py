"""Step 5: EM for a Gaussian mixture, exactly as the book runs it on Old Faithful.

K=2, start from weights (0.5, 0.5), means (0, 50) and (0, 100), identity covariances. The
log-likelihood is the mean over the points of log(p(x) + 1e-8); stop after 100 iterations or when
it changes by less than 1e-4. E-step: responsibilities q(n, k) = phi_k N(x_n|mu_k, cov_k) / p(x_n);
M-step: phi_k, mu_k and cov_k are the q-weighted share, mean and covariance.
Then: the KL divergence between two normals, in closed form and by Monte Carlo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlenv.book._common import book_file, load_matrix, pyplot, save, write_results
from mlenv.book.step04 import grid_density
from mlenv.classical import NormalMLE, kl_normal
from mlenv.classical.gaussian import gaussian_logpdf

MAX_ITERS, THRESHOLD, EPS = 100, 1e-4, 1e-8


def component_densities(xs, phis, mus, covs) -> np.ndarray:
    """phi_k N(x_n | mu_k, cov_k) for all n, k: (N, K)."""
    return np.stack(
        [
            phi * np.exp(gaussian_logpdf(xs, mu, cov))
            for phi, mu, cov in zip(phis, mus, covs, strict=True)
        ],
        axis=1,
    )


def log_likelihood(xs, phis, mus, covs) -> float:
    return float(np.log(component_densities(xs, phis, mus, covs).sum(axis=1) + EPS).mean())


def em(xs: np.ndarray) -> dict[str, Any]:
    phis = np.array([0.5, 0.5])
    mus = np.array([[0.0, 50.0], [0.0, 100.0]])
    covs = np.array([np.eye(2), np.eye(2)])
    history = []
    current = log_likelihood(xs, phis, mus, covs)
    for _ in range(MAX_ITERS):
        # E-step: responsibilities (N, K)
        weighted = component_densities(xs, phis, mus, covs)
        qs = weighted / weighted.sum(axis=1, keepdims=True)
        # M-step
        qs_sum = qs.sum(axis=0)  # (K,)
        phis = qs_sum / len(xs)
        mus = (qs.T @ xs) / qs_sum[:, None]  # (K, D)
        covs = np.stack(
            [
                (qs[:, k, None] * (xs - mus[k])).T @ (xs - mus[k]) / qs_sum[k]
                for k in range(len(phis))
            ]
        )
        history.append(current)
        print(f"{current:.3f}")
        following = log_likelihood(xs, phis, mus, covs)
        if abs(following - current) < THRESHOLD:
            current = following
            break
        current = following
    return {
        "log_likelihoods": history,
        "final_log_likelihood": current,
        "phis": phis,
        "mus": mus,
        "covs": covs,
    }


# the book's kl.py: KL(p || q) of two-outcome distributions, p = (0.7, 0.3) against three q's
BOOK_KL_PAIRS = (((0.7, 0.3), (0.6, 0.4)), ((0.7, 0.3), (0.2, 0.8)), ((0.7, 0.3), (0.7, 0.3)))


def kl_discrete(p: tuple[float, ...], q: tuple[float, ...]) -> float:
    """KL(p || q) = sum_i p_i log(p_i / q_i) of two discrete distributions (nats).

    >>> round(kl_discrete((0.7, 0.3), (0.6, 0.4)), 6)
    0.021601
    """
    return float(sum(pi * np.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0))


def kl_demo(seed: int = 0) -> dict[str, float]:
    p, q = (0.0, 1.0), (1.0, 2.0)  # (mu, sigma) of p and q
    x = NormalMLE(*p).sample(1_000_000, random_state=seed)
    monte_carlo = float((NormalMLE(*p).logpdf(x) - NormalMLE(*q).logpdf(x)).mean())
    return {
        "p": p,
        "q": q,
        "closed_form": kl_normal(*p, *q),
        "monte_carlo": monte_carlo,
        "samples": 1_000_000,
        "book_discrete": [
            {"p": list(p), "q": list(q), "kl": kl_discrete(p, q)} for p, q in BOOK_KL_PAIRS
        ],
    }


def run(out: Path, data: str | None = None) -> dict[str, Any]:
    plt = pyplot()
    path = book_file("old_faithful.txt", data)
    xs = load_matrix(path, 2, "eruption duration and waiting time")
    result = em(xs)
    X, Y, Z = grid_density(
        lambda pts: component_densities(pts, result["phis"], result["mus"], result["covs"]).sum(
            axis=1
        )
    )
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(xs[:, 0], xs[:, 1], s=8)
    ax.contour(X, Y, Z)
    ax.set(xlabel="eruption duration (min)", ylabel="waiting time (min)", title="EM fit")
    fit = save(fig, out / "em_fit.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(len(result["log_likelihoods"])), result["log_likelihoods"], marker="o")
    ax.set(xlabel="iteration", ylabel="mean log-likelihood", title="EM log-likelihood")
    curve = save(fig, out / "log_likelihood.png")
    kl = kl_demo()
    results = {
        "data": str(path),
        "iterations": len(result["log_likelihoods"]),
        **result,
        "kl": kl,
        "plots": {"fit": fit, "log_likelihood": curve},
    }
    write_results(out, results)
    print(
        f"converged after {results['iterations']} iterations: log-likelihood "
        f"{result['final_log_likelihood']:.6f}"
    )
    print(f"phis = {np.round(result['phis'], 6).tolist()}")
    print(f"mus = {np.round(result['mus'], 6).tolist()}")
    print(
        f"KL(N(0,1) || N(1,2^2)): closed form {kl['closed_form']:.6f}, "
        f"Monte Carlo {kl['monte_carlo']:.6f}"
    )
    for pair in kl["book_discrete"]:
        print(f"KL({pair['p']} || {pair['q']}) = {pair['kl']}")  # the book's kl.py, unrounded
    return results
