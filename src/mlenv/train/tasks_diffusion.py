"""Denoising diffusion (DDPM) as a task: the network learns to predict the noise in a noised image.

One training step (``forward_pass``): draw a step ``t`` per image and Gaussian noise, noise the
clean batch to ``x_t`` with the schedule's closed form, predict the noise, take the mean squared
error. With a conditional model (``unet-conditional``) the digit labels go in too, each one
replaced by the model's "no label" with probability ``p_uncond``, so the same network also learns
the unconditional prediction that classifier-free guidance needs at sampling time.

Evaluation (``val_loss``, ``test_loss``) is a fixed number for fixed weights: out of training each
image's step, noise and label dropping come from a generator seeded by that image's own bytes, so
``mlenv test`` gives the same loss twice, best-epoch selection compares weights rather than noise,
the training's random stream is left alone, and the split of a batch over processes changes
nothing.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlenv.errors import ConfigError
from mlenv.models.diffusion import DDIMScheduler, DDPMScheduler, check_schedule, sample
from mlenv.train.tasks import Task, register_task, split_batch

REPORT_SAMPLES = 20  # images drawn into plots/samples.png after a run (DDIM, 50 steps)
REPORT_STEPS = 50
REPORT_GUIDANCE = 3.0  # for a model that learned its "no label" (p_uncond > 0)


def null_label_of(model: nn.Module) -> int | None:
    """The label index a conditional model reads as "no label"; ``None`` if unconditional."""
    from mlenv.train.base import unwrap_model

    return getattr(unwrap_model(model), "null_label", None)


DATA_RANGES = {"signed": (-1.0, 1.0), "unit": (0.0, 1.0)}


def row_generators(x: torch.Tensor) -> list[torch.Generator]:
    """One CPU generator per row of ``x`` (B, ...), seeded by the CRC-32 of the row's bytes."""
    rows = x.detach().float().cpu().reshape(len(x), -1).numpy()  # (B, C*H*W)
    return [torch.Generator().manual_seed(zlib.crc32(row.tobytes())) for row in rows]


def evaluation_draws(
    x0: torch.Tensor, timesteps: int, p_uncond: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step (B,), noise (B, C, H, W) and label-drop flags (B,) of an evaluation batch, each
    row's from its own content-seeded generator: the same image always gets the same draws."""
    steps, noises, drops = [], [], []
    for g in row_generators(x0):
        steps.append(torch.randint(0, timesteps, (1,), generator=g))
        noises.append(torch.randn(x0.shape[1:], generator=g))
        drops.append(torch.rand(1, generator=g) < p_uncond)
    device = x0.device
    return (
        torch.cat(steps).to(device),
        torch.stack(noises).to(device, x0.dtype),
        torch.cat(drops).to(device),
    )


@register_task("diffusion")
class DiffusionTask(Task):
    """Noise prediction with the book's DDPM schedule (``timesteps`` steps, betas linear from
    ``beta_start`` to ``beta_end``). ``p_uncond``: the probability that a training label is
    replaced by the "no label" (classifier-free guidance; needs a conditional model).
    ``data_scale``: the images' range, ``signed`` [-1, 1] or ``unit`` [0, 1] (filled from the
    data set's ``--scale``); ``first_step``: the number the network is told for the first step,
    0 (mlenv, diffusers) or 1 (the book's t = 1 .. T); ``clip_sample``: DDPM sampling clamps
    every step to the data range (the book clamps only the finished image: false).

    >>> task = DiffusionTask(p_uncond=0.1)
    >>> task.scheduler.num_train_timesteps
    1000
    """

    def __init__(
        self,
        criterion: Any = None,
        *,
        timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        p_uncond: float = 0.0,
        data_scale: str = "signed",
        first_step: int = 0,
        clip_sample: bool = True,
    ) -> None:
        super().__init__(criterion)
        check_schedule(timesteps, beta_start, beta_end)
        if not 0 <= p_uncond < 1:
            raise ConfigError(f"--p_uncond: accepts a probability in [0, 1), got {p_uncond}")
        if data_scale not in DATA_RANGES:
            raise ConfigError(f"--scale: accepts unit or signed, got {data_scale!r}")
        self.p_uncond = p_uncond
        self.data_scale = data_scale
        self.scheduler = DDPMScheduler(
            timesteps, beta_start, beta_end, clip_sample, first_step, DATA_RANGES[data_scale]
        )

    def get_criterion(self, model: nn.Module | None = None) -> Any:
        """MSE; also readies the network the Trainer is about to train (its set-up asks this
        once, before the optimizer is built): a conditional one when labels are dropped, and
        its weights in channels-last layout, which makes the UNet's convolutions 14% faster on
        the CPU (bf16, measured in docs/book.md). Checkpoints and safetensors keep working:
        the values are the same, only their order in memory changes."""
        if model is not None and self.p_uncond > 0 and null_label_of(model) is None:
            raise ConfigError(
                f"--p_uncond {self.p_uncond}: dropping labels needs a conditional model "
                "(unet-conditional); this one takes no labels"
            )
        if model is not None:
            model.to(memory_format=torch.channels_last)
        return self.criterion or nn.MSELoss()

    def drop_labels(
        self, labels: torch.Tensor, null_label: int, dropped: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Each label replaced by ``null_label`` with probability ``p_uncond``, independently
        (or where ``dropped`` (B,) says, in evaluation)."""
        if self.p_uncond == 0:
            return labels
        if dropped is None:
            dropped = torch.rand(labels.shape, device=labels.device) < self.p_uncond  # (B,)
        return labels.masked_fill(dropped, null_label)

    def forward_pass(
        self, model: nn.Module, batch: Any, criterion: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x0, labels = split_batch(batch)  # (B, C, H, W) in the data range, (B,) digits
        T = self.scheduler.num_train_timesteps
        if model.training:
            t = torch.randint(0, T, (len(x0),), device=x0.device)  # (B,) table indices
            noise = torch.randn_like(x0)  # (B, C, H, W)
            dropped = None
        else:
            t, noise, dropped = evaluation_draws(x0, T, self.p_uncond)
        x_t = self.scheduler.add_noise(x0, noise, t)
        steps = self.scheduler.network_steps(t)  # what the network is told: t or the book's t + 1
        null = null_label_of(model)
        if null is None:
            predicted = model(x_t, steps)
        else:
            if labels is None:
                raise ConfigError("a conditional diffusion model needs labels in the batch")
            predicted = model(x_t, steps, self.drop_labels(labels, null, dropped))
        return criterion(predicted.float(), noise), predicted

    def inference(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The predicted noise of the batch noised at its evaluation steps (content-seeded)."""
        return self.forward_pass(model, batch, nn.MSELoss())[1]

    def report(self, trainer: Any, bundle: Any, run: Any) -> dict[str, Any]:
        """``plots/samples.png``: 20 digits from the trained model (DDIM, 50 steps; a
        conditional model draws 0..9 twice, with guidance 3 when it learned "no label")."""
        if run is None:
            return {}
        model = trainer.raw_model
        labels, guidance = None, 1.0
        if null_label_of(model) is not None:
            labels = torch.arange(REPORT_SAMPLES) % null_label_of(model)
            guidance = REPORT_GUIDANCE if self.p_uncond > 0 else 1.0
        scheduler = DDIMScheduler.from_scheduler(self.scheduler)
        scheduler.set_timesteps(REPORT_STEPS)
        shape = (REPORT_SAMPLES, *bundle.train[0].shape[1:])
        generator = torch.Generator(trainer.device).manual_seed(trainer.config.seed)
        with trainer.autocast():
            images = sample(model, scheduler, shape, labels, guidance, generator, trainer.device)
        path = write_image_grid(scheduler.to_unit(images), run.plots / "samples.png", nrow=10)
        return {"samples": str(path)}


def write_image_grid(images: torch.Tensor, path: str | Path, nrow: int) -> Path:
    """A PNG grid of ``images`` (N, C, H, W) in [0, 1], ``nrow`` a row, written atomically."""
    from PIL import Image
    from torchvision.utils import make_grid

    from mlenv.train.checkpoint import atomic_write_bytes

    x = images.detach().float().cpu().clamp(0, 1)  # (N, C, H, W)
    grid = make_grid(x, nrow=nrow, padding=2, pad_value=1.0)  # (3, H', W')
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H', W', 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
