"""Text for language models: tokenizers (char, byte-level BPE) trained on the training split only
and round-tripping exactly, a contiguous split, and nanoGPT's random-block batches as resumable
epochs."""

from __future__ import annotations

import codecs
import math

import pytest
import torch

from mlenv.data.batching import make_batches
from mlenv.data.text import (
    BPETokenizer,
    CharTokenizer,
    FixedBlocks,
    RandomBlocks,
    char_text,
    read_utf8,
    text_lm,
    tokenizer_from_state,
    unigram_loss,
    windows,
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
    val = FixedBlocks(ids, block_size=8, blocks=12, batch_size=4, seed=3)
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
        ({"tokenizer": "bpe", "vocab_size": 256}, "--vocab-size"),  # 256 bytes + 1 at least
        ({"eval_iters": 0}, "--eval-iters"),
        ({"eval_interval": 0}, "--eval-interval"),
        ({"val_blocks": 0}, "--val-blocks"),
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


def test_block_starts_cover_every_offset_whose_target_fits():
    ids = torch.arange(12)  # blocks of 8 + their target: starts 0 .. 3
    for blocks in (
        RandomBlocks(ids, block_size=8, steps=40, batch_size=4, seed=0),
        FixedBlocks(ids, block_size=8, blocks=160, batch_size=4, seed=0),
    ):
        x, y = (torch.cat(parts) for parts in zip(*blocks, strict=True))
        assert set(x[:, 0].tolist()) == {0, 1, 2, 3}
        assert torch.equal(y, x + 1)  # the target is the input shifted by one


def test_blocks_follow_the_seed():
    ids = torch.arange(1000)

    def starts(cls, seed, **kwargs):
        return torch.cat([x[:, 0] for x, _ in cls(ids, block_size=8, seed=seed, **kwargs)])

    for cls, kwargs in (
        (RandomBlocks, {"steps": 3, "batch_size": 4}),
        (FixedBlocks, {"blocks": 12}),
    ):
        assert torch.equal(starts(cls, 1, **kwargs), starts(cls, 1, **kwargs))
        assert not torch.equal(starts(cls, 1, **kwargs), starts(cls, 2, **kwargs))


def test_fixed_validation_blocks_do_not_depend_on_the_batch_size():
    ids = torch.arange(5000)
    by_size = {}
    for size in (12, 6, 7):  # 7: the last batch holds the remaining 2 of 240
        val = FixedBlocks(ids, block_size=8, blocks=240, batch_size=size, seed=3)
        batches = list(val)
        assert len(batches) == len(val) == math.ceil(240 / size)
        by_size[size] = torch.cat([x for x, _ in batches])
    assert by_size[12].shape == (240, 8)
    assert torch.equal(by_size[12], by_size[6]) and torch.equal(by_size[12], by_size[7])


def test_unigram_loss_by_hand():
    # training counts (2, 1, 0) + 1 = (3, 2, 1) of 6; validation tokens 1 and 2
    loss = unigram_loss(torch.tensor([0, 0, 1]), torch.tensor([1, 2]), vocab_size=3)
    assert loss == pytest.approx((math.log(6 / 2) + math.log(6 / 1)) / 2, abs=1e-12)


def test_char_windows_by_hand():
    x, y = windows(torch.arange(10), 3)  # 3 windows; the 10th token is the last target
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert torch.equal(y, x + 1)
    x, y = windows(torch.arange(8), 4)  # 8 tokens make one window of 4 (+ its target), not two
    assert x.tolist() == [[0, 1, 2, 3]] and y.tolist() == [[1, 2, 3, 4]]


def test_a_byte_order_mark_is_not_text(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(codecs.BOM_UTF8 + b"ab\nba\n" * 20)
    text, _ = read_utf8(path, "--path")
    assert text.startswith("ab\n")
    assert char_text(str(path), block_size=4).info["vocab_size"] == 3  # a, b, newline


def test_no_unknown_token_when_validation_has_no_new_characters(shared_data):
    path = shared_data / "text" / "tinyshakespeare.txt"
    bundle = text_lm(str(path), "char", block_size=16, max_chars=20_000)
    tok = tokenizer_from_state(bundle.state["tokenizer"])
    train_text = path.read_text(encoding="utf-8")[:18_000]
    assert tok.chars == sorted(set(train_text))  # 58 characters, no U+FFFD
    assert bundle.info["vocab_size"] == 58
