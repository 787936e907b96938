"""Book steps 7 (VAE) and 8 (hierarchical VAE) on MNIST: the book's networks and loss, the KL
terms against closed forms, ancestral sampling, the packaged recipes, a tiny run of each step and
a short training whose reconstructions beat the mean image."""

from __future__ import annotations

import csv
import itertools
import json
import math

import pytest
import torch
from torch import distributions as D

from mlenv.cli import main
from mlenv.config import TrainConfig, load_recipe, resolve
from mlenv.errors import ConfigError
from mlenv.models import create_model
from mlenv.models.hvae import HierarchicalVAE, kl_between_normals, reparameterize
from mlenv.models.vae import VAE, kl_to_standard_normal
from mlenv.train.run import build
from mlenv.train.tasks import HVAETask, VAETask
from mlenv.train.trainer import Trainer

# two 2-pixel images, scored against the mean image sigmoid([0, ln 3]) = [0.5, 0.75]
X = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
LOGITS = [0.0, math.log(3.0)]
SSE = (0.25 + 0.0625 + 0.25 + 0.5625) / 2  # sum over pixels, mean over images: 0.5625


def set_head(layer: torch.nn.Linear, bias: list[float]) -> None:
    """A linear layer whose output is ``bias`` whatever its input."""
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor(bias))


def evaluate(model, task, batch_size=2) -> dict[str, float]:
    config = TrainConfig(batch_size=batch_size, device="cpu", threads=1, progress=False)
    return Trainer(config, model, task=task).evaluate((X, torch.zeros(len(X))))


def book_task(cls=VAETask):
    return cls(reconstruction="squared-error", kl_weight=2.0)


# ----------------------------------------------------------------------------------------------
# Step 7: the book's loss, by hand.


@pytest.mark.parametrize("batch_size", [1, 2])
def test_vae_book_loss_on_a_known_input(batch_size):
    model = VAE(2, hidden=3, latent=2)
    set_head(model.to_mu, [1.0, -2.0])
    set_head(model.to_logvar, [math.log(2.0), 0.0])
    set_head(model.decoder[2], LOGITS)
    model.eval()  # z = mu
    # the book's -sum(1 + logvar - mu^2 - exp(logvar)): (2 - ln 2) + 4 per image
    book_kl = -((1 + math.log(2) - 1 - 2) + (1 + 0 - 4 - 1))
    assert book_kl == pytest.approx(6 - math.log(2))
    out = evaluate(model, book_task(), batch_size)
    assert out["test_reconstruction"] == pytest.approx(SSE, rel=1e-6)
    assert out["test_kl"] == pytest.approx(book_kl / 2, rel=1e-6)  # logged: the KL in nats
    assert out["test_loss"] == pytest.approx(SSE + book_kl, rel=1e-6)  # 5.869353
    assert out["test_loss"] == pytest.approx(5.869353, abs=1e-6)


def test_vae_default_task_keeps_the_bernoulli_elbo():
    model = VAE(2, hidden=3, latent=2)
    set_head(model.to_mu, [1.0, -2.0])
    set_head(model.to_logvar, [math.log(2.0), 0.0])
    set_head(model.decoder[2], LOGITS)
    model.eval()
    out = evaluate(model, VAETask())
    # -log p(x) per pixel: -ln 0.5 for pixel 1, -ln 0.75 or -ln 0.25 for pixel 2
    nll = (math.log(2) - math.log(0.75) + math.log(2) - math.log(0.25)) / 2
    assert out["test_reconstruction"] == pytest.approx(nll, rel=1e-6)
    assert out["test_loss"] == pytest.approx(nll + (6 - math.log(2)) / 2, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Step 8: the two KL terms against closed forms.

MU1, LOGVAR1 = [0.5, -1.0], [0.3, -0.4]
MU2, LOGVAR2 = [1.5, 0.2], [-1.0, 0.5]
Z1_HAT = [1.0, 0.5]  # decoder2(z2): the mean of p(z1 | z2)


def known_hvae() -> HierarchicalVAE:
    model = HierarchicalVAE(2, hidden=3, latent=2)
    set_head(model.encoder1.to_mu, MU1)
    set_head(model.encoder1.to_logvar, LOGVAR1)
    set_head(model.encoder2.to_mu, MU2)
    set_head(model.encoder2.to_logvar, LOGVAR2)
    set_head(model.decoder2[2], Z1_HAT)
    set_head(model.decoder1[2], LOGITS)
    return model.eval()


def torch_kl(mu, logvar, prior_mean) -> float:
    """KL(N(mu, exp(logvar)) || N(prior_mean, I)) by torch.distributions, summed over dims."""
    q = D.Normal(torch.tensor(mu), torch.tensor(logvar).mul(0.5).exp())
    return float(D.kl_divergence(q, D.Normal(torch.tensor(prior_mean), 1.0)).sum())


def test_kl_between_normals_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar, prior = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 4)
    q = D.Normal(mu, logvar.mul(0.5).exp())
    expected = D.kl_divergence(q, D.Normal(prior, 1.0)).sum(dim=1).mean()
    assert float(kl_between_normals(mu, logvar, prior)) == pytest.approx(float(expected), rel=1e-6)
    to_standard = D.kl_divergence(q, D.Normal(0.0, 1.0)).sum(dim=1).mean()
    assert float(kl_between_normals(mu, logvar)) == pytest.approx(float(to_standard), rel=1e-6)
    assert float(kl_to_standard_normal(mu, logvar)) == pytest.approx(float(to_standard), rel=1e-6)


def test_hvae_kl_terms_and_book_loss_on_a_known_input():
    out = evaluate(known_hvae(), book_task(HVAETask))
    kl1 = torch_kl(MU1, LOGVAR1, Z1_HAT)  # q(z1 | x) against p(z1 | z2) = N(decoder2(z2), I)
    kl2 = torch_kl(MU2, LOGVAR2, [0.0, 0.0])  # q(z2 | z1) against N(0, I)
    assert kl1 == pytest.approx(1.310089, abs=1e-6)  # 0.5 * (0.299859 + 2.320320)
    assert kl2 == pytest.approx(1.403300, abs=1e-6)  # 0.5 * (2.617879 + 0.188721)
    assert out["test_kl1"] == pytest.approx(kl1, rel=1e-6)
    assert out["test_kl2"] == pytest.approx(kl2, rel=1e-6)
    assert out["test_reconstruction"] == pytest.approx(SSE, rel=1e-6)
    # the book's L1 + L2 + L3, written as the book writes them
    m1, v1, m2, v2, z = map(torch.tensor, (MU1, LOGVAR1, MU2, LOGVAR2, Z1_HAT))
    l2 = -torch.sum(1 + v2 - m2**2 - v2.exp())
    l3 = -torch.sum(1 + v1 - (m1 - z) ** 2 - v1.exp())
    assert out["test_loss"] == pytest.approx(SSE + float(l2 + l3), rel=1e-6)
    assert out["test_loss"] == pytest.approx(5.989280, abs=1e-5)


def test_reparameterize_draws_with_the_standard_deviation():
    torch.manual_seed(0)
    z = reparameterize(torch.full((200_000,), 1.0), torch.full((200_000,), math.log(4.0)))
    assert float(z.mean()) == pytest.approx(1.0, abs=0.02)
    assert float(z.std()) == pytest.approx(2.0, rel=0.01)  # exp(0.5 * ln 4)


def test_hvae_samples_z1_and_z2_while_training_and_uses_the_means_in_eval():
    torch.manual_seed(0)
    model = create_model("hvae", in_features=12, hidden=8, latent=3)
    x = torch.rand(4, 12)
    model.train()
    # z1 almost exactly mu1 (sigma1 ~ 1e-13): decoder2(z2) still varies, so z2 is sampled
    set_head(model.encoder1.to_logvar, [-60.0] * 3)
    a, b = model(x), model(x)
    assert torch.allclose(a.logits, b.logits, atol=1e-6)
    assert (a.z1_prior_mean - b.z1_prior_mean).abs().max() > 1e-3
    # z2 almost exactly mu2(z1): decoder2(z2) still varies, so q(z2 | z1) reads the sampled z1
    model.encoder1.to_logvar.reset_parameters()
    set_head(model.encoder2.to_logvar, [-60.0] * 3)
    a, b = model(x), model(x)
    assert (a.logits - b.logits).abs().max() > 1e-3  # z1 sampled
    assert torch.allclose(a.z1_prior_mean, model.decoder2(a.mu2), atol=1e-6)
    assert (a.z1_prior_mean - b.z1_prior_mean).abs().max() > 1e-3
    model.encoder2.to_logvar.reset_parameters()
    model.eval()
    a, b = model(x), model(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert torch.equal(a.z1_prior_mean, model.decoder2(a.mu2))
    assert torch.equal(a.logits, model.decoder1(a.mu1))


# ----------------------------------------------------------------------------------------------
# Shapes, parameter counts and sampling.


def test_book_networks_shapes_and_parameter_counts():
    x = torch.rand(32, 784)
    vae = create_model("vae", in_features=784, hidden=200, latent=20)
    logits, mu, logvar = vae(x)
    assert logits.shape == (32, 784) and mu.shape == logvar.shape == (32, 20)
    # 784*200+200 + 2*(200*20+20) + 20*200+200 + 200*784+784, as the book's step07 network
    assert sum(p.numel() for p in vae.parameters()) == 326_824
    hvae = create_model("hvae", in_features=784)  # hidden 100, latent 20 by default
    out = hvae(x)
    assert out.logits.shape == (32, 784)
    assert all(t.shape == (32, 20) for t in out[1:])
    assert sum(p.numel() for p in hvae.parameters()) == 174_084


def test_vae_samples_decode_standard_normal_draws():
    model = create_model("vae", seed=0, in_features=784, hidden=200, latent=20).eval()
    images = model.sample(64, generator=torch.Generator().manual_seed(3))
    z = torch.randn(64, 20, generator=torch.Generator().manual_seed(3))
    assert images.shape == (64, 784)
    assert torch.equal(images, model.decoder(z).sigmoid())


def test_hvae_samples_ancestrally_with_unit_variance_z1():
    model = create_model("hvae", seed=0, in_features=784).eval()
    images = model.sample(64, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    z2 = torch.randn(64, 20, generator=g)
    z1 = model.decoder2(z2) + torch.randn(64, 20, generator=g)  # z1 ~ N(decoder2(z2), I)
    assert images.shape == (64, 784)
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, model.decoder1(z1).sigmoid())


# ----------------------------------------------------------------------------------------------
# The recipes: the book's settings, and bad task flags.


@pytest.mark.parametrize(
    ("recipe", "model_args", "lr", "cls"),
    [
        ("mnist-vae", {"hidden": 200, "latent": 20}, 3e-4, VAETask),
        ("mnist-hvae", {"hidden": 100, "latent": 20}, 1e-3, HVAETask),
    ],
)
def test_recipe_has_the_books_settings(recipe, model_args, lr, cls, mnist_root):
    cfg = resolve(load_recipe(recipe), ["--root", str(mnist_root), "--limit", "64"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (30, lr, 32)
    assert cfg.train.optimizer == "adam"
    assert cfg.model_args == model_args
    assert cfg.task_args == {"reconstruction": "squared-error", "kl_weight": 2.0}
    assert (cfg.data["layout"], cfg.data["scale"], cfg.data["val_size"]) == ("flat", "unit", 0)
    bundle, model, task = build(cfg)
    assert type(task) is cls and task.kl_weight == 2.0
    assert model.latent == 20 and model.in_features == 784
    x = bundle.train[0]
    assert x.shape == (64, 784) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) == 1.0
    assert bundle.val is None


def test_bad_task_flags_are_one_line_errors(mnist_root):
    with pytest.raises(ConfigError, match=r"reconstruction.*squared-error"):
        resolve(load_recipe("mnist-vae"), ["--reconstruction", "mse"])
    cfg = resolve(load_recipe("mnist-hvae"), ["--kl_weight", "-1", "--root", str(mnist_root)])
    with pytest.raises(ConfigError, match=r"^--kl_weight: accepts a number >= 0, got -1"):
        build(cfg)
    with pytest.raises(ConfigError, match=r"^--reconstruction: accepts bernoulli or squared"):
        VAETask(reconstruction="l2")


def test_step07_refuses_diffusion_flags(tmp_path, capsys):
    argv = ["book", "step07", "--out", str(tmp_path / "o"), "--guidance", "3"]
    assert main(argv) == 2
    assert "--guidance: applies to steps 09-10 only, not step07" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Runs: a tiny run of each step, and a short training that learns.


@pytest.mark.parametrize(("step", "kls"), [("step07", ["kl"]), ("step08", ["kl1", "kl2"])])
def test_tiny_step_run_writes_pngs_and_results(step, kls, tmp_path, capsys, mnist_root):
    out = tmp_path / step
    argv = ["book", step, "--out", str(out), "--data", str(mnist_root), "--epochs", "1"]
    assert main([*argv, "--limit", "256", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 1 and len(results["losses"]) == 1
    assert results["train_digits"] == 256
    assert set(results["plots"]) == {"losses", "samples"}
    for plot in results["plots"].values():
        with open(plot, "rb") as f:
            assert f.read(4) == b"\x89PNG"
    assert (out / "samples.png").is_file() and (out / "losses.png").is_file()
    # the loss is the book's: reconstruction + twice each KL
    total = results["reconstruction"][0] + 2 * sum(results[k][0] for k in kls)
    assert results["losses"][0] == pytest.approx(total, rel=1e-6)
    assert 50 < results["losses"][0] < 250  # 8 steps from the start: about 180
    assert (out / "runs").is_dir() and list(out.glob("runs/*/*/checkpoints/last.pt"))
    assert f"{results['losses'][0]:.4f}" in printed


@pytest.mark.parametrize(
    ("recipe", "last_below", "fraction"), [("mnist-vae", 51.0, 0.9), ("mnist-hvae", 49.0, 0.75)]
)
def test_short_training_learns_beyond_the_mean_image(
    recipe, last_below, fraction, tmp_path, mnist_root
):
    """4 epochs on 8,192 digits (1,024 steps at the book's settings). Measured (seeds 0, 1):
    mnist-vae train loss 80 -> 49.3..49.5, test reconstruction 42.9..43.8; mnist-hvae 64 ->
    46.8..47.4, test reconstruction 33.4..34.6; the mean image scores about 52.6."""
    runs = tmp_path / "runs"
    argv = ["train", recipe, "--root", str(mnist_root), "--limit", "8192", "--epochs", "4"]
    assert main([*argv, "--runs-dir", str(runs), "--threads", "1", "--progress", "false"]) == 0
    (folder,) = runs.glob(f"{recipe}/*/")
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    assert len(losses) == 4
    assert all(b < a for a, b in itertools.pairwise(losses))
    assert losses[-1] < last_below
    # the best constant image, the training mean, scored on the same test digits
    summary = json.loads((folder / "summary.json").read_text())
    bundle, _, _ = build(
        resolve(load_recipe(recipe), ["--root", str(mnist_root), "--limit", "8192"])
    )
    mean_image = bundle.train[0].mean(dim=0)
    baseline = float((bundle.test[0] - mean_image).pow(2).sum(dim=1).mean())
    assert 45 < baseline < 60
    assert summary["test_reconstruction"] < fraction * baseline
