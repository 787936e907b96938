"""Hierarchical VAE with two Gaussian latent levels (book step 8): x -> z1 -> z2.

Inference (the encoders) goes up, generation (the decoders) goes down:

    q(z1 | x)  = N(mu1, diag exp(logvar1))      encoder1: in -> hidden (ReLU) -> (mu1, logvar1)
    q(z2 | z1) = N(mu2, diag exp(logvar2))      encoder2: latent -> hidden (ReLU) -> (mu2, logvar2)
    p(z2)      = N(0, I)
    p(z1 | z2) = N(decoder2(z2), I)             decoder2: latent -> hidden (ReLU) -> latent
    p(x | z1)  has mean sigmoid(decoder1(z1))   decoder1: latent -> hidden (ReLU) -> in (logits)

The loss (``mlenv.train.tasks.HVAETask``) has three terms: the reconstruction of x from z1, the KL of
q(z2 | z1) to N(0, I), and the KL of q(z1 | x) to the z2-conditional prior N(decoder2(z2), I) with
z2 one sample from q(z2 | z1), as the book computes it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mlenv.models import register_model
from mlenv.models.mlp import check_widths
from mlenv.train.base import BaseModel


class GaussianEncoder(nn.Module):
    """``in -> hidden (ReLU) -> (mu, logvar)``: a diagonal Gaussian over ``out`` dimensions."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.to_mu = nn.Linear(hidden, out_features)
        self.to_logvar = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(x)  # (B, hidden)
        return self.to_mu(h), self.to_logvar(h)  # (B, out) each


def decoder(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """``in -> hidden (ReLU) -> out``, a linear output (logits, or the mean of a Gaussian)."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """One sample of N(mu, exp(logvar)) that gradients flow through: mu + sigma * eps."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class HVAEOutput(NamedTuple):
    """What ``HierarchicalVAE.forward`` returns; every field is (B, latent) except ``logits``."""

    logits: torch.Tensor  # (B, in): decoder1(z1), the mean image is their sigmoid
    mu1: torch.Tensor
    logvar1: torch.Tensor
    mu2: torch.Tensor
    logvar2: torch.Tensor
    z1_prior_mean: torch.Tensor  # decoder2(z2): the mean of p(z1 | z2)


class HierarchicalVAE(BaseModel):
    """Two latent levels of ``latent`` dimensions each; every network has one hidden layer.

    >>> model = HierarchicalVAE(784, hidden=100, latent=20)
    >>> out = model(torch.rand(32, 784))  # out.logits (32, 784), out.mu2 (32, 20), ...
    >>> images = model.sample(64)  # (64, 784) in [0, 1]: z2 -> z1 -> x
    """

    def __init__(self, in_features: int, hidden: int = 100, latent: int = 20) -> None:
        super().__init__()
        check_widths(in_features=in_features, hidden=hidden, latent=latent)
        self.encoder1 = GaussianEncoder(in_features, hidden, latent)  # q(z1 | x)
        self.encoder2 = GaussianEncoder(latent, hidden, latent)  # q(z2 | z1)
        self.decoder2 = decoder(latent, hidden, latent)  # mean of p(z1 | z2)
        self.decoder1 = decoder(latent, hidden, in_features)  # logits of p(x | z1)
        self.in_features = in_features
        self.latent = latent

    @property
    def dim(self) -> int:
        return self.in_features

    def forward(self, x: torch.Tensor) -> HVAEOutput:
        mu1, logvar1 = self.encoder1(x)  # (B, latent) each
        # sampled while training; the means in eval mode, so evaluation is deterministic
        z1 = reparameterize(mu1, logvar1) if self.training else mu1
        mu2, logvar2 = self.encoder2(z1)
        z2 = reparameterize(mu2, logvar2) if self.training else mu2
        return HVAEOutput(self.decoder1(z1), mu1, logvar1, mu2, logvar2, self.decoder2(z2))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling: z2 ~ N(0, I), z1 ~ N(decoder2(z2), I), x = sigmoid(decoder1(z1));
        (n, in) in [0, 1]."""
        device = next(self.parameters()).device
        z2 = torch.randn(n, self.latent, generator=generator).to(device)  # (n, latent)
        noise = torch.randn(n, self.latent, generator=generator).to(device)
        z1 = self.decoder2(z2) + noise  # unit variance
        return self.decoder1(z1).sigmoid()


def kl_between_normals(
    mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """KL(N(mu_q, exp(logvar_q)) || N(mu_p, I)) summed over the latent, averaged over the batch:
    0.5 * sum(exp(logvar_q) + (mu_q - mu_p)^2 - 1 - logvar_q)."""
    per_dim = logvar_q.exp() + (mu_q - mu_p).pow(2) - 1.0 - logvar_q  # (B, latent)
    return 0.5 * per_dim.sum(dim=1).mean()


@register_model("hvae")
def hvae(in_features: int, hidden: int = 100, latent: int = 20) -> HierarchicalVAE:
    """Hierarchical VAE with two latent levels of ``latent`` dims (book step 8: 784-100-20)."""
    return HierarchicalVAE(in_features, hidden, latent)
