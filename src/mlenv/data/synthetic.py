"""The book's synthetic data (step 6 of "Deep Learning from Scratch 5"), drawn exactly as the book
draws it, so ``torch.manual_seed(0)`` followed by these functions gives the book's numbers.

- ``line_data``: x ~ U(0, 1), y = 5 + 2x + U(0, 1) (linear regression);
- ``sine_data``: x ~ U(0, 1), y = sin(2 pi x) + U(0, 1) (the 1-10-1 network).

The noise is uniform on [0, 1), so its variance, 1/12 = 0.0833, is the mean squared error that no
model can beat on fresh points.

``book-sine`` is the registered data set: its training split is the book's 100 points (the first
draws of a generator seeded with the run's seed), then validation and test points from the same
generator, so the three splits are disjoint draws of the same process.
"""

from __future__ import annotations

import math

import torch

from mlenv.data import DataBundle, register_dataset
from mlenv.errors import ConfigError

NOISE_VARIANCE = 1 / 12  # Var(U(0, 1)): the lowest expected MSE on fresh points


def line_data(n: int = 100, generator: torch.Generator | None = None):
    """``(x, y)``, each (n, 1): y = 5 + 2x + U(0, 1). Draws x, then the noise, from ``generator``
    (the global RNG when ``None``), in the book's order."""
    x = torch.rand(n, 1, generator=generator)  # (n, 1)
    y = 5 + 2 * x + torch.rand(n, 1, generator=generator)  # (n, 1)
    return x, y


def sine_data(n: int = 100, generator: torch.Generator | None = None):
    """``(x, y)``, each (n, 1): y = sin(2 pi x) + U(0, 1), drawn in the book's order."""
    x = torch.rand(n, 1, generator=generator)  # (n, 1)
    y = torch.sin(2 * math.pi * x) + torch.rand(n, 1, generator=generator)  # (n, 1)
    return x, y


@register_dataset("book-sine", provides=("in_features", "out_features"))
def book_sine(
    seed: int,
    samples: int = 100,
    val_samples: int = 100,
    test_samples: int = 100,
    steps_per_epoch: int = 100,
) -> DataBundle:
    """The book's sine data (step 6): y = sin(2 pi x) + U(0, 1), 100 training points as the book.

    The book takes 10,000 full-batch gradient steps. A batch here is all the points of a split,
    shape (1, N, 1), and the training split holds its one batch ``steps_per_epoch`` times
    (shape (S, N, 1), views of the same points): with ``batch_size`` 1 every optimizer step is
    one full-batch step, as the book's loop, and an epoch is ``steps_per_epoch`` of them, so a
    run logs and checkpoints per 100 steps rather than after every one.
    """
    for flag, value in (
        ("samples", samples),
        ("val_samples", val_samples),
        ("test_samples", test_samples),
        ("steps_per_epoch", steps_per_epoch),
    ):
        if value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}: accepts an integer >= 1, got {value}")
    generator = torch.Generator().manual_seed(seed)
    x, y = sine_data(samples, generator)  # (N, 1) each: the book's points for seed 0
    val = sine_data(val_samples, generator)
    test = sine_data(test_samples, generator)

    def full_batches(x: torch.Tensor, y: torch.Tensor, copies: int = 1):
        return x.expand(copies, *x.shape), y.expand(copies, *y.shape)  # (copies, N, 1)

    return DataBundle(
        train=full_batches(x, y, steps_per_epoch),
        val=full_batches(*val),
        test=full_batches(*test),
        model_kwargs={"in_features": 1, "out_features": 1},
        info={
            "name": "book-sine",
            "sizes": [samples, val_samples, test_samples],
            "full_batch_steps_per_epoch": steps_per_epoch,
            "noise_mse": round(NOISE_VARIANCE, 6),
        },
    )
