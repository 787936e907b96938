"""Noise schedules and samplers for diffusion models, separate from the network (diffusers style).

A scheduler holds the schedule (``betas``, ``alphas_cumprod``), noises clean images for training
(``add_noise``) and takes one reverse step from a network's noise prediction
(``step(model_output, t, sample)``); ``set_timesteps(k)`` picks the steps a sampling loop visits.
The loop itself is ``sample`` below, a dozen readable lines; any trained noise predictor works with
either scheduler, so a network trained with 1000 DDPM steps samples in 50 DDIM steps.

    scheduler = DDIMScheduler()            # or DDPMScheduler(): the book's 1000 steps
    scheduler.set_timesteps(50)
    x = torch.randn(20, 1, 28, 28)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, torch.full((20,), t)), t, x)

Notation (the book's): ``beta_t`` the noise added at step t, ``alpha_t = 1 - beta_t``,
``alpha_bar_t = prod(alpha_0 .. alpha_t)``, so ``q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0,
(1 - alpha_bar_t) I)``. Steps are indexed 0 .. T-1 in the tables; the number the network is
told for step index ``i`` is ``i + first_step``: 0 (diffusers, mlenv's recipes) or 1 (the book's
code, whose t runs 1 .. T with ``alpha_bars[t - 1]``). ``data_range`` is the pixel range of the
images (``(-1, 1)`` or the book's ``(0, 1)``): what ``clip_sample`` clamps to and what
``to_unit`` maps to [0, 1] for pictures.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from mlenv.errors import ConfigError


class DDPMScheduler:
    """The book's DDPM: ``num_train_timesteps`` steps of linearly increasing noise
    (``beta_start`` .. ``beta_end``). ``step`` samples ``x_{t-1}`` from the reverse process with
    the mean ``(x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_t)`` and the posterior
    variance ``beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)`` (no noise at the last step),
    then clamps to ``data_range`` (``clip_sample``; the book's code clamps only the finished
    image, which is ``clip_sample=False``).

    >>> scheduler = DDPMScheduler()
    >>> x_t = scheduler.add_noise(torch.zeros(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor([0, 999]))
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        clip_sample: bool = True,
        first_step: int = 0,
        data_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        check_schedule(num_train_timesteps, beta_start, beta_end)
        if first_step not in (0, 1):
            raise ConfigError(f"--first_step: accepts 0 or 1, got {first_step}")
        low, high = (float(v) for v in data_range)
        if not low < high:
            raise ConfigError(f"data_range: accepts (low, high) with low < high, got {data_range}")
        self.num_train_timesteps = num_train_timesteps
        self.clip_sample = clip_sample
        self.first_step = first_step
        self.data_range = (low, high)
        # float64 for the products over 1000 steps; tensors for training, floats for sampling
        self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self._beta = self.betas.tolist()
        self._alpha_bar = self.alphas_cumprod.tolist()
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self.timesteps = list(range(num_train_timesteps - 1, -1, -1))

    def set_timesteps(self, num_inference_steps: int | None = None) -> None:
        """DDPM visits every step, T-1 down to 0 (its posterior needs consecutive steps)."""
        if num_inference_steps not in (None, self.num_train_timesteps):
            raise ConfigError(
                f"--sample-steps: DDPM takes all {self.num_train_timesteps} steps; "
                f"use DDIM for {num_inference_steps}"
            )
        self.timesteps = list(range(self.num_train_timesteps - 1, -1, -1))

    def _noise_tables(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(alpha_bar) and sqrt(1 - alpha_bar), (T,), on ``like``'s device, made once."""
        key = (like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = (
                self.alphas_cumprod.sqrt().to(like.device, like.dtype),
                (1.0 - self.alphas_cumprod).sqrt().to(like.device, like.dtype),
            )
        return self._tables[key]

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise, one t per sample:
        (B, ...) images, (B, ...) noise, (B,) integer steps -> (B, ...)."""
        sqrt_ab, sqrt_one_minus_ab = self._noise_tables(original_samples)
        shape = (-1,) + (1,) * (original_samples.dim() - 1)  # (B, 1, 1, 1)
        return (
            sqrt_ab[timesteps].view(shape) * original_samples
            + sqrt_one_minus_ab[timesteps].view(shape) * noise
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """x_{t-1} from x_t (``sample``) and the predicted noise (``model_output``), both
        (B, C, H, W); ``timestep`` is one int for the whole batch."""
        t = int(timestep)
        beta, alpha_bar = self._beta[t], self._alpha_bar[t]
        # mean: (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_t)
        x = (sample - (beta / math.sqrt(1.0 - alpha_bar)) * model_output) / math.sqrt(1.0 - beta)
        if t > 0:
            variance = beta * (1.0 - self._alpha_bar[t - 1]) / (1.0 - alpha_bar)
            x = x + math.sqrt(variance) * randn_like(x, generator)
        return x.clamp(*self.data_range) if self.clip_sample else x

    def network_steps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The step numbers the network is told for table indices ``timesteps`` (B,)."""
        return timesteps + self.first_step if self.first_step else timesteps

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Images in ``data_range`` -> [0, 1] (clamped), for pictures and the judge."""
        low, high = self.data_range
        return ((images.float() - low) / (high - low)).clamp(0.0, 1.0)


class DDIMScheduler(DDPMScheduler):
    """DDIM (Song et al. 2021) on the same schedule: any ``num_inference_steps`` evenly spaced
    steps (``set_timesteps(50)``: 999, 979, ..., 19; the last one goes to the data). ``step``
    predicts x_0 from the noise
    (clamped to [-1, 1] with ``clip_sample``) and moves to the previous visited step;
    ``eta = 0`` is deterministic, ``eta = 1`` over all steps is DDPM's posterior again.

    >>> scheduler = DDIMScheduler()
    >>> scheduler.set_timesteps(5)
    >>> scheduler.timesteps
    [999, 799, 599, 399, 199]
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        clip_sample: bool = True,
        eta: float = 0.0,
        first_step: int = 0,
        data_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__(
            num_train_timesteps, beta_start, beta_end, clip_sample, first_step, data_range
        )
        if eta < 0:
            raise ConfigError(f"eta: accepts a number >= 0 (0 is deterministic DDIM), got {eta}")
        self.eta = eta
        self.step_ratio = 1
        self._previous: dict[int, int] = {}

    @classmethod
    def from_scheduler(cls, other: DDPMScheduler, eta: float = 0.0) -> DDIMScheduler:
        """DDIM on the schedule another scheduler (the one a network was trained with) holds,
        with its step numbering and data range. DDIM always clamps its estimate of x_0 to the
        data range (the book's ``clip_sample=False`` is about DDPM's own steps)."""
        betas = other.betas
        return cls(
            other.num_train_timesteps,
            float(betas[0]),
            float(betas[-1]),
            True,
            eta,
            other.first_step,
            other.data_range,
        )

    def set_timesteps(self, num_inference_steps: int | None = None) -> None:
        """Visit ``num_inference_steps`` steps, ``T // k`` apart, ending at step 0."""
        T = self.num_train_timesteps
        k = T if num_inference_steps is None else num_inference_steps
        if not 1 <= k <= T:
            raise ConfigError(f"--sample-steps: accepts 1 .. {T}, got {num_inference_steps}")
        self.step_ratio = T // k
        # "trailing" spacing: start at the last step, T - 1, where the network was trained on
        # (almost) pure noise; "leading" spacing (..., 0) would start 2 steps at t = 500
        self.timesteps = [T - 1 - i * self.step_ratio for i in range(k)]
        # each visited step moves to the next one visited; the last one to the data (-1)
        self._previous = dict(zip(self.timesteps, [*self.timesteps[1:], -1], strict=True))

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        t = int(timestep)
        prev = self._previous.get(t, t - self.step_ratio)
        alpha_bar = self._alpha_bar[t]
        alpha_bar_prev = self._alpha_bar[prev] if prev >= 0 else 1.0  # past step 0: the data
        x0 = (sample - math.sqrt(1.0 - alpha_bar) * model_output) / math.sqrt(alpha_bar)
        if self.clip_sample:
            x0 = x0.clamp(*self.data_range)
        sigma = (
            self.eta
            * math.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar))
            * math.sqrt(1.0 - alpha_bar / alpha_bar_prev)
        )
        direction = math.sqrt(max(1.0 - alpha_bar_prev - sigma**2, 0.0))
        x = math.sqrt(alpha_bar_prev) * x0 + direction * model_output
        if sigma > 0:
            x = x + sigma * randn_like(x, generator)
        return x


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped as ``x``, from ``generator`` when given (on its device)."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(
        x.device
    )


def check_schedule(num_train_timesteps: int, beta_start: float, beta_end: float) -> None:
    if num_train_timesteps < 2:
        raise ConfigError(f"--timesteps: accepts an integer >= 2, got {num_train_timesteps}")
    if not 0 < beta_start <= beta_end < 1:
        raise ConfigError(
            f"--beta-start/--beta-end: accept 0 < beta_start <= beta_end < 1, got "
            f"{beta_start} and {beta_end}"
        )


def guided_noise(
    model: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor | None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """The noise prediction a sampler steps with. Unconditional (``labels`` None) or plain
    conditional (``guidance`` 1) is one forward pass; otherwise classifier-free guidance:
    ``eps_uncond + guidance * (eps_cond - eps_uncond)``, the conditional and unconditional
    ("no label") predictions computed as one batch of 2B."""
    if labels is None:
        return model(x, t)
    if guidance == 1.0:
        return model(x, t, labels)
    null = torch.full_like(labels, model.null_label)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))  # (2B, ...)
    eps_cond, eps_uncond = both.float().chunk(2)  # mixed in float32 even under autocast
    return eps_uncond + guidance * (eps_cond - eps_uncond)


@torch.inference_mode()
def sample(
    model: nn.Module,
    scheduler: DDPMScheduler,
    shape: tuple[int, ...],
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Generate ``shape`` images (B, C, H, W) in the scheduler's ``data_range`` by running ``scheduler``'s reverse
    steps from pure noise; ``labels`` (B,) and ``guidance`` for a conditional model;
    ``callback(t, x_t)`` sees each step's result (the denoising trajectory).

    The model is put in eval mode once (BatchNorm uses its running statistics, so the result of
    a sample does not depend on the others in the batch) and runs under inference mode."""
    model.eval()
    device = torch.device(device)
    x = randn_like(torch.empty(shape, device=device), generator)  # x_T (B, C, H, W)
    if labels is not None:
        labels = labels.to(device)
    for t in scheduler.timesteps:
        steps = torch.full((shape[0],), t, device=device, dtype=torch.long)  # (B,)
        eps = guided_noise(model, x, scheduler.network_steps(steps), labels, guidance)
        x = scheduler.step(eps, t, x, generator)
        if callback is not None:
            callback(t, x)
    return x
