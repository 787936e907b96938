"""Text for language models.

``char-text``: characters, a vocabulary from the whole file, non-overlapping windows of
``block_size`` tokens. ``text-lm``: a character or byte-level BPE tokenizer trained on the
training split only, batches of blocks at random offsets drawn per step as nanoGPT does
(``RandomBlocks``), and a fixed set of validation blocks (``FixedBlocks``) or nanoGPT's random
validation batches (``--eval-iters``).

``read_utf8`` is also how the tabular CSV reader gets its text: a missing path, a folder, a
binary file or a file that is not UTF-8 is a one-line ``DataError`` naming the file and where.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

import torch

from mlenv.data import DataBundle, register_dataset
from mlenv.data.batching import Batches
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


def read_text_file(
    dataset: str, path: str, max_chars: int, val_fraction: float
) -> tuple[Path, str]:
    """The checks the text data sets share (``--max-chars``, ``--val-fraction``, ``--path``)
    and the file's text, read as UTF-8 (one-line errors naming the flag)."""
    if max_chars < 0:
        raise ConfigError(
            f"--max-chars: accepts an integer >= 0 (0: the whole file), got {max_chars}"
        )
    if not 0 < val_fraction < 1:
        raise ConfigError(f"--val-fraction: accepts a fraction in (0, 1), got {val_fraction}")
    if not path.strip():
        raise DataError(f"{dataset}: give the text file with --path FILE")
    file = Path(path)
    text, _ = read_utf8(file, "--path")
    return file, text


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
    file, text = read_text_file("char-text", path, max_chars, val_fraction)
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


# ---------------------------------------------------------------- tokenizers


class CharTokenizer:
    """Characters <-> ids: the training text's sorted alphabet, plus an unknown-character id
    (U+FFFD) when a text it must encode has characters the training text lacks.

    >>> tok = CharTokenizer.train("hello")
    >>> tok.decode(tok.encode("hole"))
    'hole'
    """

    kind = "char"
    UNKNOWN = "\ufffd"

    def __init__(self, chars: list[str]) -> None:
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> set[str]:
        """Characters of ``text`` outside the vocabulary."""
        return set(text) - self.index.keys()

    def with_unknown(self) -> CharTokenizer:
        return self if self.UNKNOWN in self.index else CharTokenizer([*self.chars, self.UNKNOWN])

    def encode(self, text: str) -> torch.Tensor:  # (N,) int64
        unk = self.index.get(self.UNKNOWN)
        try:
            return torch.tensor([self.index[c] for c in text], dtype=torch.long)
        except KeyError:
            if unk is None:
                shown = "".join(sorted(self.unknown(text)))[:20]
                raise DataError(f"text has characters the training text lacks: {shown!r}") from None
            return torch.tensor([self.index.get(c, unk) for c in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join(self.chars[i] for i in ids)

    def state(self) -> dict[str, object]:
        return {"kind": "char", "chars": "".join(self.chars)}


class BPETokenizer:
    """Byte-level BPE (GPT-2's scheme) through the ``tokenizers`` library: any text encodes
    (256 byte tokens at the base), and decoding gives the text back exactly.

    >>> tok = BPETokenizer.train("the theme of the thesis " * 20, vocab_size=270)
    >>> tok.decode(tok.encode("the thesis"))
    'the thesis'
    """

    kind = "bpe"

    def __init__(self, tokenizer: object) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        chunk = 1 << 16  # the trainer counts words per chunk; one huge string works too
        tokenizer.train_from_iterator(
            (text[i : i + chunk] for i in range(0, len(text), chunk)), trainer
        )
        return cls(tokenizer)

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> torch.Tensor:  # (N,) int64
        return torch.tensor(self.tokenizer.encode(text).ids, dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return self.tokenizer.decode(ids)

    def state(self) -> dict[str, object]:
        return {"kind": "bpe", "json": self.tokenizer.to_str()}


Tokenizer = CharTokenizer | BPETokenizer


def tokenizer_from_state(state: dict[str, object]) -> Tokenizer:
    """The tokenizer a run saved (``DataBundle.state["tokenizer"]``, kept in every checkpoint)."""
    if state.get("kind") == "char":
        return CharTokenizer(list(str(state["chars"])))
    if state.get("kind") == "bpe":
        return BPETokenizer.from_json(str(state["json"]))
    raise DataError(f"unknown tokenizer state {state.get('kind')!r} (expected char or bpe)")


# ---------------------------------------------------------------- random blocks

# Streams of the block generators: ``seed * 1_000_003 + stream + epoch`` seeds the offsets of
# epoch ``epoch`` (training: stream 0); the fixed validation set is drawn once, with epoch 0.
FIXED_VAL_STREAM = 7919
NANOGPT_VAL_STREAM = 104_729


class TokenBlocks(Batches):
    """Blocks of ``block_size`` tokens of one token stream at given offsets: inputs (B, T) and
    targets shifted by one (B, T). ``batch_size`` None: the run's ``--batch-size``
    (``make_batches`` sets it)."""

    on_device = True  # the Trainer moves the token stream once; batches are sliced there

    def __init__(
        self, ids: torch.Tensor, block_size: int, batch_size: int | None = None, seed: int = 0
    ) -> None:
        if len(ids) < block_size + 1:
            raise DataError(
                f"{len(ids)} tokens are too few for --block-size {block_size} "
                "(a block needs block_size + 1 tokens)"
            )
        self.ids = ids
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.limit: int | None = None
        self._arange = torch.arange(block_size + 1)

    def draw(self, count: tuple[int, ...], stream: int, epoch: int) -> torch.Tensor:
        """Offsets of shape ``count``, each a start whose block and target fit the stream."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + stream + epoch)
        high = len(self.ids) - self.block_size  # the last start whose target fits
        return torch.randint(high, count, generator=generator)

    def rows(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.ids[starts[:, None] + self._arange]  # (B, T + 1)
        return rows[:, :-1], rows[:, 1:]

    def to(self, device: torch.device) -> TokenBlocks:
        self.ids = self.ids.to(device)
        self._arange = self._arange.to(device)
        return self


class RandomBlocks(TokenBlocks):
    """Language-model batches as nanoGPT draws them: ``steps`` batches of ``batch_size`` blocks
    at random offsets, drawn afresh every epoch.

    The offsets of epoch ``e`` are a pure function of ``(seed, stream, e)``, so a resumed run
    draws the batches it would have drawn. Training uses stream 0; nanoGPT's validation
    (``--eval-iters``) uses ``NANOGPT_VAL_STREAM``, so evaluation ``e`` draws new batches that
    are the same in every run of that seed.
    """

    def __init__(
        self,
        ids: torch.Tensor,
        block_size: int,
        steps: int,
        batch_size: int | None = None,
        seed: int = 0,
        stream: int = 0,
    ) -> None:
        super().__init__(ids, block_size, batch_size, seed)
        self.steps = steps
        self.stream = stream

    def __len__(self) -> int:
        return min(self.steps, self.limit) if self.limit is not None else self.steps

    def offsets(self, epoch: int) -> torch.Tensor:  # (steps, B): start of every block
        return self.draw((self.steps, self.batch_size or 1), self.stream, epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        starts = self.offsets(self.epoch).to(self.ids.device)
        for i in range(self.start, len(self)):
            yield self.rows(starts[i])


class FixedBlocks(TokenBlocks):
    """``blocks`` blocks at random offsets drawn once (stream ``FIXED_VAL_STREAM``): a
    validation set that does not move between evaluations and does not depend on the batch
    size, so runs with other ``--batch-size`` values are measured on the same blocks. Batched
    by ``batch_size`` in their drawn order; the last batch holds the remainder."""

    def __init__(
        self,
        ids: torch.Tensor,
        block_size: int,
        blocks: int,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(ids, block_size, batch_size, seed)
        self.blocks = blocks

    def __len__(self) -> int:
        count = -(-self.blocks // (self.batch_size or self.blocks))
        return min(count, self.limit) if self.limit is not None else count

    def offsets(self) -> torch.Tensor:  # (blocks,)
        return self.draw((self.blocks,), FIXED_VAL_STREAM, 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        starts = self.offsets().to(self.ids.device)
        size = self.batch_size or self.blocks
        for i in range(self.start, len(self)):
            yield self.rows(starts[i * size : (i + 1) * size])


def unigram_loss(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy in nats of the training split's token frequencies (add-one smoothed) on the
    validation tokens: what a model without context reaches at best."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1
    log_p = (counts / counts.sum()).log()
    return float(-log_p[val_ids].mean())


@register_dataset("text-lm", provides=("vocab_size", "block_size"))
def text_lm(
    path: str = "",
    tokenizer: str = "char",
    vocab_size: int = 512,
    block_size: int = 64,
    val_fraction: float = 0.1,
    eval_interval: int = 100,
    val_blocks: int = 240,
    eval_iters: int | None = None,
    max_chars: int = 0,
    seed: int = 0,
) -> DataBundle:
    """A UTF-8 text file for language modelling: the first ``1 - val_fraction`` of it trains
    (the tokenizer, char or byte-level BPE, is trained on that part only), the tail validates.
    An epoch is ``eval_interval`` random batches, so ``--epochs E`` trains E * eval_interval
    steps (nanoGPT's max_iters), evaluating every eval_interval steps.

    Validation is ``val_blocks`` blocks at random offsets of the tail, drawn once: the same at
    every evaluation and whatever the ``--batch-size``. With ``eval_iters`` N it is nanoGPT's
    estimate instead: N batches of ``--batch-size`` random blocks, drawn anew at every
    evaluation, evaluation e (0: after the first epoch) from a generator seeded with
    ``seed * 1_000_003 + 104_729 + e`` (``NANOGPT_VAL_STREAM``)."""
    if tokenizer not in ("char", "bpe"):
        raise ConfigError(f"--tokenizer: accepts char or bpe, got {tokenizer!r}")
    if block_size < 1:
        raise ConfigError(f"--block-size: accepts an integer >= 1, got {block_size}")
    if tokenizer == "bpe" and vocab_size < 257:
        raise ConfigError(
            f"--vocab-size: accepts an integer >= 257 with --tokenizer bpe (256 byte tokens "
            f"come first), got {vocab_size}"
        )
    for flag, value in (("--eval-interval", eval_interval), ("--val-blocks", val_blocks)):
        if value < 1:
            raise ConfigError(f"{flag}: accepts an integer >= 1, got {value}")
    if eval_iters is not None and eval_iters < 1:
        raise ConfigError(
            f"--eval-iters: accepts an integer >= 1 (nanoGPT's random validation batches per "
            f"evaluation; unset: the {val_blocks} fixed --val-blocks), got {eval_iters}"
        )
    file, text = read_text_file("text-lm", path, max_chars, val_fraction)
    if max_chars:
        text = text[:max_chars]
    if not text:
        raise DataError(f"text-lm: {file} is empty")
    cut = int(len(text) * (1 - val_fraction))  # contiguous: the tail is never trained on
    train_text, val_text = text[:cut], text[cut:]
    if tokenizer == "char":
        tok: Tokenizer = CharTokenizer.train(train_text)
        if tok.unknown(val_text):
            tok = tok.with_unknown()
    else:
        tok = BPETokenizer.train(train_text, vocab_size)
    train_ids, val_ids = tok.encode(train_text), tok.encode(val_text)
    for name, ids in (("training", train_ids), ("validation", val_ids)):
        if len(ids) < block_size + 1:
            raise DataError(
                f"{file} ({name} part, --val-fraction {val_fraction}): {len(ids)} tokens are "
                f"too few for --block-size {block_size} (a block needs block_size + 1)"
            )
    return DataBundle(
        train=RandomBlocks(train_ids, block_size, eval_interval, seed=seed),
        val=FixedBlocks(val_ids, block_size, val_blocks, seed=seed)
        if eval_iters is None
        else RandomBlocks(val_ids, block_size, eval_iters, seed=seed, stream=NANOGPT_VAL_STREAM),
        model_kwargs={"vocab_size": tok.vocab_size, "block_size": block_size},
        info={
            "name": file.name,
            "tokenizer": tok.kind,
            "vocab_size": tok.vocab_size,
            "train_tokens": len(train_ids),
            "val_tokens": len(val_ids),
            "validation": f"{val_blocks} fixed blocks"
            if eval_iters is None
            else f"nanoGPT: eval_iters {eval_iters}, new random batches at every evaluation",
            "chars_per_token": round(len(text) / (len(train_ids) + len(val_ids)), 4),
            "unigram_val_loss": round(unigram_loss(train_ids, val_ids, tok.vocab_size), 4),
        },
        state={
            "kind": "text",
            "tokenizer": tok.state(),
            "chars_per_token": len(text) / (len(train_ids) + len(val_ids)),
        },
    )
