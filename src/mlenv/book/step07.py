"""Step 7: a variational autoencoder on MNIST, the book's network and loss, trained by mlenv.

The recipe ``mnist-vae`` (also ``mlenv train mnist-vae``): encoder 784 -> 200 (ReLU) -> mu, logvar
(20 each), decoder 20 -> 200 (ReLU) -> 784 -> sigmoid. The loss per image is the book's

    sum (x_hat - x)^2  -  sum (1 + logvar - mu^2 - exp(logvar))

(the second sum has no 0.5 factor: it is twice the KL to N(0, I)), averaged over the batch. Adam
3e-4, batch 32, 30 epochs on all 60,000 training digits. The trained decoder turns 64 draws of
z ~ N(0, I) into new digits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mlenv.book._common import BookOptions, plot_losses, save_grid, train_recipe, write_results
from mlenv.errors import ConfigError

SAMPLES = 64


def check_options(options: BookOptions, step: str) -> None:
    """Steps 7 and 8 sample in one pass: the diffusion flags are a one-line error."""
    for flag, value in (("--sample-steps", options.sample_steps), ("--guidance", options.guidance)):
        if value is not None:
            raise ConfigError(f"{flag}: applies to steps 09-10 only, not {step}")


def train_and_sample(
    recipe: str, folder: Path, options: BookOptions, title: str
) -> tuple[dict[str, Any], Any]:
    """Train ``recipe`` as a normal run, then draw the loss curve and a grid of samples from the
    trained model. Returns the step's results (per-epoch losses and terms, test metrics, plots)
    and the trained model."""
    result, loaded = train_recipe(recipe, folder, options)
    history = result.history
    terms = [k[len("train_") :] for k in history[0] if k.startswith("train_")]
    curves = {term: [row[f"train_{term}"] for row in history] for term in terms}
    model = loaded.model  # on the CPU, in eval mode, trained weights
    generator = torch.Generator().manual_seed(options.seed)
    images = model.sample(SAMPLES, generator=generator).reshape(SAMPLES, 1, 28, 28)
    losses = curves.pop("loss")
    results = {
        "recipe": recipe,
        "epochs": len(losses),
        "losses": losses,  # the book's printed number: the mean batch loss of each epoch
        **curves,  # the loss's named terms per epoch (reconstruction, kl, ...)
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "test": {k: v for k, v in result.summary.items() if k.startswith("test_")},
        "parameters": result.summary.get("parameters"),
        "seconds_per_epoch": [row["seconds"] for row in history],
        "train_digits": result.summary["data"]["sizes"][0],
        "run_dir": str(result.run_dir),
        "plots": {
            "losses": plot_losses(losses, folder / "losses.png", f"{title}: training loss"),
            "samples": save_grid(images, folder / "samples.png", nrow=8, title=f"{title} samples"),
        },
    }
    write_results(folder, results)
    seconds = sum(results["seconds_per_epoch"]) / len(losses)
    epochs = f"{len(losses)} epoch{'s' if len(losses) != 1 else ''}"
    print(
        f"{title}: {epochs} on {results['train_digits']} digits, loss "
        f"{losses[0]:.4f} (epoch 1) -> {losses[-1]:.4f} (epoch {len(losses)}), "
        f"{seconds:.1f} s/epoch"
    )
    print("losses: " + ", ".join(f"{v:.4f}" for v in losses))
    return results, model


def run(folder: Path, data: str | None, options: BookOptions) -> dict[str, Any]:
    check_options(options, "step07")
    results, _ = train_and_sample("mnist-vae", folder, options, "VAE")
    return results
