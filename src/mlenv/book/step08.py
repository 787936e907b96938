"""Step 8: a hierarchical VAE on MNIST with two latent levels, trained by mlenv.

The recipe ``mnist-hvae`` (also ``mlenv train mnist-hvae``): q(z1 | x) and q(z2 | z1) are
diagonal Gaussians (one hidden layer of 100, 20 dims each); p(z1 | z2) = N(decoder2(z2), I) and
the mean image is sigmoid(decoder1(z1)). The loss per image is the book's

    sum (x_hat - x)^2
    - sum (1 + logvar2 - mu2^2 - exp(logvar2))               twice KL(q(z2 | z1) || N(0, I))
    - sum (1 + logvar1 - (mu1 - z1_hat)^2 - exp(logvar1))    twice KL(q(z1 | x) || N(z1_hat, I))

with z1_hat = decoder2(z2) for one sample z2 of q(z2 | z1), averaged over the batch. Adam 1e-3,
batch 32, 30 epochs. Samples are ancestral: z2 ~ N(0, I), z1 ~ N(decoder2(z2), I), x.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlenv.book._common import BookOptions
from mlenv.book.step07 import check_options, train_and_sample


def run(folder: Path, data: str | None, options: BookOptions) -> dict[str, Any]:
    check_options(options, "step08")
    results, _ = train_and_sample("mnist-hvae", folder, options, "hierarchical VAE")
    return results
