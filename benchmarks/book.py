"""The book's training loops (steps 07-10 of "Deep Learning from Scratch 5") against mlenv's Trainer,
side by side in one process, alternating, same machine, same thread count.

The book side is a faithful re-writing of the book's scripts (our code, the book's behaviour): the
same models (per-sample Python position encoding in the UNets), torchvision MNIST through a
``DataLoader`` with ``ToTensor`` (plus flatten, or scaling to [-1, 1]), the same batch size,
plain ``torch.optim.Adam`` and the same learning rate, ``loss.item()`` every step; step10 drops
the labels of a whole batch with probability 0.1 (``np.random.random() < 0.1``) as the book's
cfg.py does. The mlenv side is the recipe (``mnist-vae``, ``mnist-hvae``, ``mnist-ddpm``,
``mnist-cfg``) built by ``mlenv.config`` and ``mlenv.train.run.build``, trained by the real
``Trainer.fit`` for the same number of iterations (``--limit_batches``, no run folder).

Both sides: ``warmup`` iterations, then ``iters`` timed ones; seconds per iteration, the epoch
extrapolated (60,000 digits / batch), the ratio, and every iteration's loss from the start (the
mean over the same iterations is compared). Steps 09 and 10 also time sampling 20 digits: the
book's 1000-step loop (its ``Diffuser.sample``, PIL images out) against mlenv's ``sample`` with
the DDPM scheduler (1000 steps) and with DDIM (50 steps).

    .venv/bin/python benchmarks/book.py --threads 2      # the issue's anchor: 2 CPU threads
    .venv/bin/python benchmarks/book.py --steps 07 --iters 20 --no-sample     # a quick look
    .venv/bin/python benchmarks/book.py --steps 09,10 --device cuda --iters 100 --warmup 10 \
        --out benchmarks/results/book-cuda.json

Timings on a CPU whose cores other processes share are noise; read the ratios of a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, median

REPO = Path(__file__).resolve().parents[1]
TRAIN_DIGITS = 60_000
# step -> (mlenv recipe, batch size, book learning rate, default warmup, default timed iterations)
STEPS = {
    "07": ("mnist-vae", 32, 3e-4, 20, 300),
    "08": ("mnist-hvae", 32, 1e-3, 20, 300),
    "09": ("mnist-ddpm", 128, 1e-3, 2, 8),
    "10": ("mnist-cfg", 128, 1e-3, 2, 8),
}
T_STEPS = 1000
SAMPLES = 20


# ---------------------------------------------------------------------------------------------
# The book's models, written to behave as its scripts do.


class BookEncoder(nn.Module):
    """step07: x -> (mu, sigma), sigma straight from a Linear; step08: sigma = exp(logvar / 2)."""

    def __init__(self, d_in: int, hidden: int, latent: int, sigma_from_logvar: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, hidden)
        self.linear_mu = nn.Linear(hidden, latent)
        self.linear_sigma = nn.Linear(hidden, latent)
        self.sigma_from_logvar = sigma_from_logvar

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.linear(x))
        s = self.linear_sigma(h)
        return self.linear_mu(h), torch.exp(0.5 * s) if self.sigma_from_logvar else s


class BookDecoder(nn.Module):
    def __init__(self, latent: int, hidden: int, d_out: int, sigmoid: bool) -> None:
        super().__init__()
        self.linear1 = nn.Linear(latent, hidden)
        self.linear2 = nn.Linear(hidden, d_out)
        self.sigmoid = sigmoid

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.linear2(F.relu(self.linear1(z)))
        return torch.sigmoid(h) if self.sigmoid else h


def book_reparameterize(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return mu + torch.randn_like(sigma) * sigma


class BookVAE(nn.Module):
    """step07: 784-200-20; loss (sum of squared errors - sum(1 + log sigma^2 - mu^2 - sigma^2))
    per image."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = BookEncoder(784, 200, 20, sigma_from_logvar=False)
        self.decoder = BookDecoder(20, 200, 784, sigmoid=True)

    def get_loss(self, x: torch.Tensor) -> torch.Tensor:
        mu, sigma = self.encoder(x)
        x_hat = self.decoder(book_reparameterize(mu, sigma))
        l1 = F.mse_loss(x_hat, x, reduction="sum")
        l2 = -torch.sum(1 + torch.log(sigma**2) - mu**2 - sigma**2)
        return (l1 + l2) / len(x)


class BookHVAE(nn.Module):
    """step08: two latent levels of 20, hidden 100."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder1 = BookEncoder(784, 100, 20, sigma_from_logvar=True)
        self.encoder2 = BookEncoder(20, 100, 20, sigma_from_logvar=True)
        self.decoder1 = BookDecoder(20, 100, 784, sigmoid=True)
        self.decoder2 = BookDecoder(20, 100, 20, sigmoid=False)

    def get_loss(self, x: torch.Tensor) -> torch.Tensor:
        mu1, sigma1 = self.encoder1(x)
        z1 = book_reparameterize(mu1, sigma1)
        mu2, sigma2 = self.encoder2(z1)
        z2 = book_reparameterize(mu2, sigma2)
        z_hat = self.decoder2(z2)
        x_hat = self.decoder1(z1)
        l1 = F.mse_loss(x_hat, x, reduction="sum")
        l2 = -torch.sum(1 + torch.log(sigma2**2) - mu2**2 - sigma2**2)
        l3 = -torch.sum(1 + torch.log(sigma1**2) - (mu1 - z_hat) ** 2 - sigma1**2)
        return (l1 + l2 + l3) / len(x)


def book_pos_encoding(timesteps: torch.Tensor, dim: int, power_form: bool) -> torch.Tensor:
    """The book's encoding, one sample at a time in Python (step09 writes the frequencies with
    exp/log, step10 as a power): (B,) -> (B, dim)."""
    v = torch.zeros(len(timesteps), dim, device=timesteps.device)
    for n in range(len(timesteps)):
        t = timesteps[n]
        row = torch.zeros(dim, device=timesteps.device)
        i = torch.arange(0, dim, device=timesteps.device)
        div_term = 10000 ** (i / dim) if power_form else torch.exp(i / dim * math.log(10000))
        row[0::2] = torch.sin(t / div_term[::2])
        row[1::2] = torch.cos(t / div_term[1::2])
        v[n] = row
    return v


class BookConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, time_dim: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )
        self.linears = nn.Sequential(nn.Linear(time_dim, c_in), nn.ReLU(), nn.Linear(c_in, c_in))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.convs(x + self.linears(t).view(len(x), -1, 1, 1))


class BookUNet(nn.Module):
    """step09's UNet (64/128/256, time_dim 100); with ``num_labels`` step10's UNet_conditional
    (labels None: no label embedding added)."""

    def __init__(self, time_dim: int = 100, num_labels: int | None = None) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.down1 = BookConvBlock(1, 64, time_dim)
        self.down2 = BookConvBlock(64, 128, time_dim)
        self.bot1 = BookConvBlock(128, 256, time_dim)
        self.up2 = BookConvBlock(128 + 256, 128, time_dim)
        self.up1 = BookConvBlock(128 + 64, 64, time_dim)
        self.out = nn.Conv2d(64, 1, 1)
        self.maxpool = nn.MaxPool2d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear")
        self.label_emb = nn.Embedding(num_labels, time_dim) if num_labels else None

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        t = book_pos_encoding(timesteps, self.time_dim, power_form=self.label_emb is not None)
        if labels is not None:
            t += self.label_emb(labels)
        x1 = self.down1(x, t)
        x2 = self.down2(self.maxpool(x1), t)
        h = self.bot1(self.maxpool(x2), t)
        h = self.up2(torch.cat([self.upsample(h), x2], dim=1), t)
        h = self.up1(torch.cat([self.upsample(h), x1], dim=1), t)
        return self.out(h)


class BookDiffuser:
    """The book's Diffuser: linear betas, add_noise, denoise (eval/no_grad/train around the
    network, ``if t[0] == 0``), sample (clamp every step, PIL images out)."""

    def __init__(self, device: torch.device, steps: int = T_STEPS) -> None:
        self.num_timesteps = steps
        self.device = device
        self.betas = torch.linspace(1e-4, 0.02, steps, device=device)
        self.alphas = 1 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)

    def add_noise(self, x_0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_bar = self.alpha_bars[t].view(-1, 1, 1, 1)  # (N, 1, 1, 1)
        noise = torch.randn_like(x_0, device=self.device)
        return torch.sqrt(alpha_bar) * x_0 + torch.sqrt(1 - alpha_bar) * noise, noise

    def denoise(
        self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, labels: Any, scale: float | None
    ) -> torch.Tensor:
        n = len(t)
        alpha = self.alphas[t].view(n, 1, 1, 1)
        alpha_bar = self.alpha_bars[t].view(n, 1, 1, 1)
        alpha_bar_prev = self.alpha_bars[t - 1].view(n, 1, 1, 1)
        model.eval()
        with torch.no_grad():
            if scale is None:
                eps = model(x, t)
            else:  # step10: conditional and unconditional passes, mixed
                eps = model(x, t, labels)
                eps_uncond = model(x, t)
                eps = eps_uncond + scale * (eps - eps_uncond)
        model.train()
        mu = (x - ((1 - alpha) / torch.sqrt(1 - alpha_bar)) * eps) / torch.sqrt(alpha)
        if t[0] == 0:
            return mu
        noise = torch.randn_like(x, device=self.device)
        variance = (1 - alpha) * (1 - alpha_bar_prev) / (1 - alpha_bar)
        return mu + noise * torch.sqrt(variance)

    def sample(
        self, model: nn.Module, n: int, labels: Any = None, scale: float | None = None, last=None
    ):
        """``last``: run only the chain's last steps (last-1 .. 0), for quick checks."""
        from torchvision import transforms

        x = torch.randn((n, 1, 28, 28), device=self.device)
        for i in range(last or self.num_timesteps)[::-1]:
            t = torch.tensor([i] * n, device=self.device, dtype=torch.long)
            x = torch.clamp(self.denoise(model, x, t, labels, scale), -1.0, 1.0)
        to_pil = transforms.Compose(
            [
                transforms.Lambda(lambda t: (t + 1) / 2),
                transforms.Lambda(lambda t: t.permute(1, 2, 0)),
                transforms.Lambda(lambda t: t * 255.0),
                transforms.Lambda(lambda t: t.cpu().numpy().astype(np.uint8)),
                transforms.ToPILImage(),
            ]
        )
        return [to_pil(x[i]) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Timing helpers.


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_iteration(marks: list[float], warmup: int) -> float:
    """Seconds per iteration over the timed ones: ``marks`` holds the time after each step."""
    return (marks[-1] - marks[warmup - 1]) / (len(marks) - warmup)


def book_dataset(step: str, root: Path) -> Any:
    import torchvision
    from torchvision import transforms

    if step in ("07", "08"):
        transform = transforms.Compose([transforms.ToTensor(), transforms.Lambda(torch.flatten)])
    else:
        transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Lambda(lambda t: (t * 2) - 1)]
        )
    return torchvision.datasets.MNIST(str(root), train=True, download=False, transform=transform)


def run_book(step: str, dataset: Any, iters: int, warmup: int, device: torch.device, seed: int):
    """The book's loop for ``warmup + iters`` steps: (seconds per timed step, every loss)."""
    from torch.utils.data import DataLoader

    _, batch, lr, _, _ = STEPS[step]
    torch.manual_seed(seed)
    np.random.seed(seed)
    builders = {
        "07": BookVAE,
        "08": BookHVAE,
        "09": BookUNet,
        "10": lambda: BookUNet(num_labels=10),
    }
    model = builders[step]().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    diffuser = BookDiffuser(device)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True)
    losses, marks = [], []
    total = warmup + iters
    for x, labels in loader:
        optimizer.zero_grad()
        x = x.to(device)
        if step in ("07", "08"):
            loss = model.get_loss(x)
        elif step == "09":
            t = torch.randint(0, T_STEPS, (len(x),), device=device)
            x_noisy, noise = diffuser.add_noise(x, t)
            loss = F.mse_loss(noise, model(x_noisy, t))
        else:  # step10: the labels of the whole batch dropped with probability 0.1
            labels = labels.to(device)
            t = torch.randint(0, T_STEPS, (len(x),), device=device)
            if np.random.random() < 0.1:
                labels = None
            x_noisy, noise = diffuser.add_noise(x, t)
            loss = F.mse_loss(noise, model(x_noisy, t, labels))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if len(losses) in (warmup, total):
            sync(device)
        marks.append(time.perf_counter())
        if len(losses) == total:
            break
    return per_iteration(marks, warmup), losses, model


def mlenv_config(step: str, args: argparse.Namespace, iters: int) -> Any:
    from mlenv.config import load_recipe, resolve

    argv = ["--epochs", "1", "--limit_batches", str(iters), "--progress", "false"]
    argv += ["--device", args.device, "--seed", str(args.seed), "--root", str(args.root)]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    if args.precision is not None:
        argv += ["--precision", args.precision]
    return resolve(load_recipe(STEPS[step][0]), argv, prog="benchmarks/book.py")


def run_mlenv(step: str, cfg: Any, bundle: Any, model: Any, task: Any, warmup: int):
    """``Trainer.fit`` over ``cfg``'s ``limit_batches`` steps (no run folder): (seconds per
    timed step, every loss, the trainer)."""
    from mlenv.train.trainer import Trainer

    class TimedTrainer(Trainer):
        """The Trainer, noting each training loss (already a float: no extra sync) and the
        time after each optimizer step."""

        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.marks: list[float] = []
            self.losses: list[float] = []

        def loss_values(self, total: torch.Tensor, terms: dict) -> dict[str, float]:
            values = super().loss_values(total, terms)
            if self.model.training:
                self.losses.append(values["loss"])
            return values

        def after_optimizer_step(self) -> None:
            super().after_optimizer_step()
            if len(self.marks) + 1 in (warmup, cfg.train.limit_batches):
                sync(self.device)
            self.marks.append(time.perf_counter())

    trainer = TimedTrainer(cfg.train, model, task=task, run_config=cfg.to_flat())
    trainer.fit(bundle.train)
    return per_iteration(trainer.marks, warmup), trainer.losses, trainer


# ---------------------------------------------------------------------------------------------
# Sampling.


def time_book_sampling(
    step: str, model: nn.Module, device: torch.device, seed: int, chain: int
) -> float:
    torch.manual_seed(seed)
    diffuser = BookDiffuser(device)
    labels = torch.randint(0, 10, (SAMPLES,), device=device) if step == "10" else None
    start = time.perf_counter()
    images = diffuser.sample(model, SAMPLES, labels, 3.0 if step == "10" else None, chain)
    seconds = time.perf_counter() - start
    assert len(images) == SAMPLES
    return seconds


def time_mlenv_sampling(
    step: str, trainer: Any, task: Any, steps: int | None, seed: int, chain: int = T_STEPS
) -> float:
    """mlenv's ``sample``: DDPM over the chain's last ``chain`` steps (all 1000 by default), or
    DDIM in ``steps`` steps."""
    from mlenv.models.diffusion import DDIMScheduler, DDPMScheduler, sample

    betas = task.scheduler.betas  # the schedule the network was trained with
    if steps is None:
        scheduler = DDPMScheduler(len(betas), float(betas[0]), float(betas[-1]))
        scheduler.timesteps = scheduler.timesteps[-chain:]  # chain-1 .. 0
    else:
        scheduler = DDIMScheduler.from_scheduler(task.scheduler)
        scheduler.set_timesteps(steps)
    device = trainer.device
    labels = torch.arange(SAMPLES) % 10 if step == "10" else None
    generator = torch.Generator(device).manual_seed(seed)
    start = time.perf_counter()
    with trainer.autocast():
        x = sample(
            trainer.raw_model, scheduler, (SAMPLES, 1, 28, 28), labels, 3.0, generator, device
        )
    pixels = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()  # images out
    seconds = time.perf_counter() - start
    assert pixels.shape == (SAMPLES, 1, 28, 28)
    return seconds


# ---------------------------------------------------------------------------------------------


def prepare_data(args: argparse.Namespace) -> None:
    """MNIST under ``args.root`` for both sides: mlenv's uint8 cache, and torchvision's extracted
    files (``ROOT/MNIST/raw``) that the book's ``datasets.MNIST`` reads."""
    from mlenv.data.vision import data_root, load_mnist_uint8

    args.root = data_root(args.root)
    source = args.source
    if source is None:
        for candidate in (REPO / "shared" / "data" / "mnist", REPO.parent / "shared/data/mnist"):
            if candidate.is_dir():
                source = candidate
                break
    for split in ("train", "test"):
        load_mnist_uint8(args.root, split, source)
    raw = args.root / "MNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").is_file():
        import torchvision

        torchvision.datasets.MNIST(str(args.root), train=True, download=True)


def bench_step(step: str, args: argparse.Namespace) -> dict[str, Any]:
    from mlenv.runtime.device import choose_device
    from mlenv.train.run import build

    recipe, batch, _, warmup, iters = STEPS[step]
    warmup = args.warmup if args.warmup is not None else warmup
    iters = args.iters if args.iters is not None else iters
    total = warmup + iters
    device = choose_device(args.device)
    cfg = mlenv_config(step, args, total)
    dataset = book_dataset(step, args.root)
    book_times, mlenv_times, book_losses, mlenv_losses = [], [], [], []
    for repeat in range(args.repeats):
        order = ("book", "mlenv") if repeat % 2 == 0 else ("mlenv", "book")
        for side in order:
            if side == "book":
                torch.set_num_threads(args.threads or torch.get_num_threads())
                seconds, losses, book_model = run_book(
                    step, dataset, iters, warmup, device, args.seed
                )
                book_times.append(seconds)
                book_losses.append(losses)
            else:
                bundle, model, task = build(cfg)
                seconds, losses, trainer = run_mlenv(step, cfg, bundle, model, task, warmup)
                mlenv_times.append(seconds)
                mlenv_losses.append(losses)
            print(f"step{step} {side:5s} repeat {repeat}: {seconds:.4f} s/iteration", flush=True)
    per_epoch = math.ceil(TRAIN_DIGITS / batch)
    book_s, mlenv_s = median(book_times), median(mlenv_times)
    book_mean = float(np.mean([np.mean(c) for c in book_losses]))
    mlenv_mean = float(np.mean([np.mean(c) for c in mlenv_losses]))
    tail = max(1, total // 4)
    book_tail = float(np.mean([np.mean(c[-tail:]) for c in book_losses]))
    mlenv_tail = float(np.mean([np.mean(c[-tail:]) for c in mlenv_losses]))
    result: dict[str, Any] = {
        "recipe": recipe,
        "batch_size": batch,
        "warmup_iterations": warmup,
        "timed_iterations": iters,
        "repeats": args.repeats,
        "parameters": {
            "book": sum(p.numel() for p in book_model.parameters()),
            "mlenv": trainer.parameter_count,
        },
        "mlenv_threads": trainer.threads,
        "mlenv_precision": cfg.train.precision,
        "seconds_per_iteration": {
            "book": book_s,
            "mlenv": mlenv_s,
            "all_book": book_times,
            "all_mlenv": mlenv_times,
        },
        "iterations_per_epoch": per_epoch,
        "seconds_per_epoch": {"book": book_s * per_epoch, "mlenv": mlenv_s * per_epoch},
        "speedup": book_s / mlenv_s,
        # every iteration's loss from the first (both sides start from a fresh model)
        "loss_curves": {"book": book_losses, "mlenv": mlenv_losses},
        "mean_loss": {"book": book_mean, "mlenv": mlenv_mean, "ratio": mlenv_mean / book_mean},
        # past the start (the two VAEs of step07 start apart: sigma against log-variance heads)
        "mean_loss_last_quarter": {"book": book_tail, "mlenv": mlenv_tail},
    }
    if step in ("09", "10") and args.sample:
        chain = args.sample_steps
        book = time_book_sampling(step, book_model, device, args.seed, chain)
        ddpm = time_mlenv_sampling(step, trainer, task, None, args.seed, chain)
        ddim = time_mlenv_sampling(step, trainer, task, 50, args.seed)
        result["sampling_seconds"] = {
            "images": SAMPLES,
            "ddpm_steps_run": chain,
            "book_ddpm": book,
            "mlenv_ddpm": ddpm,
            "mlenv_ddim_50_steps": ddim,
            "guidance": 3.0 if step == "10" else None,
            "speedup_ddpm": book / ddpm,
            # the book's 1000 steps (extrapolated when fewer ran) against 50 DDIM steps
            "speedup_ddim": book * T_STEPS / chain / ddim,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="07,08,09,10", help="comma-separated: 07,08,09,10")
    parser.add_argument("--iters", type=int, help="timed iterations (default per step)")
    parser.add_argument("--warmup", type=int, help="untimed first iterations (default per step)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating repeats per side")
    parser.add_argument("--threads", type=int, help="torch threads on both sides (default: 1)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--precision", choices=["32", "bf16", "16"], help="mlenv side only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-sample",
        dest="sample",
        action="store_false",
        help="skip the sampling comparison of steps 09 and 10",
    )
    parser.add_argument(
        "--sample-steps",
        type=int,
        default=T_STEPS,
        help="run only the last N of the 1000 DDPM sampling steps on both sides (quick checks)",
    )
    parser.add_argument("--root", help="MNIST data root (default: mlenv's data root)")
    parser.add_argument("--source", help="folder of the four official MNIST gz files")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "book.json"))
    args = parser.parse_args(argv)
    steps = [s.strip().zfill(2) for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"--steps: unknown {','.join(unknown)}; known: {','.join(STEPS)}")
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if not 1 <= args.sample_steps <= T_STEPS:
        parser.error(f"--sample-steps: accepts 1 .. {T_STEPS}, got {args.sample_steps}")
    if any(v is not None and v < 1 for v in (args.iters, args.warmup, args.repeats)):
        parser.error("--iters, --warmup and --repeats accept integers >= 1")
    prepare_data(args)
    results = {}
    for step in steps:
        results[f"step{step}"] = bench_step(step, args)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    payload = {
        "benchmark": "book",
        "machine": {**machine(), "device": device_name, "threads": args.threads},
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "steps": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out)
    for name, r in results.items():
        line = (
            f"{name} ({r['recipe']}): book {r['seconds_per_iteration']['book']:.4f} s/it, "
            f"mlenv {r['seconds_per_iteration']['mlenv']:.4f} s/it -> {r['speedup']:.2f}x; "
            f"epoch {r['seconds_per_epoch']['book']:.0f} s vs {r['seconds_per_epoch']['mlenv']:.0f} s; "
            f"mean loss {r['mean_loss']['book']:.4g} vs {r['mean_loss']['mlenv']:.4g} "
            f"(last quarter {r['mean_loss_last_quarter']['book']:.4g} vs "
            f"{r['mean_loss_last_quarter']['mlenv']:.4g})"
        )
        if "sampling_seconds" in r:
            s = r["sampling_seconds"]
            line += (
                f"; sampling ({s['ddpm_steps_run']} DDPM steps) {s['book_ddpm']:.1f} s vs "
                f"{s['mlenv_ddpm']:.1f} s (DDIM 50: {s['mlenv_ddim_50_steps']:.2f} s)"
            )
        print(line)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
