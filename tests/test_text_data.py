"""Text for language models: tokenizers (char, byte-level BPE) trained on the training split only
and round-tripping exactly, a contiguous split, and nanoGPT's random-block batches as resumable
epochs."""

from __future__ import annotations

import pytest
import torch

from mlenv.data.batching import make_batches
from mlenv.data.text import (
    BPETokenizer,
    CharTokenizer,
    RandomBlocks,
    text_lm,
    tokenizer_from_state,
)
from mlenv.errors import ConfigError, DataError

SAMPLES = ["ROMEO:\nWhat light through yonder window breaks?", "naïve café — 日本語 ✓ \t\r\n"]


@pytest.fixture(scope="module")
def shakespeare(shared_data):
    return (shared_data / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")


def test_char_tokenizer_round_trip_and_reload(shakespeare):
    tok = CharTokenizer.train(shakespeare[:100_000])
    text = shakespeare[200_000:201_000]
    assert tok.decode(tok.encode(text)) == text
    again = tokenizer_from_state(tok.state())
    assert torch.equal(again.encode(text), tok.encode(text))


def test_bpe_round_trip_on_any_text_and_reload(shakespeare):
    tok = BPETokenizer.train(shakespeare[:100_000], vocab_size=400)
    assert tok.vocab_size == 400
    for text in [shakespeare[200_000:202_000], *SAMPLES]:  # unseen text, non-ASCII, CRLF
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode(shakespeare[200_000:202_000])
    assert len(ids) < 2_000 * 0.7  # merges compress English: fewer tokens than bytes
    again = tokenizer_from_state(tok.state())
    assert torch.equal(again.encode(SAMPLES[1]), tok.encode(SAMPLES[1]))


def test_tokenizers_learn_from_the_training_split_only(tmp_path):
    # the validation tail holds a character and a word the training part never has
    train = "abc abd abe " * 400
    tail = "Zqxv Zqxv Zqxv " * 40
    path = tmp_path / "t.txt"
    path.write_text(train + tail, encoding="utf-8")
    frac = len(tail) / len(train + tail)
    char = text_lm(str(path), "char", block_size=8, val_fraction=frac)
    chars = tokenizer_from_state(char.state["tokenizer"])
    assert "Z" not in chars.chars and chars.chars[-1] == CharTokenizer.UNKNOWN
    assert char.info["vocab_size"] == len(set(train)) + 1
    bpe = text_lm(str(path), "bpe", vocab_size=270, block_size=8, val_fraction=frac)
    tok = tokenizer_from_state(bpe.state["tokenizer"])
    assert len(tok.encode(" Zqxv")) == 5  # no merge for a word only the tail has: its bytes
    assert len(tok.encode(" abd")) == 1  # a training word (with its space) is one token


def test_split_is_contiguous_and_targets_are_the_next_token(shared_data):
    path = shared_data / "text" / "tinyshakespeare.txt"
    text = path.read_text(encoding="utf-8")[:50_000]
    bundle = text_lm(str(path), "char", block_size=16, max_chars=50_000, val_fraction=0.1)
    tok = tokenizer_from_state(bundle.state["tokenizer"])
    assert tok.decode(bundle.train.ids) == text[:45_000]
    assert tok.decode(bundle.val.ids) == text[45_000:]
    train = make_batches(bundle.train, batch_size=5, shuffle=True, seed=0)
    x, y = next(iter(train))
    assert x.shape == y.shape == (5, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y, strict=True):  # each row is a real window of the training text
        window = tok.decode(torch.cat([row_x, row_y[-1:]]))
        assert window in text[:45_000]


def test_random_blocks_are_a_function_of_seed_and_epoch():
    ids = torch.arange(1000)
    blocks = RandomBlocks(ids, block_size=8, steps=6, batch_size=4, seed=3)
    blocks.set_epoch(0)
    first = [x for x, _ in blocks]
    blocks.set_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in blocks], strict=True))
    blocks.set_epoch(1)
    assert not torch.equal(first[0], next(iter(blocks))[0])
    blocks.set_epoch(0, start=4)  # a resume after 4 batches draws the epoch's last two
    tail = [x for x, _ in blocks]
    assert len(tail) == 2 and torch.equal(tail[0], first[4]) and torch.equal(tail[1], first[5])
    val = RandomBlocks(ids, block_size=8, steps=3, batch_size=4, seed=3, fixed=True)
    val.set_epoch(0)
    a = next(iter(val))[0]
    val.set_epoch(5)
    assert torch.equal(a, next(iter(val))[0])  # validation does not move between epochs
    starts = torch.cat([x[:, 0] for x in first])
    assert starts.max() <= 1000 - 9  # the last block's target still fits


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"tokenizer": "words"}, "--tokenizer"),
        ({"tokenizer": "bpe", "vocab_size": 100}, "--vocab-size"),
        ({"eval_iters": 0}, "--eval-iters"),
        ({"block_size": 0}, "--block-size"),
    ],
)
def test_bad_flags_name_themselves(shared_data, kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        text_lm(str(shared_data / "text" / "tinyshakespeare.txt"), **kwargs)


def test_too_short_text_is_a_data_error(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("hello world, " * 5, encoding="utf-8")
    with pytest.raises(DataError, match="too few"):
        text_lm(str(path), block_size=32)
