"""Non-gradient estimators with scikit-learn's contract: ``__init__`` only stores, ``fit``
validates and returns ``self``, learned attributes end in ``_``."""

from mlenv.classical.gaussian import MultivariateNormal, NormalMLE, kl_normal
from mlenv.classical.mixture import GaussianMixture

__all__ = ["GaussianMixture", "MultivariateNormal", "NormalMLE", "kl_normal"]
