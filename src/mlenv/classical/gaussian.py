"""The normal distribution, one- and multi-dimensional: density, maximum-likelihood fit, sampling,
and the KL divergence between two normals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlenv.classical._validation import as_1d, as_2d, check_fitted, cholesky

LOG_2PI = math.log(2 * math.pi)


class NormalMLE:
    """One-dimensional normal fitted by maximum likelihood: ``mu_`` the mean, ``sigma_`` the
    standard deviation with ddof 0 (the MLE, not the unbiased estimate).

    >>> NormalMLE().fit([1.0, 2.0, 3.0]).mu_
    2.0
    """

    def __init__(self, mu: float | None = None, sigma: float | None = None) -> None:
        self.mu = mu
        self.sigma = sigma

    def fit(self, x: Any) -> NormalMLE:
        x = as_1d(x)
        self.mu_ = float(x.mean())
        self.sigma_ = float(np.sqrt(((x - self.mu_) ** 2).mean()))
        self.n_samples_ = x.size
        return self

    def _params(self) -> tuple[float, float]:
        if self.mu is not None and self.sigma is not None and not hasattr(self, "mu_"):
            return self.mu, self.sigma
        check_fitted(self, "mu_")
        return self.mu_, self.sigma_

    def logpdf(self, x: Any) -> np.ndarray:
        mu, sigma = self._params()
        x = np.asarray(x, dtype=np.float64)
        return -0.5 * ((x - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * LOG_2PI

    def pdf(self, x: Any) -> np.ndarray:
        return np.exp(self.logpdf(x))

    def cdf(self, x: Any) -> np.ndarray:
        from scipy.special import ndtr

        mu, sigma = self._params()
        return ndtr((np.asarray(x, dtype=np.float64) - mu) / sigma)

    def sample(self, n: int, random_state: int | None = None) -> np.ndarray:
        mu, sigma = self._params()
        return np.random.default_rng(random_state).normal(mu, sigma, size=n)


class MultivariateNormal:
    """Multivariate normal: ``fit`` gives ``mean_`` and ``covariance_`` (``ddof=0`` is the MLE,
    ``ddof=1`` the unbiased estimate); ``pdf``/``logpdf`` by the Cholesky factor, so a singular
    covariance is a clear error unless ``reg_covar`` makes it positive definite.

    >>> MultivariateNormal().fit([[0.0, 0.0], [2.0, 2.0]]).mean_.tolist()
    [1.0, 1.0]
    """

    def __init__(
        self, mean: Any = None, cov: Any = None, ddof: int = 0, reg_covar: float = 0.0
    ) -> None:
        self.mean = mean
        self.cov = cov
        self.ddof = ddof
        self.reg_covar = reg_covar

    def fit(self, X: Any) -> MultivariateNormal:
        X = as_2d(X)
        if X.shape[0] <= self.ddof:
            raise ValueError(f"X: {X.shape[0]} samples are too few for ddof={self.ddof}")
        self.mean_ = X.mean(axis=0)
        diff = X - self.mean_
        self.covariance_ = diff.T @ diff / (X.shape[0] - self.ddof)
        self.n_features_in_ = X.shape[1]
        return self

    def _params(self) -> tuple[np.ndarray, np.ndarray]:
        if hasattr(self, "mean_"):
            mean, cov = self.mean_, self.covariance_
        elif self.mean is not None and self.cov is not None:
            mean, cov = np.asarray(self.mean, float), np.asarray(self.cov, float)
        else:
            check_fitted(self, "mean_")
        return mean, cov + self.reg_covar * np.eye(len(mean))

    def logpdf(self, X: Any) -> np.ndarray:
        mean, cov = self._params()
        X = as_2d(X) if np.ndim(X) > 1 or len(mean) == 1 else as_2d(np.atleast_2d(X))
        return gaussian_logpdf(X, mean, cov)

    def pdf(self, X: Any) -> np.ndarray:
        return np.exp(self.logpdf(X))

    def sample(self, n: int, random_state: int | None = None) -> np.ndarray:
        mean, cov = self._params()
        chol = cholesky(cov, "the covariance")
        z = np.random.default_rng(random_state).standard_normal((n, len(mean)))
        return mean + z @ chol.T


def gaussian_logpdf(X: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(x | mean, cov) for every row of X: (N, D) -> (N,)."""
    chol = cholesky(cov, "the covariance")
    from scipy.linalg import solve_triangular

    z = solve_triangular(chol, (X - mean).T, lower=True)  # (D, N): L^-1 (x - mean)
    log_det = 2.0 * np.log(np.diag(chol)).sum()
    return -0.5 * (X.shape[1] * LOG_2PI + log_det + (z**2).sum(axis=0))


def kl_normal(mu1: float, sigma1: float, mu2: float, sigma2: float) -> float:
    """KL(N(mu1, sigma1^2) || N(mu2, sigma2^2)) in closed form.

    >>> kl_normal(0.0, 1.0, 0.0, 1.0)
    0.0
    """
    return math.log(sigma2 / sigma1) + (sigma1**2 + (mu1 - mu2) ** 2) / (2 * sigma2**2) - 0.5
