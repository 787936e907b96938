"""DDPM parts (book steps 09-10): the UNet against the book's architecture, the step embedding
against the book's formula, the noise schedule against the forward process iterated step by
step, the DDPM and DDIM samplers against the exact posterior with an oracle that knows x_0,
classifier-free guidance's mixing, and label dropping at its configured rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mlenv.data.vision import load_mnist_uint8
from mlenv.errors import ConfigError
from mlenv.models import create_model
from mlenv.models.diffusion import DDIMScheduler, DDPMScheduler, guided_noise, sample
from mlenv.models.unet import sinusoidal_embedding
from mlenv.train.tasks_diffusion import DiffusionTask

T = 1000
BETAS = np.linspace(1e-4, 0.02, T)  # the book's schedule, built here independently (float64)
ALPHA_BARS = np.cumprod(1.0 - BETAS)
TINY = {"channels": (4, 8, 8), "time_dim": 8}  # a UNet of a few thousand weights


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits(mnist_root):
    """Six real MNIST training digits in [-1, 1], (6, 1, 28, 28), and their labels."""
    images, labels = load_mnist_uint8(mnist_root, "train")
    return images[:6].float().unsqueeze(1) / 127.5 - 1.0, labels[:6]


def book_block_parameters(c_in: int, c_out: int, time_dim: int) -> int:
    """One of the book's ConvBlocks: Conv3x3(c_in, c_out) + BN + Conv3x3(c_out, c_out) + BN, and
    the step MLP Linear(time_dim, c_in) + Linear(c_in, c_in), all with biases."""
    convs = (c_in * c_out * 9 + c_out) + 2 * c_out + (c_out * c_out * 9 + c_out) + 2 * c_out
    mlp = (time_dim * c_in + c_in) + (c_in * c_in + c_in)
    return convs + mlp


def test_unet_has_the_books_parameter_count_and_shapes():
    blocks = [(1, 64), (64, 128), (128, 256), (128 + 256, 128), (128 + 64, 64)]
    book = sum(book_block_parameters(i, o, 100) for i, o in blocks) + (64 * 1 + 1)
    assert book == 2_167_784
    model = create_model("unet", seed=0)
    assert sum(p.numel() for p in model.parameters()) == book
    # the conditional one: an embedding of the ten digits and the "no label" (11 x 100)
    conditional = create_model("unet-conditional", seed=0)
    assert sum(p.numel() for p in conditional.parameters()) == book + 11 * 100
    assert conditional.null_label == 10
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([0, 999])
    model.eval()
    with torch.no_grad():
        assert model(x, t).shape == (2, 1, 28, 28)
        assert conditional.eval()(x, t, torch.tensor([3, 10])).shape == (2, 1, 28, 28)


def test_unet_labels_change_the_prediction_and_none_means_the_null_label():
    model = create_model("unet-conditional", seed=0, **TINY).eval()
    x, t = torch.randn(4, 1, 28, 28), torch.full((4,), 500)
    with torch.no_grad():
        threes = model(x, t, torch.full((4,), 3))
        sevens = model(x, t, torch.full((4,), 7))
        unlabelled = model(x, t)
        null = model(x, t, torch.full((4,), 10))
    assert (threes - sevens).abs().max() > 1e-4
    torch.testing.assert_close(unlabelled, null)


def test_unet_refuses_bad_widths_in_one_line():
    with pytest.raises(ConfigError, match=r"--channels: accepts three channel counts"):
        create_model("unet", channels=(8, 16))
    with pytest.raises(ConfigError, match=r"--image-size: .* multiple of 4, got 30"):
        create_model("unet", image_size=30)
    with pytest.raises(ConfigError, match="no label embedding"):
        create_model("unet", **TINY)(torch.zeros(1, 1, 28, 28), torch.zeros(1), torch.zeros(1))


def test_step_embedding_is_the_books_formula():
    D = 100
    times = [0, 1, 17, 500, 999]
    got = sinusoidal_embedding(torch.tensor(times), D)
    assert got.shape == (len(times), D)
    for row, t in enumerate(times):
        # the book: v[i] = sin(t / 10000^(i/D)) for even i, cos(t / 10000^(i/D)) for odd i
        expected = [(math.sin if i % 2 == 0 else math.cos)(t / 10000 ** (i / D)) for i in range(D)]
        np.testing.assert_allclose(got[row].numpy(), expected, atol=2e-4)
    # different steps are told apart: no two rows alike
    assert torch.cdist(got, got).fill_diagonal_(1.0).min() > 0.5


def test_schedule_is_the_books():
    scheduler = DDPMScheduler()
    np.testing.assert_allclose(scheduler.betas.numpy(), BETAS, rtol=1e-12)
    np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), ALPHA_BARS, rtol=1e-10)


def test_closed_form_noising_matches_the_forward_process_iterated():
    """q(x_t | x_0) from add_noise against x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps
    iterated from x_0 for 20,000 chains (float64): means within 5 standard errors, variances
    within 5%."""
    rng = np.random.default_rng(0)
    n, x0 = 20_000, 0.8
    x = np.full(n, x0)
    check = {0, 9, 99, 499, 999}
    scheduler = DDPMScheduler()
    start = torch.full((1,), x0)
    for t in range(T):
        x = math.sqrt(1.0 - BETAS[t]) * x + math.sqrt(BETAS[t]) * rng.standard_normal(n)
        if t not in check:
            continue
        steps = torch.tensor([t])
        mean = float(scheduler.add_noise(start, torch.zeros(1), steps))
        std = float(scheduler.add_noise(start, torch.ones(1), steps)) - mean
        assert abs(x.mean() - mean) < 5 * std / math.sqrt(n) + 1e-6, t
        assert x.var() == pytest.approx(std**2, rel=0.05), t


def test_add_noise_uses_one_step_per_image(digits):
    x0, _ = digits
    noise = torch.randn_like(x0)
    steps = torch.tensor([0, 10, 100, 400, 700, 999])
    x_t = DDPMScheduler().add_noise(x0, noise, steps)
    for i, t in enumerate(steps.tolist()):
        ab = ALPHA_BARS[t]
        expected = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i]
        torch.testing.assert_close(x_t[i], expected, atol=1e-6, rtol=1e-5)


class Oracle(nn.Module):
    """A "network" that knows x_0 and returns the exact noise in x_t: (x_t - sqrt(ab_t) x_0) /
    sqrt(1 - ab_t). It records every x_t it sees."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0.double()
        self.seen: list[tuple[int, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = torch.tensor(ALPHA_BARS)[t].view(-1, 1, 1, 1)
        self.seen.append((int(t[0]), x.clone()))
        return ((x.double() - ab.sqrt() * self.x0) / (1 - ab).sqrt()).float()


@pytest.mark.parametrize("steps", [None, 50, 7])
def test_sampler_with_the_exact_noise_reproduces_x0(digits, steps):
    x0, _ = digits
    scheduler = DDPMScheduler() if steps is None else DDIMScheduler()
    scheduler.set_timesteps(steps)
    oracle = Oracle(x0)
    out = sample(oracle, scheduler, x0.shape, generator=torch.Generator().manual_seed(0))
    assert len(oracle.seen) == (steps or T)
    torch.testing.assert_close(out, x0, atol=2e-4, rtol=0)


def test_ddim_with_the_exact_noise_stays_on_one_noise_path(digits):
    """eta 0 is deterministic: with the exact noise every visited x_t is
    sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps for the one eps of the start."""
    x0, _ = digits
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(20)
    assert scheduler.timesteps == list(range(999, 0, -50))  # trailing: from the last step
    oracle = Oracle(x0)
    sample(oracle, scheduler, x0.shape, generator=torch.Generator().manual_seed(1))
    eps = oracle(oracle.seen[0][1], torch.full((6,), 999))  # the noise in the starting x
    for t, x_t in oracle.seen[1:20]:
        ab = ALPHA_BARS[t]
        expected = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
        torch.testing.assert_close(x_t, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("t", [1, 10, 300, 999])
def test_ddpm_step_samples_the_posterior_of_the_forward_process(t):
    """One reverse step with the exact noise against q(x_{t-1} | x_t, x_0), derived here from
    the forward process (x_{t-1} ~ N(sqrt(ab_{t-1}) x_0, 1 - ab_{t-1}), x_t | x_{t-1} ~
    N(sqrt(a_t) x_{t-1}, beta_t)) by Gaussian conditioning: 200,000 draws."""
    n, x0, xt = 200_000, 0.3, -0.2
    ab, ab_prev, beta = ALPHA_BARS[t], ALPHA_BARS[t - 1], BETAS[t]
    precision = 1 / (1 - ab_prev) + (1 - beta) / beta
    var = 1 / precision
    mean = var * (math.sqrt(ab_prev) * x0 / (1 - ab_prev) + math.sqrt(1 - beta) * xt / beta)
    scheduler = DDPMScheduler(clip_sample=False)
    x_t = torch.full((n, 1, 1, 1), xt)
    eps = torch.full_like(x_t, (xt - math.sqrt(ab) * x0) / math.sqrt(1 - ab))
    drawn = scheduler.step(eps, t, x_t, torch.Generator().manual_seed(t)).double()
    assert abs(float(drawn.mean()) - mean) < 5 * math.sqrt(var / n) + 1e-5
    assert float(drawn.var()) == pytest.approx(var, rel=0.02)


def test_ddpm_step_clamps_like_the_book_and_ddim_eta1_is_ddpm():
    x_t, eps = torch.full((4, 1, 2, 2), 0.99), torch.full((4, 1, 2, 2), -3.0)
    assert DDPMScheduler().step(eps, 5, x_t).max() <= 1.0  # the book clamps x to [-1, 1]
    assert DDPMScheduler(clip_sample=False).step(eps, 5, x_t).max() > 1.0
    # DDIM with eta 1 over all 1000 steps takes DDPM's posterior step: same noise, same result
    ddim = DDIMScheduler(clip_sample=False, eta=1.0)
    ddim.set_timesteps(T)
    ddpm = DDPMScheduler(clip_sample=False)
    x_t, eps = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    for t in (1, 50, 999):
        a = ddim.step(eps, t, x_t, torch.Generator().manual_seed(3))
        b = ddpm.step(eps, t, x_t, torch.Generator().manual_seed(3))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_scheduler_settings_are_checked_in_one_line():
    with pytest.raises(ConfigError, match=r"--sample-steps: accepts 1 \.\. 1000, got 0"):
        DDIMScheduler().set_timesteps(0)
    with pytest.raises(ConfigError, match="DDPM takes all 1000 steps; use DDIM for 50"):
        DDPMScheduler().set_timesteps(50)
    with pytest.raises(ConfigError, match="0 < beta_start <= beta_end < 1"):
        DDPMScheduler(beta_start=0.02, beta_end=0.01)


def test_guidance_mixes_conditional_and_unconditional_predictions():
    model = create_model("unet-conditional", seed=0, **TINY).eval()
    x, t, labels = torch.randn(5, 1, 28, 28), torch.tensor([999, 700, 300, 20, 0]), torch.arange(5)
    calls = []
    model.register_forward_pre_hook(lambda _m, args: calls.append(len(args[0])))
    with torch.no_grad():
        cond = model(x, t, labels)
        uncond = model(x, t, torch.full((5,), 10))
        calls.clear()
        guided = guided_noise(model, x, t, labels, 3.0)
        assert calls == [10]  # conditional and unconditional as one batch of 2N
        plain = guided_noise(model, x, t, labels, 1.0)
        zero = guided_noise(model, x, t, labels, 0.0)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, cond)
    torch.testing.assert_close(zero, uncond, atol=1e-5, rtol=1e-5)


def test_sampling_uses_running_statistics_so_each_image_ignores_the_others():
    """sample() puts the network in eval mode: the first two images from the same starting noise
    are the same whether drawn in a batch of 2 or of 4 (BatchNorm's batch statistics would
    mix them)."""
    model = create_model("unet-conditional", seed=0, **TINY)  # built in training mode
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(4)
    pair = sample(
        model,
        scheduler,
        (2, 1, 28, 28),
        torch.tensor([3, 7]),
        3.0,
        torch.Generator().manual_seed(0),
    )
    four = sample(
        model,
        scheduler,
        (4, 1, 28, 28),
        torch.tensor([3, 7, 1, 1]),
        3.0,
        torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(pair, four[:2], atol=1e-5, rtol=0)


def test_label_dropping_happens_per_image_at_the_configured_rate(mnist_root):
    """p_uncond 0.1 over 40 batches of 128 real labels: the null label count is within 4.5
    binomial standard deviations of 512, every batch mixes kept and dropped labels, and the
    kept labels are the digits of the batch."""
    images, labels = load_mnist_uint8(mnist_root, "train")
    x0 = images[:128].float().unsqueeze(1) / 127.5 - 1.0
    y = labels[:128]
    model = create_model("unet-conditional", seed=0, **TINY)
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[2].clone()))
    task = DiffusionTask(p_uncond=0.1)
    criterion = task.get_criterion(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(40):
            task.forward_pass(model, (x0, y), criterion)
    given = torch.stack(seen)  # (40, 128)
    dropped = given == 10
    n = dropped.numel()
    assert abs(int(dropped.sum()) - 0.1 * n) < 4.5 * math.sqrt(n * 0.1 * 0.9)
    per_batch = dropped.sum(dim=1)
    assert (per_batch > 0).all() and (per_batch < 128).all()  # per image, not per batch
    kept = ~dropped
    assert torch.equal(given[kept], y.expand(40, 128)[kept])
    seen.clear()
    with torch.no_grad():
        DiffusionTask().forward_pass(model, (x0, y), criterion)
    assert torch.equal(seen[0], y)  # p_uncond 0: every label as given


def test_training_loss_is_the_noise_prediction_error(digits):
    """The task's loss is the MSE between the prediction and the noise it added: 0 for a network
    that returns the exact noise (same t, same closed form), E[eps^2] = 1 for one that returns
    zeros."""
    x0, y = digits
    task = DiffusionTask()
    criterion = task.get_criterion()
    torch.manual_seed(0)
    loss, predicted = task.forward_pass(Oracle(x0), (x0, y), criterion)
    assert predicted.shape == x0.shape
    assert float(loss) < 1e-8

    class Zero(nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    losses = [float(task.forward_pass(Zero(), (x0, y), criterion)[0]) for _ in range(20)]
    assert np.mean(losses) == pytest.approx(1.0, abs=0.02)


def test_task_refuses_label_dropping_without_a_conditional_model():
    with pytest.raises(ConfigError, match=r"--p_uncond 0.1: dropping labels needs a conditional"):
        DiffusionTask(p_uncond=0.1).get_criterion(create_model("unet", **TINY))
    with pytest.raises(ConfigError, match=r"--p_uncond: accepts a probability in \[0, 1\), got 1"):
        DiffusionTask(p_uncond=1.0)


def test_training_steps_cover_the_whole_chain():
    """t is drawn uniformly from 0 .. T-1 (the sampler's first and last steps are trained too):
    a recording model sees both ends and a mean near (T - 1) / 2 over many draws."""

    class Recorder(nn.Module):
        null_label = None

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[torch.Tensor] = []
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x, t, labels=None):
            self.seen.append(t)
            return x * self.w

    task = DiffusionTask()
    model = Recorder()
    criterion = task.get_criterion(model)
    torch.manual_seed(0)
    x = torch.zeros(2000, 1, 2, 2)
    for _ in range(10):
        task.forward_pass(model, (x, torch.zeros(2000, dtype=torch.long)), criterion)
    t = torch.cat(model.seen)
    assert int(t.min()) == 0 and int(t.max()) == T - 1
    assert abs(float(t.float().mean()) - (T - 1) / 2) < 5  # sd of the mean: 289 / sqrt(20000)


class BookOracle(Oracle):
    """The oracle as the book's code numbers the steps: told t = 1 .. T, it reads alpha_bars[t - 1]."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return super().forward(x, t - 1)


def test_book_numbering_tells_the_network_t_plus_one_in_training_and_sampling(digits):
    """first_step 1 (the book's t = 1 .. T): the training loss of an oracle that reads
    alpha_bars[t - 1] is 0, so the network was told index + 1 for an image noised at the index;
    the oracle told 0-based steps is wrong by the schedule's shift. Sampling tells it the same
    numbers (1000 .. 1 for DDPM), and DDPM from the oracle lands on x_0."""
    x0, y = digits
    book = DiffusionTask(first_step=1)
    criterion = book.get_criterion()
    torch.manual_seed(0)
    loss, _ = book.forward_pass(BookOracle(x0), (x0, y), criterion)
    assert float(loss) < 1e-8
    torch.manual_seed(0)
    shifted, _ = book.forward_pass(Oracle(x0), (x0, y), criterion)  # t read as 0-based
    assert float(shifted) > 1e-5  # 7.3e-5 measured: 1,000x the right numbering's bound
    oracle = BookOracle(x0)
    scheduler = DDPMScheduler(first_step=1)
    images = sample(oracle, scheduler, tuple(x0.shape), generator=torch.Generator().manual_seed(0))
    told = [t for t, _ in oracle.seen]  # what BookOracle passed on: told - 1
    assert told == list(range(999, -1, -1))
    assert torch.allclose(images, x0, atol=1e-4)
    # DDIM made from the book's scheduler keeps its numbering: 7 steps land on x_0 too
    oracle = BookOracle(x0)
    ddim = DDIMScheduler.from_scheduler(DDPMScheduler(first_step=1))
    ddim.set_timesteps(7)
    images = sample(oracle, ddim, tuple(x0.shape), generator=torch.Generator().manual_seed(0))
    assert [t for t, _ in oracle.seen] == ddim.timesteps
    assert torch.allclose(images, x0, atol=1e-4)
    with pytest.raises(ConfigError, match=r"--first_step: accepts 0 or 1, got 2"):
        DiffusionTask(first_step=2)


def test_unit_data_range_clamps_and_pictures_in_zero_one():
    """The book's [0, 1] images: clip_sample clamps to [0, 1], DDIM clamps x_0 there too, and
    to_unit maps each range to pixels (-1 -> 0, 0 -> 0.5 for [-1, 1]; the identity for [0, 1])."""
    eps = torch.full((1, 1, 2, 2), -500.0)  # far past either end of the range at t = 500
    x_t = torch.full((1, 1, 2, 2), 0.5)
    unit = DDPMScheduler(data_range=(0.0, 1.0))
    assert float(unit.step(eps, 500, x_t).max()) == 1.0  # clamped at the top of [0, 1]
    assert float(DDPMScheduler().step(-eps, 500, x_t).min()) == -1.0
    assert float(unit.step(-eps, 500, x_t).min()) == 0.0
    ddim = DDIMScheduler.from_scheduler(DDPMScheduler(clip_sample=False, data_range=(0.0, 1.0)))
    assert ddim.clip_sample and ddim.data_range == (0.0, 1.0)
    ddim.set_timesteps(5)
    assert float(ddim.step(eps, 999, x_t).max()) <= 1.0
    values = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    assert DDPMScheduler().to_unit(values).tolist() == [0.0, 0.5, 1.0, 1.0]
    assert unit.to_unit(values).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert DiffusionTask(data_scale="unit").scheduler.data_range == (0.0, 1.0)
    with pytest.raises(ConfigError, match=r"--scale: accepts unit or signed, got 'half'"):
        DiffusionTask(data_scale="half")


def test_the_task_reads_the_data_sets_scale_and_has_no_flag_of_its_own():
    """build_task fills data_scale from the data's --scale (the book recipe: unit; --scale
    signed: signed; a recipe that sets none: the data set's default); no --data_scale flag."""
    from mlenv.config import load_recipe, resolve
    from mlenv.train.run import build_task

    recipe = load_recipe("mnist-ddpm-book")
    task = build_task(resolve(recipe, []))
    assert task.data_scale == "unit" and task.scheduler.data_range == (0.0, 1.0)
    assert task.scheduler.first_step == 1 and not task.scheduler.clip_sample
    assert build_task(resolve(recipe, ["--scale", "signed"])).data_scale == "signed"
    assert build_task(resolve(load_recipe("mnist-ddpm"), [])).data_scale == "signed"
    with pytest.raises(ConfigError, match="data_scale"):
        resolve(recipe, ["--data_scale", "signed"])


def test_evaluation_draws_are_fixed_per_image_and_leave_the_global_rng_alone(mnist_root):
    """Out of training, each image's step, noise and label drop come from its own bytes: the
    same loss twice whatever the global RNG says, the global RNG untouched, the same per-image
    errors when the batch is split in two (as over two processes), and over 2,000 digits steps
    uniform on 0 .. T-1 and standard normal noise."""
    images, labels = load_mnist_uint8(mnist_root, "train")
    x0 = images[:2000].float().unsqueeze(1) / 255.0
    y = labels[:2000]
    model = create_model("unet-conditional", seed=0, **TINY).eval()
    task = DiffusionTask(p_uncond=0.1, data_scale="unit")
    per_pixel = nn.MSELoss(reduction="none")
    with torch.no_grad():
        torch.manual_seed(1)
        state = torch.get_rng_state()
        first = task.forward_pass(model, (x0[:8], y[:8]), per_pixel)[0]
        assert torch.equal(torch.get_rng_state(), state)
        torch.manual_seed(2)
        assert torch.equal(task.forward_pass(model, (x0[:8], y[:8]), per_pixel)[0], first)
        halves = [
            task.forward_pass(model, (x0[i : i + 4], y[i : i + 4]), per_pixel)[0] for i in (0, 4)
        ]
    assert torch.allclose(torch.cat(halves), first, atol=1e-6)
    from mlenv.train.tasks_diffusion import evaluation_draws

    t, noise, dropped = evaluation_draws(x0, T, 0.1)
    assert int(t.min()) >= 0 and int(t.max()) <= T - 1
    assert abs(float(t.float().mean()) - (T - 1) / 2) < 4 * 289 / math.sqrt(2000)
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1.0) < 0.01
    assert abs(float(dropped.float().mean()) - 0.1) < 4 * math.sqrt(0.09 / 2000)
    again = evaluation_draws(x0[:3], T, 0.1)
    assert torch.equal(again[0], t[:3]) and torch.equal(again[1], noise[:3])


def test_training_draws_still_come_from_the_global_rng(digits):
    """In training mode the draws are the run's random stream (seeded, resumable): two calls
    differ, and the same seed repeats them."""
    x0, y = digits
    task = DiffusionTask()
    criterion = task.get_criterion()
    model = create_model("unet", seed=0, **TINY).train()
    with torch.no_grad():
        torch.manual_seed(0)
        a = task.forward_pass(model, (x0, y), criterion)[0]
        b = task.forward_pass(model, (x0, y), criterion)[0]
        torch.manual_seed(0)
        c = task.forward_pass(model, (x0, y), criterion)[0]
    assert not torch.equal(a, b) and torch.equal(a, c)
