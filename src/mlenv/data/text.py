"""Character-level text: a vocabulary from the whole file, windows of ``block_size`` tokens."""

from __future__ import annotations

from pathlib import Path

import torch

from mlenv.data import DataBundle, register_dataset
from mlenv.errors import DataError


class CharVocab:
    """Sorted distinct characters <-> ids."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.chars[i] for i in ids.tolist())


def windows(ids: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping (input, next-token target) windows: (N, block_size) each."""
    n = (len(ids) - 1) // block_size
    if n < 1:
        raise DataError(f"text: {len(ids)} tokens are too few for block_size {block_size}")
    x = ids[: n * block_size].view(n, block_size)
    y = ids[1 : n * block_size + 1].view(n, block_size)
    return x, y


@register_dataset("char-text", provides=("vocab_size",))
def char_text(
    path: str = "",
    max_chars: int = 0,
    block_size: int = 64,
    val_fraction: float = 0.1,
) -> DataBundle:
    """A plain-text file as characters: first part for training, the tail for validation."""
    if not path:
        raise DataError("char-text: give the text file with --path FILE")
    file = Path(path)
    if not file.is_file():
        raise DataError(f"char-text: {file}: no such file")
    text = file.read_text(encoding="utf-8")
    if not text:
        raise DataError(f"char-text: {file} is empty")
    vocab = CharVocab(text)  # the whole file's alphabet, so the uniform baseline is ln(|V|)
    if max_chars:
        text = text[:max_chars]
    ids = vocab.encode(text)
    cut = int(len(ids) * (1 - val_fraction))
    return DataBundle(
        train=windows(ids[:cut], block_size),
        val=windows(ids[cut:], block_size),
        model_kwargs={"vocab_size": len(vocab)},
        info={"name": file.name, "chars": len(text), "vocab_size": len(vocab)},
    )
