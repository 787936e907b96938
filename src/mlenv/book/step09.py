"""Step 9: a denoising diffusion model (DDPM) on MNIST, with the book's UNet.

Training (recipe ``mnist-ddpm-book``, the mlenv Trainer), as the book's code runs it: T = 1000
steps of noise with betas linear from 1e-4 to 0.02; each batch of 128 digits in [0, 1] is noised
at a random step ``t`` (1 .. T, the number the network is told) per image in closed form,
``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``, and the UNet learns to predict
``eps`` (mean squared error); Adam 1e-3, 10 epochs. (Recipe ``mnist-ddpm`` is the [-1, 1] form
of the DDPM paper and diffusers; ``RECIPE`` below names which one the step trains.)

Sampling: from pure noise, the reverse steps of the trained run's network, either the book's 1000
DDPM steps or ``--sample-steps K`` DDIM steps from the same network. Writes 20 samples, the
denoising trajectory (x_t of a few samples at several t) and the loss curve.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from mlenv.book._common import (
    BookOptions,
    plot_losses,
    pyplot,
    save,
    save_grid,
    train_recipe,
    write_results,
)
from mlenv.errors import ConfigError
from mlenv.models.diffusion import DDIMScheduler, DDPMScheduler, sample
from mlenv.runtime.device import choose_device

RECIPE = "mnist-ddpm-book"  # the book's form: [0, 1] images, t = 1 .. T
SAMPLES = 20  # the book's 2 x 10 grid
TRAJECTORY_ROWS = 4  # samples whose path from noise to digit is drawn
TRAJECTORY_COLUMNS = 10  # steps shown along it


def book_options(options: BookOptions, data: str | None) -> BookOptions:
    """``data`` (the step's ``--data``) is where MNIST lies unless the options already say."""
    if data and not options.data_dir:
        return dataclasses.replace(options, data_dir=data)
    return options


def make_sampler(trained: DDPMScheduler, steps: int | None) -> DDPMScheduler:
    """The book's DDPM over all T steps (``steps`` None or T), else DDIM with ``steps`` steps,
    both on the schedule the network was trained with."""
    if steps is None or steps == trained.num_train_timesteps:
        scheduler = trained
    else:
        scheduler = DDIMScheduler.from_scheduler(trained)
    scheduler.set_timesteps(steps)
    return scheduler


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Sampling under the precision the run trained with (``bf16``/``16``: autocast)."""
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(str(precision))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def draw_samples(
    loaded: Any,
    scheduler: DDPMScheduler,
    options: BookOptions,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
    count: int = SAMPLES,
    keep: set[int] | None = None,
) -> tuple[torch.Tensor, dict[int, torch.Tensor], float]:
    """``count`` images (N, 1, 28, 28) in [0, 1] from a trained run (``LoadedRun``) with
    ``scheduler``'s reverse steps, the trajectory ``{t: x after the step at t}`` for the steps in ``keep`` (first
    ``TRAJECTORY_ROWS`` images), and the seconds the sampling took. Seeded by ``options.seed``."""
    device = choose_device(options.device)
    model = loaded.model.to(device, memory_format=torch.channels_last)  # 20% faster convs
    generator = torch.Generator(device).manual_seed(options.seed)
    path: dict[int, torch.Tensor] = {}

    def record(t: int, x: torch.Tensor) -> None:
        if keep and t in keep:
            path[t] = x[:TRAJECTORY_ROWS].float().cpu()

    started = time.perf_counter()
    with autocast_for(loaded.config.train.precision, device):
        images = sample(
            model, scheduler, (count, 1, 28, 28), labels, guidance, generator, device, record
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    path = {t: scheduler.to_unit(x) for t, x in path.items()}
    return scheduler.to_unit(images).cpu(), path, seconds


def trajectory_steps(timesteps: list[int], columns: int = TRAJECTORY_COLUMNS) -> list[int]:
    """``columns`` of the sampler's steps, evenly spaced from the first to the last (0)."""
    if len(timesteps) <= columns:
        return list(timesteps)
    picks = [round(i * (len(timesteps) - 1) / (columns - 1)) for i in range(columns)]
    return [timesteps[i] for i in picks]


def plot_trajectory(path: dict[int, torch.Tensor], out: Path, title: str) -> str:
    """Rows: samples; columns: the image right after the reverse step at t (t falling)."""
    plt = pyplot()
    steps = sorted(path, reverse=True)
    rows = len(next(iter(path.values())))
    fig, axes = plt.subplots(
        rows, len(steps), figsize=(len(steps) * 0.9, rows * 0.95 + 0.4), squeeze=False
    )
    for c, t in enumerate(steps):
        for r in range(rows):
            ax = axes[r][c]
            ax.imshow(path[t][r, 0].numpy(), cmap="gray", vmin=0, vmax=1)  # already in [0, 1]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={t}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save(fig, out)


def sampler_name(options: BookOptions) -> str:
    steps = options.sample_steps
    return "ddpm (1000 steps)" if steps in (None, 1000) else f"ddim ({steps} steps, eta 0)"


def trained_run(run_dir: str | Path) -> Any:
    """A trained diffusion run (its folder or checkpoint), loaded (``LoadedRun``)."""
    from mlenv.train.run import load_run
    from mlenv.train.tasks_diffusion import DiffusionTask

    loaded = load_run(run_dir, prog="mlenv book")
    if not isinstance(loaded.task, DiffusionTask):
        raise ConfigError(
            f"{run_dir}: a {loaded.config.trainer} run, not a diffusion one "
            "(train one with mlenv train mnist-ddpm-book or mnist-cfg-book)"
        )
    return loaded


def sample_and_draw(loaded: Any, folder: Path, options: BookOptions) -> dict[str, Any]:
    """20 samples and the denoising trajectory from a trained run: PNGs and their numbers."""
    scheduler = make_sampler(loaded.task.scheduler, options.sample_steps)
    keep = set(trajectory_steps(scheduler.timesteps))
    images, path, seconds = draw_samples(loaded, scheduler, options, keep=keep)
    name = sampler_name(options)
    plots = {
        "samples": save_grid(images, folder / "samples.png", 10, f"DDPM, {name}"),
        "trajectory": plot_trajectory(
            path, folder / "trajectory.png", f"denoising: x after the reverse step at t ({name})"
        ),
    }
    return {
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "precision": loaded.config.train.precision,
        "device": str(choose_device(options.device)),
        "sampler": name,
        "sample_steps": len(scheduler.timesteps),
        "samples": SAMPLES,
        "sampling_seconds": seconds,
        "trajectory_steps": sorted(path, reverse=True),
        "plots": plots,
    }


def write_training_results(folder: Path, result: Any, drawn: dict[str, Any], title: str) -> dict:
    """results.json of a diffusion step: the per-epoch losses and seconds, the run folder, and
    what sampling ``drawn`` (its plots gain the loss curve)."""
    losses = [row["train_loss"] for row in result.history]
    drawn["plots"]["losses"] = plot_losses(losses, folder / "losses.png", title)
    results = {
        "epochs": len(losses),
        "losses": losses,
        "epoch_seconds": [row["seconds"] for row in result.history],
        "run_dir": str(result.run_dir),
        **drawn,
    }
    write_results(folder, results)
    return results


def run(
    folder: Path, data: str | None, options: BookOptions, **recipe_values: Any
) -> dict[str, Any]:
    """Train, sample, draw. ``recipe_values`` override the recipe's (tests: a narrow UNet)."""
    options = book_options(options, data)
    result, loaded = train_recipe(RECIPE, folder, options, **recipe_values)
    losses = [row["train_loss"] for row in result.history]
    drawn = sample_and_draw(loaded, folder, options)
    results = write_training_results(folder, result, drawn, "DDPM noise-prediction loss (MSE)")
    print(f"UNet parameters: {results['parameters']:,}")
    print(f"loss: epoch 1 {losses[0]:.5f}, epoch {len(losses)} {losses[-1]:.5f}")
    print(f"{SAMPLES} samples with {drawn['sampler']}: {drawn['sampling_seconds']:.1f} s")
    return results


def sample_run(run_dir: str | Path, folder: Path, options: BookOptions) -> dict[str, Any]:
    """Sample again from a run trained before (no training): another sampler from the same
    network, e.g. DDIM in 50 steps (``options.sample_steps``).

    >>> sample_run("book-out/step09/runs/mnist-ddpm-book/<id>", Path("ddim50"), BookOptions(sample_steps=50))  # doctest: +SKIP
    """
    folder.mkdir(parents=True, exist_ok=True)
    results = {"run_dir": str(run_dir), **sample_and_draw(trained_run(run_dir), folder, options)}
    write_results(folder, results)
    print(f"{SAMPLES} samples with {results['sampler']}: {results['sampling_seconds']:.1f} s")
    return results
