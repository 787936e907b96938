"""How the character language models are measured: every recipe of the variant comparison on
the same validation blocks and nanoGPT's schedule, and nanoGPT's validation estimate
(``--eval-iters N``: N random batches drawn anew at every evaluation from a documented seed,
the mean of their losses), with its one-line errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlenv.cli import main
from mlenv.config import TrainConfig, load_recipe, resolve
from mlenv.data.batching import make_batches
from mlenv.data.text import text_lm
from mlenv.models import create_model
from mlenv.train.run import build_data
from mlenv.train.tasks import LanguageModelTask
from mlenv.train.trainer import Trainer

COMPARED = ("gpt-char", "gpt-char-2017", "gpt-char-2019", "lstm-char")


@pytest.fixture(scope="module")
def shakespeare(shared_data):
    return str(shared_data / "text" / "tinyshakespeare.txt")


def recipe_config(name, path, *argv):
    return resolve(load_recipe(name), ["--path", path, *argv])


def test_every_compared_recipe_is_measured_on_the_same_validation_blocks(shakespeare):
    # gpt-char-2019 steps on 2 batches of 6: with "eval_iters: 20" it validated 120 blocks
    # where the others validated 240
    blocks = {}
    for name in COMPARED:
        cfg = recipe_config(name, shakespeare, "--max-chars", "30000")
        val = make_batches(build_data(cfg).val, cfg.train.batch_size, False, cfg.train.seed)
        blocks[name] = torch.cat([x for x, _ in val])
    assert blocks["gpt-char"].shape == (240, 64)
    for name in COMPARED[1:]:
        assert torch.equal(blocks[name], blocks["gpt-char"]), name


def test_every_compared_recipe_trains_nanogpts_steps_and_evaluates_at_the_same_ones(shakespeare):
    for name in COMPARED:
        cfg = recipe_config(name, shakespeare)
        train, data = cfg.train, cfg.data
        assert train.batch_size * train.accumulate == 12 and data["block_size"] == 64, name
        assert train.epochs * data["eval_interval"] == 2000 * train.accumulate, name  # steps
        assert data["eval_interval"] == 250 * train.accumulate, name  # every 250 steps
        assert data["eval_iters"] is None and data["val_blocks"] == 240, name
        assert (train.lr, train.warmup_steps, train.grad_clip) == (1e-3, 100, 1.0), name


def test_gpt_char_is_nanogpts_shakespeare_char_configuration(shakespeare):
    # nanoGPT's README CPU run of config/train_shakespeare_char.py: n_layer 4, n_head 4,
    # n_embd 128, block 64, batch 12, dropout 0, max_iters 2000, lr 1e-3 decayed to 1e-4,
    # warmup 100, beta2 0.99 (beta1 0.9, weight decay 0.1, grad_clip 1.0: train.py's defaults)
    cfg = recipe_config("gpt-char", shakespeare)
    t = cfg.train
    assert cfg.model_args == {
        "variant": "2020",
        "n_layer": 4,
        "n_head": 4,
        "n_embd": 128,
        "dropout": 0.0,
        "bias": False,
        "match_params": True,
    }
    assert (t.optimizer, t.beta1, t.beta2, t.weight_decay, t.wd_skip_bias_norm) == (
        "adamw",
        0.9,
        0.99,
        0.1,
        True,
    )
    assert (t.scheduler, t.min_lr, t.batch_size, t.epochs) == ("cosine", 1e-4, 12, 8)
    # lstm-char trains as gpt-char: every training field but the weight-decay rule
    lstm = recipe_config("lstm-char", shakespeare).train.to_dict()
    differ = {k for k, v in t.to_dict().items() if lstm[k] != v}
    assert differ == {"wd_skip_bias_norm"}


def test_eval_iters_draws_new_batches_from_the_documented_seed(shakespeare):
    bundle = text_lm(shakespeare, "char", block_size=16, max_chars=20_000, eval_iters=3, seed=5)
    val = make_batches(bundle.val, 4, shuffle=False, seed=5)
    high = len(bundle.val.ids) - 16  # the last start whose target fits
    drawn = {}
    for evaluation in (0, 1, 7, 1):
        val.set_epoch(evaluation)
        x, y = (torch.stack(parts) for parts in zip(*val, strict=True))  # (3, 4, 16) each
        # the docs: evaluation e draws from torch.Generator().manual_seed(seed*1_000_003+104_729+e)
        g = torch.Generator().manual_seed(5 * 1_000_003 + 104_729 + evaluation)
        starts = torch.randint(high, (3, 4), generator=g)
        assert torch.equal(x, bundle.val.ids[starts[..., None] + torch.arange(16)])
        assert torch.equal(y, bundle.val.ids[starts[..., None] + torch.arange(1, 17)])
        drawn[evaluation] = x
    assert not torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[1], drawn[7])


def test_eval_iters_loss_is_the_mean_of_the_batch_losses(shakespeare):
    bundle = text_lm(shakespeare, "char", block_size=16, max_chars=20_000, eval_iters=3)
    vocab = bundle.info["vocab_size"]
    model = create_model("gpt", seed=0, vocab_size=vocab, block_size=16, n_layer=1, n_embd=16)
    config = TrainConfig(batch_size=4, threads=1, progress=False)
    trainer = Trainer(config, model, task=LanguageModelTask())
    bundle.val.set_epoch(2)
    metrics = trainer.evaluate(bundle.val, prefix="val")
    with torch.no_grad():  # nanoGPT's estimate_loss: the mean over eval_iters batch losses
        losses = [F.cross_entropy(model(x).flatten(0, 1), y.flatten()) for x, y in bundle.val]
    assert len(losses) == 3
    assert metrics["val_nll"] == pytest.approx(float(sum(losses) / 3), abs=1e-5)


@pytest.mark.parametrize(
    ("recipe", "value", "message"),
    [
        (
            "char-lm",
            "20",
            "--eval-iters: a flag of the text-lm data set; recipe char-lm reads char-text, "
            "which cannot apply it",
        ),
        ("gpt-char", "0", "--eval-iters: accepts an integer >= 1 (nanoGPT's random"),
        ("gpt-char", "2.5", "--eval-iters: accepts an integer or null, got '2.5'"),
    ],
)
def test_eval_iters_errors_are_one_line(recipe, value, message, shakespeare, tmp_path, capsys):
    argv = ["train", recipe, "--path", shakespeare, "--eval-iters", value]
    assert main([*argv, "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not any(tmp_path.iterdir())  # refused before a run folder was made
