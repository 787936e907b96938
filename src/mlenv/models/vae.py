"""Variational autoencoder with a Gaussian latent and a decoder that outputs logits, for vectors.

The decoder's mean image is ``sigmoid(logits)``. Which likelihood scores it is the task's choice
(``mlenv.train.tasks.VAETask``): a Bernoulli negative log-likelihood (the default, ``digits-vae``)
or the book's sum of squared errors of the sigmoid output (``mnist-vae``, book step 7: 784-200-20).
"""

from __future__ import annotations

import torch
from torch import nn

from mlenv.models import register_model
from mlenv.models.mlp import check_widths
from mlenv.train.base import BaseModel


class VAE(BaseModel):
    """Encoder ``in -> hidden (ReLU) -> (mu, logvar)``, decoder ``latent -> hidden (ReLU) -> in``.

    >>> model = VAE(784, hidden=200, latent=20)
    >>> logits, mu, logvar = model(torch.rand(32, 784))  # (32, 784), (32, 20), (32, 20)
    >>> images = model.sample(64)  # (64, 784) in [0, 1]
    """

    def __init__(self, in_features: int, hidden: int = 128, latent: int = 8) -> None:
        super().__init__()
        check_widths(in_features=in_features, hidden=hidden, latent=latent)
        self.encoder = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.to_mu = nn.Linear(hidden, latent)
        self.to_logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, in_features)
        )
        self.in_features = in_features
        self.latent = latent

    @property
    def dim(self) -> int:
        return self.in_features

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)  # (B, hidden)
        return self.to_mu(h), self.to_logvar(h)  # (B, latent) each

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        # reparameterisation while training; the mean in eval mode, so evaluation and exported
        # golden vectors are deterministic
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return self.decoder(z), mu, logvar  # reconstruction logits (B, in), (B, latent) x2

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` new vectors: z ~ N(0, I) decoded to the mean image sigmoid(logits), (n, in)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent, generator=generator).to(device)  # (n, latent)
        return self.decoder(z).sigmoid()


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over the latent, averaged over the batch."""
    return (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).sum(dim=1).mean()


@register_model("vae")
def vae(in_features: int, hidden: int = 128, latent: int = 8) -> VAE:
    """Variational autoencoder for vectors in [0, 1] (decoder logits; the task picks the
    likelihood)."""
    return VAE(in_features, hidden, latent)
