"""Character-level text: a vocabulary from the whole file, windows of ``block_size`` tokens.

``read_utf8`` is also how the tabular CSV reader gets its text: a missing path, a folder, a
binary file or a file that is not UTF-8 is a one-line ``DataError`` naming the file and where.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import torch

from mlenv.data import DataBundle, register_dataset
from mlenv.errors import ConfigError, DataError


def read_utf8(path: Path, flag: str) -> tuple[str, bytes]:
    """The file's text (UTF-8, an optional byte-order mark removed) and its raw bytes.

    >>> text, raw = read_utf8(Path("notes.txt"), "--path")  # doctest: +SKIP
    """
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file; give a file with {flag} FILE")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror})") from None
    nul = raw.find(b"\0")
    if nul >= 0:  # never in UTF-8 text; a binary file, or UTF-16
        line = raw.count(b"\n", 0, nul) + 1
        raise DataError(
            f"{path}: not a text file (a NUL byte at byte offset {nul}, line {line}); "
            "binary or UTF-16 files are not read"
        )
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        line = raw.count(b"\n", 0, offset) + 1
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{raw[offset]:02x} at byte offset {offset}, line "
            f"{line}); save the file as UTF-8 (Latin-1 and Windows-1252 files stop here)"
        ) from None
    return text, raw


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


def windows(
    ids: torch.Tensor, block_size: int, what: str = "text"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping (input, next-token target) windows: (N, block_size) each."""
    n = (len(ids) - 1) // block_size
    if n < 1:
        raise DataError(
            f"{what}: {len(ids)} tokens are too few for --block-size {block_size} "
            "(a window needs block_size + 1)"
        )
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
    if block_size < 1:
        raise ConfigError(f"--block-size: accepts an integer >= 1, got {block_size}")
    if max_chars < 0:
        raise ConfigError(
            f"--max-chars: accepts an integer >= 0 (0: the whole file), got {max_chars}"
        )
    if not 0 < val_fraction < 1:
        raise ConfigError(f"--val-fraction: accepts a fraction in (0, 1), got {val_fraction}")
    if not path.strip():
        raise DataError("char-text: give the text file with --path FILE")
    file = Path(path)
    text, _ = read_utf8(file, "--path")
    if not text:
        raise DataError(f"char-text: {file} is empty")
    vocab = CharVocab(text)  # the whole file's alphabet, so the uniform baseline is ln(|V|)
    if max_chars:
        text = text[:max_chars]
    ids = vocab.encode(text)
    cut = int(len(ids) * (1 - val_fraction))
    return DataBundle(
        train=windows(ids[:cut], block_size, f"{file} (training part)"),
        val=windows(
            ids[cut:], block_size, f"{file} (validation part, --val-fraction {val_fraction})"
        ),
        model_kwargs={"vocab_size": len(vocab)},
        info={"name": file.name, "chars": len(text), "vocab_size": len(vocab)},
    )
