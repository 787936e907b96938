"""Gaussian mixture with full covariances, fitted by EM, in log space and vectorised over samples
and components.

It follows scikit-learn's algorithm step for step (same M-step with ``reg_covar`` on the diagonal,
same stopping rule on the change of the mean log-likelihood), so from the same initial parameters
it reaches the same model; it is faster because the E-step is one matrix product for all
components and the M-step's covariances are one matrix product against the per-sample outer
products, computed once per fit.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from mlenv.classical._validation import as_2d, check_fitted, cholesky

LOG_2PI = math.log(2 * math.pi)
# Above this many elements (samples x features^2) the outer products are not kept in memory
OUTER_PRODUCT_LIMIT = 50_000_000


class GaussianMixture:
    """EM for a mixture of ``n_components`` full-covariance Gaussians.

    Learned: ``weights_`` (K,), ``means_`` (K, D), ``covariances_`` (K, D, D),
    ``log_likelihoods_`` (mean log-likelihood before each M-step, as scikit-learn's
    ``lower_bound_``), ``n_iter_``, ``converged_``.

    >>> import numpy as np
    >>> X = np.r_[np.random.default_rng(0).normal(-5, 1, (50, 1)), np.random.default_rng(1).normal(5, 1, (50, 1))]
    >>> sorted(np.round(GaussianMixture(2, random_state=0).fit(X).means_.ravel()))
    [-5.0, 5.0]
    """

    def __init__(
        self,
        n_components: int = 1,
        covariance_type: Literal["full"] = "full",
        max_iter: int = 100,
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        init: Literal["kmeans", "random", "points"] = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        covariances_init: Any = None,
        random_state: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.init = init
        self.weights_init = weights_init
        self.means_init = means_init
        self.covariances_init = covariances_init
        self.random_state = random_state

    # -- fitting ----------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> GaussianMixture:
        X = as_2d(X)
        self._check_params(X)
        n, d = X.shape
        center = X.mean(axis=0)
        Xc = X - center  # centred once: the outer products below lose no precision
        outer = (
            (Xc[:, :, None] * Xc[:, None, :]).reshape(n, d * d)
            if n * d * d <= (OUTER_PRODUCT_LIMIT)
            else None
        )
        self._center = center
        self._initialise(X, Xc, center, outer)
        self.log_likelihoods_: list[float] = []
        self.converged_ = False
        previous = -np.inf
        for iteration in range(1, self.max_iter + 1):
            log_norm, log_resp = self._e_step(X, outer)
            self._m_step(X, Xc, center, outer, np.exp(log_resp))
            current = float(log_norm.mean())
            self.log_likelihoods_.append(current)
            self.n_iter_ = iteration
            if abs(current - previous) < self.tol:
                self.converged_ = True
                break
            previous = current
        self.lower_bound_ = self.log_likelihoods_[-1]
        self.n_features_in_ = d
        return self

    def _check_params(self, X: np.ndarray) -> None:
        if self.covariance_type != "full":
            raise ValueError(
                f"covariance_type: only 'full' is supported, got {self.covariance_type!r}"
            )
        if not isinstance(self.n_components, int) or self.n_components < 1:
            raise ValueError(f"n_components: accepts an integer >= 1, got {self.n_components!r}")
        if X.shape[0] < self.n_components:
            raise ValueError(
                f"X: {X.shape[0]} samples are fewer than n_components={self.n_components}"
            )
        if self.reg_covar < 0:
            raise ValueError(f"reg_covar: accepts a number >= 0, got {self.reg_covar}")
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter: accepts an integer >= 1, got {self.max_iter!r}")
        if not self.tol >= 0:  # also NaN: a stopping rule that never holds
            raise ValueError(f"tol: accepts a number >= 0, got {self.tol}")
        k, d = self.n_components, X.shape[1]
        shapes = {"weights_init": (k,), "means_init": (k, d), "covariances_init": (k, d, d)}
        for name, shape in shapes.items():
            given = getattr(self, name)
            if given is not None and np.size(given) != np.prod(shape):
                raise ValueError(
                    f"{name}: expected shape {shape} for {k} components and {d} features, "
                    f"got {np.shape(given)}"
                )
        if self.init not in ("kmeans", "random", "points"):
            raise ValueError(f"init: accepts 'kmeans', 'random' or 'points', got {self.init!r}")

    def _initialise(self, X, Xc, center, outer) -> None:
        k, (n, d) = self.n_components, X.shape
        given = [self.weights_init, self.means_init, self.covariances_init]
        if all(v is not None for v in given):
            self.weights_ = np.asarray(self.weights_init, float).copy()
            self.means_ = np.asarray(self.means_init, float).reshape(k, d).copy()
            self.covariances_ = np.asarray(self.covariances_init, float).reshape(k, d, d).copy()
        else:
            rng = np.random.default_rng(self.random_state)
            if self.init == "kmeans":
                from sklearn.cluster import KMeans

                labels = KMeans(k, n_init=1, random_state=self.random_state).fit(X).labels_
                resp = np.eye(k)[labels]
            elif self.init == "random":
                resp = rng.uniform(size=(n, k))
                resp /= resp.sum(axis=1, keepdims=True)
            else:
                resp = np.eye(k)[rng.choice(k, size=n)]
                resp[rng.choice(n, size=k, replace=False), :] = np.eye(k)
            self._m_step(X, Xc, center, outer, resp)
            if self.weights_init is not None:
                self.weights_ = np.asarray(self.weights_init, float).copy()
            if self.means_init is not None:
                self.means_ = np.asarray(self.means_init, float).reshape(k, d).copy()
            if self.covariances_init is not None:
                self.covariances_ = np.asarray(self.covariances_init, float).reshape(k, d, d).copy()
        if not np.isclose(self.weights_.sum(), 1.0) or (self.weights_ < 0).any():
            raise ValueError("weights_init: must be non-negative and sum to 1")
        self._update_precisions()

    def _update_precisions(self) -> None:
        """Precision Cholesky factors P_k with P_k P_k^T = inv(cov_k), and half log-dets."""
        d = self.means_.shape[1]
        eye = np.eye(d)
        from scipy.linalg import solve_triangular

        self._prec_chol = np.empty_like(self.covariances_)
        for k, cov in enumerate(self.covariances_):
            chol = cholesky(cov, f"the covariance of component {k}")
            self._prec_chol[k] = solve_triangular(chol, eye, lower=True).T
        self._half_log_det = np.log(np.diagonal(self._prec_chol, axis1=1, axis2=2)).sum(axis=1)

    def _log_gaussians(self, X: np.ndarray, outer: np.ndarray | None = None) -> np.ndarray:
        """log N(x_n | mu_k, cov_k) for all n, k: (N, K).

        With the per-sample outer products of the centred data (kept during ``fit``), the
        Mahalanobis distances of all samples to all components are two matrix products:
        (x-mu)^T L (x-mu) = <xc xc^T, L> - 2 xc^T L m + m^T L m, with xc = x - c, m = mu - c.
        """
        k, d = self.means_.shape
        if outer is not None:
            precision = self._prec_chol @ self._prec_chol.transpose(0, 2, 1)  # (K, D, D)
            m = self.means_ - self._center  # (K, D)
            lm = np.einsum("kde,ke->kd", precision, m)  # (K, D)
            maha = outer @ precision.reshape(k, d * d).T  # (N, K)
            maha -= 2.0 * ((X - self._center) @ lm.T)
            maha += np.einsum("kd,kd->k", m, lm)
        else:
            P = self._prec_chol.transpose(1, 0, 2).reshape(d, k * d)  # (D, K*D)
            shift = np.einsum("kd,kde->ke", self.means_, self._prec_chol).reshape(1, k * d)
            y = (X @ P - shift).reshape(len(X), k, d)  # (N, K, D): P_k^T (x - mu_k)
            maha = np.einsum("nkd,nkd->nk", y, y)
        return -0.5 * (d * LOG_2PI + maha) + self._half_log_det

    def _weighted_log_prob(self, X: np.ndarray, outer: np.ndarray | None = None) -> np.ndarray:
        with np.errstate(divide="ignore"):  # a weight of exactly 0 is a log of -inf, fine here
            return self._log_gaussians(X, outer) + np.log(self.weights_)

    def _e_step(
        self, X: np.ndarray, outer: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        weighted = self._weighted_log_prob(X, outer)  # (N, K)
        log_norm = _logsumexp_rows(weighted)  # (N,) log p(x_n)
        return log_norm, weighted - log_norm[:, None]

    def _m_step(self, X, Xc, center, outer, resp: np.ndarray) -> None:
        _n, d = X.shape
        nk = resp.sum(axis=0) + 10 * np.finfo(resp.dtype).eps  # (K,) as scikit-learn
        means_c = resp.T @ Xc / nk[:, None]  # (K, D), relative to the data's centre
        if outer is not None:
            second = (resp.T @ outer).reshape(-1, d, d) / nk[:, None, None]  # E_k[xc xc^T]
            cov = second - means_c[:, :, None] * means_c[:, None, :]
        else:
            cov = np.empty((len(nk), d, d))
            for k in range(len(nk)):
                diff = Xc - means_c[k]
                cov[k] = (resp[:, k] * diff.T) @ diff / nk[k]
        cov[:, np.arange(d), np.arange(d)] += self.reg_covar
        self.weights_ = nk / nk.sum()
        self.means_ = means_c + center
        self.covariances_ = cov
        self._update_precisions()

    # -- using the fitted model -----------------------------------------------------------------
    def _checked(self, X: Any) -> np.ndarray:
        check_fitted(self, "means_")
        X = as_2d(X)
        if X.shape[1] != self.means_.shape[1]:
            raise ValueError(f"X: has {X.shape[1]} features, the mixture {self.means_.shape[1]}")
        return X

    def score_samples(self, X: Any) -> np.ndarray:
        """log p(x) for every sample."""
        return _logsumexp_rows(self._weighted_log_prob(self._checked(X)))

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per sample."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.exp(self._e_step(self._checked(X))[1])

    def predict(self, X: Any) -> np.ndarray:
        return self._weighted_log_prob(self._checked(X)).argmax(axis=1)

    def sample(self, n_samples: int = 1, random_state: int | None = None):
        """``(X, components)``: samples and the component each came from."""
        check_fitted(self, "means_")
        rng = np.random.default_rng(random_state)
        counts = rng.multinomial(n_samples, self.weights_)
        parts, labels = [], []
        for k, count in enumerate(counts):
            chol = np.linalg.cholesky(self.covariances_[k])
            parts.append(
                self.means_[k] + rng.standard_normal((count, len(self.means_[k]))) @ chol.T
            )
            labels.append(np.full(count, k))
        return np.concatenate(parts), np.concatenate(labels)


def _logsumexp_rows(a: np.ndarray) -> np.ndarray:
    """log(sum(exp(a), axis=1)), stable; rows of all -inf give -inf."""
    top = a.max(axis=1)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(a - safe[:, None]).sum(axis=1)) + safe
