"""The VAE recipe's two logged terms are the closed-form KL to N(0, I) and the Bernoulli negative
log-likelihood, checked by hand in NumPy.

A global forward hook watches the model inside ``mlenv train digits-vae``: it records the batch
and the model's own ``(logits, mu, logvar)`` for every forward (or replaces them with known values),
so the values the recipe logs can be recomputed from exactly what the loss saw.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook

from mlenv.cli import main

# a known posterior for every row, with non-zero means and log-variances of both signs
KNOWN_MU = np.array([0.5, -1.0, 1.5, 0.0, 2.0, -0.3, 0.8, -2.2])
KNOWN_LOGVAR = np.array([0.2, -0.5, 1.0, 0.0, -1.5, 0.7, -0.1, 0.4])


def kl_closed_form(mu: np.ndarray, logvar: np.ndarray) -> float:
    """KL(N(mu, sigma^2) || N(0, 1)) = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2) over the
    latent, averaged over the rows."""
    mu, logvar = np.atleast_2d(mu), np.atleast_2d(logvar)
    return float(np.mean(0.5 * np.sum(mu**2 + np.exp(logvar) - 1.0 - logvar, axis=1)))


def bernoulli_nll(logits: np.ndarray, x: np.ndarray) -> float:
    """-log p(x | logits) of a Bernoulli decoder, summed over the features and averaged over
    the rows: softplus(l) - x * l, written stably."""
    per_feature = np.maximum(logits, 0) - logits * x + np.log1p(np.exp(-np.abs(logits)))
    return float(np.mean(np.sum(per_feature, axis=1)))


def test_closed_form_by_hand():
    # one latent dimension: mu = 1, sigma^2 = e: 0.5 * (1 + e - 1 - 1) = (e - 1) / 2
    assert kl_closed_form(np.array([1.0]), np.array([1.0])) == pytest.approx((math.e - 1) / 2)
    assert kl_closed_form(np.zeros(8), np.zeros(8)) == 0.0  # the prior itself
    expected = 0.5 * sum(
        m**2 + math.exp(v) - 1 - v for m, v in zip(KNOWN_MU, KNOWN_LOGVAR, strict=True)
    )
    assert kl_closed_form(KNOWN_MU, KNOWN_LOGVAR) == pytest.approx(expected)
    assert expected == pytest.approx(7.5249, abs=1e-4)  # 0.5 * (13.07 + 1.9798)
    # logits 0 say p = 1/2 for every pixel: ln 2 per feature whatever x is
    x = np.random.default_rng(0).random((5, 64))
    assert bernoulli_nll(np.zeros((5, 64)), x) == pytest.approx(64 * math.log(2))


def train_vae_watched(tmp_path, replace=None):
    """Train digits-vae for 3 epochs with a hook on the model's forward. Returns the summary and,
    for the last epoch's training pass, its validation pass and the test evaluation, the forwards
    each made: ``(x, logits, mu, logvar)`` as float64 arrays, one tuple per batch."""
    calls = []

    def hook(module, inputs, output):
        if not (isinstance(output, tuple) and len(output) == 3):
            return None  # a layer inside the model, not the VAE itself
        if replace is not None:
            output = replace(output)
        arrays = [t.detach().double().cpu().numpy() for t in (inputs[0], *output)]
        calls.append((torch.is_grad_enabled(), arrays))
        return output

    runs = tmp_path / "runs"
    handle = register_module_forward_hook(hook)
    try:
        argv = ["train", "digits-vae", "--epochs", "3", "--runs-dir", str(runs)]
        assert main([*argv, "--progress", "false"]) == 0
    finally:
        handle.remove()
    (summary_file,) = runs.glob("digits-vae/*/summary.json")
    summary = json.loads(summary_file.read_text())
    sizes = summary["data"]["sizes"]
    if isinstance(sizes, dict):
        sizes = [sizes[k] for k in ("train", "val", "test")]
    n_train, n_val, n_test = sizes
    # the last epoch's training forwards (the only ones with gradients), then validation and test
    end = max(i for i, (grad, _) in enumerate(calls) if grad) + 1
    start = end
    while calls[start - 1][0]:
        start -= 1
    phases, rest = {"train": calls[start:end]}, calls[end:]
    for split, rows in (("val", n_val), ("test", n_test)):
        count = np.cumsum([len(arrays[0]) for _, arrays in rest])
        taken = int(np.searchsorted(count, rows)) + 1
        phases[split], rest = rest[:taken], rest[taken:]
    for split, rows in zip(phases, (n_train, n_val, n_test), strict=True):
        assert sum(len(arrays[0]) for _, arrays in phases[split]) == rows, split
        assert all(grad == (split == "train") for grad, _ in phases[split]), split
    return summary, {k: [arrays for _, arrays in v] for k, v in phases.items()}


def epoch_mean(batches, term) -> float:
    """The epoch's value as logged: the per-batch means weighted by the batch's rows."""
    return sum(len(b[0]) * term(*b) for b in batches) / sum(len(b[0]) for b in batches)


def test_logged_terms_equal_the_closed_form_on_the_models_own_forward(tmp_path):
    summary, phases = train_vae_watched(tmp_path)
    for split, batches in phases.items():
        kl = epoch_mean(batches, lambda x, logits, mu, logvar: kl_closed_form(mu, logvar))
        assert kl > 0.1  # a posterior away from the prior: a KL stuck at 0 cannot pass
        assert summary[f"{split}_kl"] == pytest.approx(kl, rel=1e-5), split
        nll = epoch_mean(batches, lambda x, logits, mu, logvar: bernoulli_nll(logits, x))
        assert summary[f"{split}_reconstruction"] == pytest.approx(nll, rel=1e-5), split
        assert summary[f"{split}_loss"] == pytest.approx(kl + nll, rel=1e-5), split


def test_logged_kl_on_known_mu_and_logvar(tmp_path):
    offset = np.linspace(-2.0, 2.0, 64)  # known logits, one per pixel

    def known(output):
        logits, mu, logvar = output

        def like(t, values):  # the known values, still connected to the graph for backward
            return 0 * t + torch.tensor(values, dtype=t.dtype).expand_as(t)

        return like(logits, offset), like(mu, KNOWN_MU), like(logvar, KNOWN_LOGVAR)

    summary, phases = train_vae_watched(tmp_path, replace=known)
    kl = kl_closed_form(KNOWN_MU, KNOWN_LOGVAR)  # 7.5249
    for split, batches in phases.items():
        assert summary[f"{split}_kl"] == pytest.approx(kl, rel=1e-6), split
        nll = epoch_mean(batches, lambda x, *_: bernoulli_nll(np.broadcast_to(offset, x.shape), x))
        assert summary[f"{split}_reconstruction"] == pytest.approx(nll, rel=1e-6), split
