"""The book path ("Deep Learning from Scratch 5"): one short module per step, each writing its
plots and a ``results.json`` and printing its key numbers. ``mlenv book step05`` runs one."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

STEPS = {
    "step01": "the normal distribution and the central limit theorem",
    "step02": "maximum likelihood: a normal fitted to 25,000 heights",
    "step03": "the multivariate normal: density, surface, contours, fit to height and weight",
    "step04": "a Gaussian mixture with fixed parameters on Old Faithful, and sampling from it",
    "step05": "EM for a Gaussian mixture on Old Faithful; KL divergence of two normals",
    "step06": "tensors and autograd: Rosenbrock descent, linear regression, a 1-10-1 network",
    "step07": "a VAE on MNIST (784-200-20) trained by the mlenv Trainer, and its samples",
    "step08": "a hierarchical VAE on MNIST (two latent levels of 20), and its samples",
    "step09": "DDPM on MNIST with the book's UNet; DDPM and DDIM sampling, the denoising path",
    "step10": "conditional DDPM and classifier-free guidance on MNIST, judged by a classifier",
}
TRAINING_STEPS = ("step06", "step07", "step08", "step09", "step10")


def run_step(
    name: str, out: str | Path | None = None, data: str | None = None, options: Any = None
) -> dict[str, Any]:
    """Run one step; results and plots go to ``out`` (default ``book-out/<step>/``). Steps 06-10
    take ``options`` (a ``mlenv.book._common.BookOptions``: epochs, device, sampling)."""
    from mlenv.errors import ConfigError

    if name not in STEPS:
        raise ConfigError(f"unknown book step {name!r}; steps: {', '.join(STEPS)}")
    module = importlib.import_module(f"mlenv.book.{name}")
    folder = Path(out) if out else Path("book-out") / name
    folder.mkdir(parents=True, exist_ok=True)
    if name in TRAINING_STEPS:
        from mlenv.book._common import BookOptions

        return module.run(folder, data, options or BookOptions())
    return module.run(folder, data)
