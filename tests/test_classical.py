"""Estimators against independent oracles: scipy.stats, numpy and scikit-learn."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats
from sklearn.mixture import GaussianMixture as SklearnGMM

from mlenv.classical import GaussianMixture, MultivariateNormal, NormalMLE, kl_normal


def test_normal_pdf_cdf_and_mle_against_scipy_and_numpy():
    x = np.linspace(-4, 9, 57)
    model = NormalMLE(mu=2.5, sigma=1.7)
    np.testing.assert_allclose(model.pdf(x), stats.norm(2.5, 1.7).pdf(x), rtol=1e-12)
    np.testing.assert_allclose(model.cdf(x), stats.norm(2.5, 1.7).cdf(x), rtol=1e-12)
    data = np.random.default_rng(0).normal(3, 2, 1000)
    fitted = NormalMLE().fit(data)
    assert fitted.mu_ == pytest.approx(np.mean(data), rel=1e-14)
    assert fitted.sigma_ == pytest.approx(np.std(data, ddof=0), rel=1e-14)


def test_multivariate_normal_against_scipy_and_numpy():
    rng = np.random.default_rng(1)
    mean, cov = (
        np.array([1.0, -2.0, 0.5]),
        np.array([[2, 0.3, 0.1], [0.3, 1, -0.2], [0.1, -0.2, 0.7]]),
    )
    X = rng.normal(size=(40, 3))
    model = MultivariateNormal(mean, cov)
    np.testing.assert_allclose(
        model.logpdf(X), stats.multivariate_normal(mean, cov).logpdf(X), rtol=1e-12
    )
    data = model.sample(5000, random_state=2)
    for ddof in (0, 1):
        fitted = MultivariateNormal(ddof=ddof).fit(data)
        np.testing.assert_allclose(fitted.mean_, data.mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(fitted.covariance_, np.cov(data.T, ddof=ddof), rtol=1e-12)
    np.testing.assert_allclose(data.mean(axis=0), mean, atol=0.06)  # sampling moments
    np.testing.assert_allclose(np.cov(data.T), cov, atol=0.1)


def test_singular_covariance_is_a_clear_error_or_regularised():
    X = np.c_[np.arange(10.0), np.ones(10)]  # second feature constant: singular covariance
    model = MultivariateNormal().fit(X)
    with pytest.raises(ValueError, match="singular or not positive definite"):
        model.logpdf(X)
    assert np.isfinite(MultivariateNormal(reg_covar=1e-6).fit(X).logpdf(X)).all()
    with pytest.raises(ValueError, match="component 0 is singular or not positive definite"):
        GaussianMixture(1, reg_covar=0.0).fit(X)
    assert np.isfinite(GaussianMixture(1, reg_covar=1e-6).fit(X).score(X))


def _compare_with_sklearn(X, weights, means, covs, tol=1e-6, max_iter=300):
    ours = GaussianMixture(
        len(weights),
        weights_init=weights,
        means_init=means,
        covariances_init=covs,
        tol=tol,
        max_iter=max_iter,
    ).fit(X)
    reference = SklearnGMM(
        len(weights),
        weights_init=weights,
        means_init=means,
        precisions_init=np.linalg.inv(covs),
        tol=tol,
        max_iter=max_iter,
    ).fit(X)
    assert ours.n_iter_ == reference.n_iter_
    assert ours.score(X) == pytest.approx(reference.score(X), abs=1e-6)
    assert ours.lower_bound_ == pytest.approx(reference.lower_bound_, abs=1e-6)
    np.testing.assert_allclose(ours.weights_, reference.weights_, atol=1e-4)
    np.testing.assert_allclose(ours.means_, reference.means_, atol=1e-4)
    np.testing.assert_allclose(ours.covariances_, reference.covariances_, atol=1e-4)
    np.testing.assert_array_equal(ours.predict(X), reference.predict(X))
    np.testing.assert_allclose(ours.predict_proba(X), reference.predict_proba(X), atol=1e-6)
    return ours


def test_gaussian_mixture_equals_sklearn_on_old_faithful(shared_data):
    X = np.loadtxt(shared_data / "dlfs5" / "old_faithful.txt")
    model = _compare_with_sklearn(
        X,
        np.array([0.5, 0.5]),
        np.array([[2.0, 50.0], [4.0, 80.0]]),
        np.array([np.eye(2) * 0.5, np.eye(2) * 30.0]),
    )
    history = model.log_likelihoods_
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(history))  # EM ascends


def test_gaussian_mixture_equals_sklearn_on_five_components():
    rng = np.random.default_rng(7)
    centres = np.array([[0, 0], [6, 0], [0, 6], [6, 6], [3, 12]], dtype=float)
    X = np.concatenate([rng.normal(c, [0.8, 1.2], size=(300, 2)) for c in centres])
    start = X[rng.choice(len(X), 5, replace=False)]
    _compare_with_sklearn(X, np.full(5, 0.2), start, np.array([np.eye(2)] * 5))


def test_mixture_sampling_reproduces_moments():
    model = GaussianMixture(2)
    model.weights_ = np.array([0.3, 0.7])
    model.means_ = np.array([[0.0, 0.0], [5.0, 1.0]])
    model.covariances_ = np.array([np.eye(2), [[2.0, 0.5], [0.5, 1.0]]])
    X, labels = model.sample(200_000, random_state=0)
    assert np.bincount(labels) / len(labels) == pytest.approx([0.3, 0.7], abs=0.005)
    mean = model.weights_ @ model.means_
    np.testing.assert_allclose(X.mean(axis=0), mean, atol=0.02)
    second = sum(
        w * (c + np.outer(m, m))
        for w, m, c in zip(model.weights_, model.means_, model.covariances_, strict=True)
    )
    np.testing.assert_allclose(np.cov(X.T, ddof=0), second - np.outer(mean, mean), atol=0.05)


def test_estimator_contract_and_input_errors():
    gmm = GaussianMixture(n_components=3, max_iter=5)
    assert not hasattr(gmm, "means_")  # __init__ only stores
    with pytest.raises(AttributeError, match="not fitted yet"):
        gmm.predict([[0.0]])
    with pytest.raises(ValueError, match="row 1 holds NaN"):
        gmm.fit([[0.0], [np.nan], [1.0]])
    with pytest.raises(ValueError, match="fewer than n_components=3"):
        gmm.fit([[0.0], [1.0]])
    assert gmm.fit(np.random.default_rng(0).normal(size=(30, 2))) is gmm  # fit returns self


def test_kl_closed_form():
    assert kl_normal(0, 1, 1, 2) == pytest.approx(np.log(2) + (1 + 1) / 8 - 0.5)


def test_normal_and_multivariate_mle_on_hand_computed_values():
    fitted = NormalMLE().fit([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5: MLE variance 5/4 (not 5/3)
    assert fitted.mu_ == 2.5 and fitted.sigma_ == pytest.approx(np.sqrt(1.25), rel=1e-15)
    assert fitted.logpdf(2.5) == pytest.approx(-np.log(np.sqrt(1.25)) - 0.5 * np.log(2 * np.pi))
    square = [[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]]
    mle = MultivariateNormal().fit(square)
    np.testing.assert_allclose(mle.mean_, [1.0, 1.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(mle.covariance_, np.eye(2), rtol=0, atol=1e-15)  # 4 / 4
    unbiased = MultivariateNormal(ddof=1).fit(square)
    np.testing.assert_allclose(unbiased.covariance_, np.eye(2) * 4 / 3, rtol=1e-15)
    # det [[4, 0], [0, 1]] = 4; at mean + (2, 1) the Mahalanobis distance is 4/4 + 1/1 = 2
    given = MultivariateNormal(mean=[1.0, 1.0], cov=[[4.0, 0.0], [0.0, 1.0]])
    at_mean = -np.log(2 * np.pi) - 0.5 * np.log(4.0)
    np.testing.assert_allclose(
        given.logpdf([[1.0, 1.0], [3.0, 2.0]]), [at_mean, at_mean - 1.0], rtol=1e-14
    )


def two_clusters():
    return np.array([[-1.0], [0.0], [1.0], [9.0], [10.0], [11.0]])


def test_mixture_fit_predict_and_score_on_a_hand_case():
    """Two clusters 10 apart: responsibilities are 0/1 to within exp(-70), so EM's fixed point
    is each cluster's own MLE: means 0 and 10, variance 2/3 (+ reg_covar), weights 1/2."""
    X = two_clusters()
    model = GaussianMixture(
        2, weights_init=[0.5, 0.5], means_init=[[0.0], [10.0]], covariances_init=[[[1.0]], [[1.0]]]
    ).fit(X)
    var = 2 / 3 + 1e-6
    np.testing.assert_allclose(model.means_.ravel(), [0.0, 10.0], atol=1e-12)
    np.testing.assert_allclose(model.covariances_.ravel(), [var, var], rtol=1e-10)
    np.testing.assert_allclose(model.weights_, [0.5, 0.5], rtol=1e-12)
    assert model.converged_
    # log p(x) = log(1/2) - log(2 pi var)/2 - (x - mu)^2 / (2 var); the mean of (x - mu)^2 is 2/3
    expected = np.log(0.5) - 0.5 * np.log(2 * np.pi * var) - (2 / 3) / (2 * var)
    assert model.score(X) == pytest.approx(expected, abs=1e-10)
    assert model.lower_bound_ == pytest.approx(expected, abs=1e-6)
    np.testing.assert_array_equal(model.predict(X), [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(model.predict([[4.9], [5.1]]), [0, 1])  # the midpoint is 5
    np.testing.assert_allclose(model.predict_proba([[5.0]]), [[0.5, 0.5]], rtol=1e-12)
    history = model.log_likelihoods_
    assert len(history) >= 2 and all(b >= a - 1e-12 for a, b in itertools.pairwise(history))


def test_mixture_means_init_alone_is_used_and_one_d_input_is_one_feature():
    X = two_clusters()
    for start in ([[0.0], [10.0]], [[10.0], [0.0]]):  # each order is kept, whatever k-means says
        model = GaussianMixture(2, means_init=start, random_state=0).fit(X)
        np.testing.assert_allclose(model.means_, start, atol=1e-9)
    one_d = GaussianMixture(1).fit([1.0, 2.0, 3.0, 4.0])  # a 1-D list: 4 samples of 1 feature
    np.testing.assert_allclose(one_d.means_, [[2.5]], rtol=1e-15)
    np.testing.assert_allclose(one_d.covariances_, [[[1.25 + 1e-6]]], rtol=1e-12)
    as_many = GaussianMixture(2).fit([[0.0], [1.0]])  # as many samples as components is enough
    np.testing.assert_allclose(sorted(as_many.means_.ravel()), [0.0, 1.0], atol=1e-12)


def test_mixture_settings_and_initial_values_of_the_wrong_shape_are_clear_errors():
    X = two_clusters()
    for kwargs, message in (
        ({"max_iter": 0}, "max_iter: accepts an integer >= 1, got 0"),
        ({"tol": -1.0}, "tol: accepts a number >= 0, got -1.0"),
        ({"tol": float("nan")}, "tol: accepts a number >= 0, got nan"),
        ({"means_init": [[0.0], [1.0], [2.0]]}, "means_init: expected shape (2, 1) for 2 comp"),
        ({"weights_init": [1.0]}, "weights_init: expected shape (2,) for 2 components"),
        ({"covariances_init": [[[1.0]]]}, "covariances_init: expected shape (2, 1, 1)"),
    ):
        with pytest.raises(ValueError) as caught:
            GaussianMixture(2, **kwargs).fit(X)
        assert message in str(caught.value), (kwargs, str(caught.value))
