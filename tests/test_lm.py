"""The char-LM recipe learns from context: its validation loss on Tiny Shakespeare falls below what
any model without recurrence can reach.

A model that sees one character at a time (a per-position MLP, or the same LSTM cut to sequences of
length 1) is a bigram model: on this slice it stays at 2.39-2.51 nats however it is trained (3
epochs at lr 5e-3: 2.387 and 2.390; 6 epochs on twice the text at lr 1e-2: 2.507). The recipe's
LSTM reaches 1.871-1.876 with seeds 0-2 in about 8 s on one core. The threshold sits between them,
near the real value.
"""

from __future__ import annotations

import json
import math

from mlenv.cli import main

VAL_LOSS_THRESHOLD = 2.0  # nats; measured 1.871 (seed 0), a model without recurrence 2.387+


def test_char_lm_uses_context_below_what_a_bigram_model_reaches(shared_data, tmp_path):
    runs = tmp_path / "runs"
    argv = [
        "train",
        "char-lm",
        "--path",
        str(shared_data / "text" / "tinyshakespeare.txt"),
        "--max-chars",
        "100000",  # 1,406 training windows of 64 characters
        "--epochs",
        "3",
        "--lr",
        "5e-3",
        "--seed",
        "0",
        "--runs-dir",
        str(runs),
        "--progress",
        "false",
    ]
    assert main(argv) == 0
    (summary_file,) = runs.glob("char-lm/*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["data"]["vocab_size"] == 65
    uniform = math.log(65)  # 4.17 nats: the model starts near here
    assert summary["val_loss"] <= VAL_LOSS_THRESHOLD < uniform, summary["val_loss"]
