"""Masked language modelling (BERT, Devlin et al. 2018) as a task.

Each training step masks the batch afresh (``mask_tokens``): every token is chosen with
probability ``mask_rate`` (0.15); a chosen token is replaced by the model's ``[MASK]`` id with
probability 0.8, by a token drawn uniformly from the vocabulary with probability 0.1, and left as
it is with probability 0.1. The model sees the whole corrupted window at once (no causal mask) and
the loss is the cross-entropy at the chosen positions only: the others carry no target. Keeping
10% of the chosen tokens unchanged and corrupting 10% at random means the model cannot learn that
"only [MASK] positions matter"; it has to keep a good representation of every token.

The data are windows of token ids (``char-text`` gives ``(x, y)``; only ``x`` is used, the
next-token targets are ignored). The model must say which id is ``[MASK]`` (``mask_id``) and how
many real tokens there are (``vocab_size``); ``bert`` does.
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mlenv.errors import ConfigError
from mlenv.train.tasks import Task, register_task, split_batch

IGNORE = -100  # target of a position that was not chosen: no loss there
P_MASK = 0.8  # of the chosen tokens: replaced by [MASK]
P_RANDOM = 0.1  # of the chosen tokens: replaced by a random token (the other 0.1: unchanged)


def mask_tokens(
    tokens: torch.Tensor,
    vocab_size: int,
    mask_id: int,
    mask_rate: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of a batch of token ids: ``(inputs, targets)``, both shaped like
    ``tokens``; ``targets`` holds the original token at the chosen positions and ``IGNORE``
    (-100) elsewhere.

    >>> tokens = torch.zeros(2, 1000, dtype=torch.long)
    >>> inputs, targets = mask_tokens(tokens, vocab_size=10, mask_id=10)
    >>> bool(((targets == IGNORE) | (targets == 0)).all())
    True
    """
    shape, device = tokens.shape, tokens.device
    chosen = torch.rand(shape, generator=generator, device=device) < mask_rate
    action = torch.rand(shape, generator=generator, device=device)  # which corruption, if chosen
    to_mask = chosen & (action < P_MASK)
    to_random = chosen & (action >= P_MASK) & (action < P_MASK + P_RANDOM)
    random_tokens = torch.randint(vocab_size, shape, generator=generator, device=device)
    inputs = torch.where(to_mask, torch.full_like(tokens, mask_id), tokens)
    inputs = torch.where(to_random, random_tokens, inputs)
    targets = tokens.masked_fill(~chosen, IGNORE)
    return inputs, targets


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) over the positions whose target is not ``IGNORE``; 0 when a
    batch has none (so a tiny batch never gives NaN). logits (B, T, V), targets (B, T)."""
    total = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return total / (targets != IGNORE).sum().clamp(min=1)


def evaluation_masks(
    tokens: torch.Tensor, vocab_size: int, mask_id: int, mask_rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask_tokens`` row by row, each row (T,) with a generator seeded by that row's own
    content: the same validation blocks get the same masks at every evaluation, so ``val_loss``
    moves only when the model does; evaluating never draws from the training's random stream;
    and a row's masks do not depend on the batch it is in, so the shares of ``--devices N``
    are masked as the whole batch is in one process."""
    ids = tokens.detach().cpu()
    masked = [
        mask_tokens(row, vocab_size, mask_id, mask_rate, torch.Generator().manual_seed(seed))
        for row, seed in zip(ids, row_seeds(ids), strict=True)
    ]
    inputs = torch.stack([row_inputs for row_inputs, _ in masked])
    targets = torch.stack([row_targets for _, row_targets in masked])
    return inputs.to(tokens.device), targets.to(tokens.device)


def row_seeds(ids: torch.Tensor) -> list[int]:
    """A seed per row of (B, T) token ids: the CRC-32 of its ids as int64 (whatever their
    dtype)."""
    return [zlib.crc32(row.numpy().tobytes()) for row in ids.to(torch.int64)]


class MaskedPredictions(NamedTuple):
    logits: torch.Tensor  # (B, T, V)
    targets: torch.Tensor  # (B, T), IGNORE where not chosen


@register_task("masked-lm")
class MaskedLMTask(Task):
    """BERT's masked-LM objective: 15% of the tokens chosen, 80/10/10 -> [MASK] / random /
    unchanged, cross-entropy at the chosen positions; ``acc`` is the share of chosen tokens
    predicted right; over an epoch (and a global batch under ``--devices N``) both are means over
    all the chosen tokens (``batch_weight``). ``mask_rate`` is the share chosen. Training batches
    are masked afresh from the global RNG (saved in checkpoints); evaluation batches by
    ``evaluation_masks``.

    >>> task = MaskedLMTask(mask_rate=0.15)
    """

    def __init__(self, criterion: Any = None, *, mask_rate: float = 0.15) -> None:
        super().__init__(criterion)
        if not 0 < mask_rate < 1:  # also refuses NaN
            raise ConfigError(f"--mask_rate: accepts a fraction in (0, 1), got {mask_rate}")
        self.mask_rate = mask_rate
        self.vocab_size: int | None = None
        self.mask_id: int | None = None

    def get_criterion(self, model: nn.Module | None = None) -> Any:
        """The masked cross-entropy; reads ``vocab_size`` and ``mask_id`` of the model being
        trained (asked once, before training, with the unwrapped model)."""
        if model is not None:
            mask_id = getattr(model, "mask_id", None)
            if mask_id is None:
                raise ConfigError(
                    f"masked-lm: the model ({type(model).__name__}) has no [MASK] token; "
                    "use a model with a mask_id, such as bert"
                )
            self.vocab_size, self.mask_id = int(model.vocab_size), int(mask_id)
        return self.criterion or masked_cross_entropy

    def forward_pass(
        self, model: nn.Module, batch: Any, criterion: Any
    ) -> tuple[torch.Tensor, MaskedPredictions]:
        if self.mask_id is None or self.vocab_size is None:
            raise ConfigError("masked-lm: get_criterion(model) must be called before training")
        tokens = split_batch(batch)[0]  # (B, T); next-token targets, if any, are not used
        inputs, targets = self.masks(tokens, model.training)
        logits = model(inputs)  # (B, T, V)
        return criterion(logits, targets), MaskedPredictions(logits, targets)

    def masks(self, tokens: torch.Tensor, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` of a batch (B, T): fresh random masks in training (the global
        RNG), ``evaluation_masks`` otherwise."""
        mask = mask_tokens if training else evaluation_masks
        return mask(tokens, self.vocab_size, self.mask_id, self.mask_rate)

    def batch_metrics(self, predictions: Any, batch: Any) -> dict[str, torch.Tensor]:
        chosen = predictions.targets != IGNORE  # (B, T)
        right = (predictions.logits.argmax(dim=-1) == predictions.targets) & chosen
        return {"acc": right.sum() / chosen.sum().clamp(min=1)}

    def batch_weight(self, predictions: Any, batch: Any) -> torch.Tensor:
        """The loss and ``acc`` are means over the masked tokens: a batch (or a process's share)
        counts as many as it has, so an epoch's and a global batch's means are over all of
        them."""
        return (predictions.targets != IGNORE).sum()

    def metric_modes(self) -> dict[str, str]:
        return {"acc": "max"}

    def inference(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Token probabilities (B, T, V) for the batch as given (put ``mask_id`` where a token
        should be filled in)."""
        return model(split_batch(batch)[0]).softmax(dim=-1)
