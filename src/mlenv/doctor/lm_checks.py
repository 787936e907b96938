"""Checks for language models: the tokenizer gives back the text it encoded, and the loss
ignores padding positions."""

from __future__ import annotations

from typing import Any

import torch

from mlenv.doctor.verdict import Verdict


def check_round_trip(tokenizer: Any, text: str) -> Verdict:
    """``decode(encode(text)) == text``; fail naming the first character where they differ."""
    ids = tokenizer.encode(text)
    back = tokenizer.decode(ids)
    n = len(ids)
    if back == text:
        return Verdict(
            "tokenizer round trip",
            "ok",
            f"{len(text)} characters -> {n} tokens -> the same text",
            figures={"chars": len(text), "tokens": n},
        )
    at = next(
        (i for i, (a, b) in enumerate(zip(text, back, strict=False)) if a != b),
        min(len(text), len(back)),
    )
    return Verdict(
        "tokenizer round trip",
        "fail",
        f"decode(encode(text)) differs from the text at character {at}: "
        f"{text[at : at + 20]!r} came back as {back[at : at + 20]!r}",
        "a tokenizer that loses characters (unknown-token mapping, normalisation, stripped "
        "spaces) trains the model on other text than the user's",
        {"at": at},
    )


def check_padding_ignored(
    criterion: Any, vocab_size: int, pad_target: int | None = None
) -> Verdict:
    """Targets equal to ``pad_target`` (the criterion's ``ignore_index`` when None) must not
    change the loss: the loss of random logits must stay the same when the logits at the padded
    positions change."""
    pad = getattr(criterion, "ignore_index", None) if pad_target is None else pad_target
    if pad is None:
        return Verdict(
            "padding ignored",
            "skip",
            f"{type(criterion).__name__} has no ignore_index and no padding target was given",
        )
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, vocab_size, generator=generator)
    targets = torch.randint(0, vocab_size, (64,), generator=generator)
    targets[::4] = pad  # every fourth position is padding
    before = float(criterion(logits, targets))
    moved = logits.clone()
    moved[::4] += 10 * torch.randn(16, vocab_size, generator=generator)
    after = float(criterion(moved, targets))
    evidence = f"padding target {pad}: loss {before:.6g} -> {after:.6g} when padded logits change"
    if abs(before - after) <= 1e-6 * max(1.0, abs(before)):
        return Verdict("padding ignored", "ok", evidence, figures={"pad": pad})
    return Verdict(
        "padding ignored",
        "fail",
        evidence,
        f"give the loss ignore_index={pad} (the padding target) so padded positions cost nothing",
        {"pad": pad},
    )
