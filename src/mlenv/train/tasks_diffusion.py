"""Denoising diffusion (DDPM) as a task: the network learns to predict the noise in a noised image.

One training step (``forward_pass``): draw a step ``t`` per image and Gaussian noise, noise the
clean batch to ``x_t`` with the schedule's closed form, predict the noise, take the mean squared
error. With a conditional model (``unet-conditional``) the digit labels go in too, each one
replaced by the model's "no label" with probability ``p_uncond``, so the same network also learns
the unconditional prediction that classifier-free guidance needs at sampling time.
"""

from __future__ import annotations

import io
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


@register_task("diffusion")
class DiffusionTask(Task):
    """Noise prediction with the book's DDPM schedule (``timesteps`` steps, betas linear from
    ``beta_start`` to ``beta_end``). ``p_uncond``: the probability that a training label is
    replaced by the "no label" (classifier-free guidance; needs a conditional model).

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
    ) -> None:
        super().__init__(criterion)
        check_schedule(timesteps, beta_start, beta_end)
        if not 0 <= p_uncond < 1:
            raise ConfigError(f"--p_uncond: accepts a probability in [0, 1), got {p_uncond}")
        self.p_uncond = p_uncond
        self.scheduler = DDPMScheduler(timesteps, beta_start, beta_end)

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

    def drop_labels(self, labels: torch.Tensor, null_label: int) -> torch.Tensor:
        """Each label replaced by ``null_label`` with probability ``p_uncond``, independently."""
        if self.p_uncond == 0:
            return labels
        dropped = torch.rand(labels.shape, device=labels.device) < self.p_uncond  # (B,)
        return labels.masked_fill(dropped, null_label)

    def forward_pass(
        self, model: nn.Module, batch: Any, criterion: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x0, labels = split_batch(batch)  # (B, C, H, W) in [-1, 1], (B,) digits
        t = torch.randint(0, self.scheduler.num_train_timesteps, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)  # (B, C, H, W)
        x_t = self.scheduler.add_noise(x0, noise, t)
        null = null_label_of(model)
        if null is None:
            predicted = model(x_t, t)
        else:
            if labels is None:
                raise ConfigError("a conditional diffusion model needs labels in the batch")
            predicted = model(x_t, t, self.drop_labels(labels, null))
        return criterion(predicted.float(), noise), predicted

    def inference(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The predicted noise of the batch noised at random steps (as in training)."""
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
        path = write_image_grid(images, run.plots / "samples.png", nrow=10)
        return {"samples": str(path)}


def write_image_grid(images: torch.Tensor, path: str | Path, nrow: int) -> Path:
    """A PNG grid of ``images`` (N, C, H, W) in [-1, 1], ``nrow`` a row, written atomically."""
    from PIL import Image
    from torchvision.utils import make_grid

    from mlenv.train.checkpoint import atomic_write_bytes

    x = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2  # (N, C, H, W) in [0, 1]
    grid = make_grid(x, nrow=nrow, padding=2, pad_value=1.0)  # (3, H', W')
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H', W', 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
