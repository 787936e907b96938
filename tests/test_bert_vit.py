"""BERT with masked-LM training, the tiny ViT and the GRU option of rnn-lm.

Masking: BERT's rates (15% chosen; of those 80% [MASK], 10% a random token, 10% unchanged) are
checked over 400,000 tokens with binomial tolerances of 4.5 standard deviations, and the loss
counts the chosen positions only. BERT is bidirectional (a later token changes an earlier
position's output), the ViT uses where each patch is (its learned positions), and BERT, the ViT
and the GRU language model each overfit one batch of real data.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlenv.data.text import CharVocab
from mlenv.errors import ConfigError
from mlenv.models import create_model
from mlenv.train.tasks import TASKS
from mlenv.train.tasks_mlm import IGNORE, MaskedLMTask, mask_tokens, masked_cross_entropy

SIGMAS = 4.5  # binomial tolerance: a correct implementation fails about once in 150,000 runs


def within_binomial(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= SIGMAS * math.sqrt(n * p * (1 - p))


@pytest.fixture(scope="module")
def shakespeare(shared_data):
    text = (shared_data / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    vocab = CharVocab(text)
    return vocab, vocab.encode(text[:20_000])


def windows_of(ids: torch.Tensor, n: int, length: int) -> torch.Tensor:
    return ids[: n * length].view(n, length)  # (n, length)


# ---------------------------------------------------------------- masking


def test_mask_tokens_has_berts_rates():
    vocab_size, mask_id = 5, 5  # a small vocabulary: a random token equals the original 1/5 times
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(vocab_size, (400, 1000), generator=g)  # 400,000 tokens
    inputs, targets = mask_tokens(tokens, vocab_size, mask_id, 0.15, generator=g)
    chosen = targets != IGNORE
    n, n_chosen = tokens.numel(), int(chosen.sum())
    assert within_binomial(n_chosen, n, 0.15), n_chosen / n
    # targets: the original token where chosen; the inputs are untouched elsewhere
    assert torch.equal(targets[chosen], tokens[chosen])
    assert torch.equal(inputs[~chosen], tokens[~chosen])
    masked = inputs[chosen] == mask_id
    unchanged = inputs[chosen] == tokens[chosen]
    replaced = ~masked & ~unchanged
    assert within_binomial(int(masked.sum()), n_chosen, 0.8), masked.float().mean()
    # a random token is the original one with probability 1/V, so "unchanged" is 0.1 + 0.1/V
    p_replaced = 0.1 * (vocab_size - 1) / vocab_size
    assert within_binomial(int(replaced.sum()), n_chosen, p_replaced), replaced.float().mean()
    assert within_binomial(int(unchanged.sum()), n_chosen, 1 - 0.8 - p_replaced)
    # random replacements are real tokens, spread evenly over the vocabulary
    random_tokens = inputs[chosen][replaced]
    assert int(random_tokens.max()) < vocab_size
    counts = torch.bincount(random_tokens, minlength=vocab_size)
    assert all(within_binomial(int(c), len(random_tokens), 1 / vocab_size) for c in counts)


def test_mask_rate_option_sets_the_share_chosen():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(50, (200, 1000), generator=g)
    _, targets = mask_tokens(tokens, 50, 50, 0.4, generator=g)
    assert within_binomial(int((targets != IGNORE).sum()), tokens.numel(), 0.4)


def test_masked_loss_counts_only_chosen_positions():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 10, 7, generator=g)
    tokens = torch.randint(7, (3, 10), generator=g)
    chosen = torch.zeros(3, 10, dtype=torch.bool)
    chosen[0, 1] = chosen[1, 4] = chosen[2, 9] = True
    targets = tokens.masked_fill(~chosen, IGNORE)
    # by hand: the mean of -log p(target) over the three chosen positions
    log_p = logits.log_softmax(dim=-1)
    expected = -(log_p[0, 1, tokens[0, 1]] + log_p[1, 4, tokens[1, 4]] + log_p[2, 9, tokens[2, 9]])
    assert masked_cross_entropy(logits, targets).item() == pytest.approx(expected.item() / 3)
    # what the model says where nothing was chosen does not move the loss
    changed = logits.clone()
    changed[~chosen] = torch.randn(int((~chosen).sum()), 7, generator=g) * 10
    assert masked_cross_entropy(changed, targets).item() == pytest.approx(expected.item() / 3)
    # a batch with nothing chosen gives 0, not NaN
    assert masked_cross_entropy(logits, torch.full_like(tokens, IGNORE)).item() == 0.0


def test_masked_lm_task_corrupts_the_input_and_scores_the_chosen_tokens(shakespeare):
    vocab, ids = shakespeare
    model = create_model("bert", seed=0, vocab_size=len(vocab), block_size=32, n_layer=1, n_embd=32)
    task = TASKS.create("masked-lm")
    criterion = task.get_criterion(model)
    tokens = windows_of(ids, 8, 32)
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    torch.manual_seed(3)
    loss, predictions = task.forward_pass(model, (tokens, tokens), criterion)
    torch.manual_seed(3)  # the same draws: the task masks with mask_tokens at its mask_rate
    inputs, targets = mask_tokens(tokens, len(vocab), model.mask_id, 0.15)
    assert torch.equal(seen[0], inputs) and torch.equal(predictions.targets, targets)
    assert (seen[0] == model.mask_id).any()  # the model saw [MASK] tokens
    chosen = targets != IGNORE
    by_hand = F.cross_entropy(model(inputs)[chosen], tokens[chosen])
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    right = (predictions.logits.argmax(-1) == tokens) & chosen
    acc = task.batch_metrics(predictions, (tokens, tokens))["acc"]
    assert acc.item() == pytest.approx(right.sum().item() / chosen.sum().item())


def test_masked_lm_evaluation_masks_depend_on_the_batch_alone(shakespeare):
    vocab, ids = shakespeare
    model = create_model("bert", seed=0, vocab_size=len(vocab), block_size=32, n_layer=1).eval()
    task = TASKS.create("masked-lm")
    criterion = task.get_criterion(model)
    tokens, other = windows_of(ids, 8, 32), windows_of(ids[256:], 8, 32)
    rng = torch.get_rng_state()
    with torch.no_grad():
        first, again = (task.forward_pass(model, (tokens,), criterion) for _ in range(2))
        elsewhere = task.forward_pass(model, (other,), criterion)
    assert torch.equal(torch.get_rng_state(), rng)  # the training's random stream is untouched
    assert torch.equal(first[1].targets, again[1].targets) and first[0] == again[0]
    assert not torch.equal(first[1].targets != IGNORE, elsewhere[1].targets != IGNORE)
    chosen = (first[1].targets != IGNORE).float().mean().item()
    assert 0.05 < chosen < 0.3  # still BERT's masking (15% of 256 tokens)


def test_masked_lm_epoch_means_are_over_all_masked_tokens(shakespeare):
    """val_loss and val_acc of a pass in batches of 3, 3 and 1 windows are the means over every
    masked token of the split (a batch counts as many as it has, not as many rows)."""
    from mlenv.train.tasks_mlm import evaluation_masks
    from mlenv.train.trainer import Trainer

    vocab, ids = shakespeare
    model = create_model("bert", seed=0, vocab_size=len(vocab), block_size=32, n_layer=1, n_embd=16)
    tokens = windows_of(ids, 7, 32)
    trainer = Trainer(model=model, task=MaskedLMTask(), batch_size=3, threads=1, progress=False)
    got = trainer.evaluate((tokens,))
    # evaluation masks are drawn row by row: the whole split's at once are the batches' masks
    inputs, targets = evaluation_masks(tokens, len(vocab), model.mask_id, 0.15)
    chosen = targets != IGNORE
    with torch.no_grad():
        logits = model.eval()(inputs)[chosen]  # (masked tokens, V)
    by_row = chosen.sum(dim=1)
    assert by_row[:6].sum() / 6 != by_row[6]  # the last batch's tokens are not its rows' share
    assert got["test_loss"] == pytest.approx(F.cross_entropy(logits, tokens[chosen]).item(), 1e-5)
    right = (logits.argmax(-1) == tokens[chosen]).float().mean().item()
    assert got["test_acc"] == pytest.approx(right, rel=1e-6)

    class FixedMasks(MaskedLMTask):  # training masked as evaluation is: the same tokens
        def masks(self, tokens, training):
            return super().masks(tokens, training=False)

    # the training epoch's means too (a step of lr 1e-12 leaves the weights as they are)
    trainer = Trainer(
        model=model,
        task=FixedMasks(),
        batch_size=3,
        lr=1e-12,
        optimizer="sgd",
        epochs=1,
        threads=1,
        progress=False,
    )
    trainer.fit((tokens,))
    (row,) = trainer.history
    assert row["train_loss"] == pytest.approx(got["test_loss"], rel=1e-5)
    assert row["train_acc"] == pytest.approx(right, rel=1e-6)


def test_masked_lm_refuses_a_model_without_a_mask_token_and_a_bad_rate():
    with pytest.raises(ConfigError, match="no \\[MASK\\] token"):
        TASKS.create("masked-lm").get_criterion(create_model("rnn-lm", vocab_size=5))
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="--mask_rate: accepts a fraction in \\(0, 1\\)"):
            MaskedLMTask(mask_rate=bad)


# ---------------------------------------------------------------- BERT


def test_bert_is_bidirectional():
    model = create_model("bert", seed=0, vocab_size=11, block_size=16, n_layer=2, n_embd=32).eval()
    tokens = torch.randint(11, (1, 16), generator=torch.Generator().manual_seed(0))
    later = tokens.clone()
    later[0, -1] = (later[0, -1] + 1) % 11  # change only the last token
    with torch.no_grad():
        before, after = model(tokens), model(later)
    # the first position's output depends on the last token (a causal model's could not)
    assert not torch.allclose(before[0, 0], after[0, 0], atol=1e-5)


def test_bert_refuses_windows_longer_than_its_positions():
    model = create_model("bert", vocab_size=11, block_size=8, n_layer=1, n_embd=16)
    with pytest.raises(
        ConfigError, match="bert: a window of 9 tokens is longer than its 8 positions"
    ):
        model(torch.zeros(1, 9, dtype=torch.long))


def overfit(model: nn.Module, loss_of, steps: int, lr: float) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = loss_of()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


def test_bert_overfits_one_batch_of_text(shakespeare):
    vocab, ids = shakespeare
    torch.manual_seed(0)
    model = create_model("bert", seed=0, vocab_size=len(vocab), block_size=32, n_layer=2, n_embd=64)
    task = MaskedLMTask()
    criterion = task.get_criterion(model)
    tokens = windows_of(ids, 4, 32)  # 128 characters of Shakespeare, masked afresh each step
    overfit(model, lambda: task.forward_pass(model, (tokens,), criterion)[0], 200, 3e-3)
    # scored on 10 fresh maskings of the batch: what the model fills in from the context
    g = torch.Generator().manual_seed(5)
    model.eval()
    with torch.no_grad():
        scores = [
            masked_cross_entropy(model(inputs), targets).item()
            for inputs, targets in (
                mask_tokens(tokens, len(vocab), model.mask_id, generator=g) for _ in range(10)
            )
        ]
    # a context-free guess can do no better than the batch's own character entropy
    counts = torch.bincount(tokens.flatten()).float()
    p = counts[counts > 0] / counts.sum()
    unigram = -(p * p.log()).sum().item()  # 2.9 nats
    assert sum(scores) / 10 < 1.0 < unigram, (scores, unigram)  # measured 0.44


# ---------------------------------------------------------------- ViT


def test_vit_shapes_and_patches():
    model = create_model("vit", seed=0, patch_size=4, n_embd=32, n_head=4, n_layer=1)
    assert model.n_patches == 49 and model.positions.shape == (1, 50, 32)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    model = create_model("vit", in_channels=3, image_size=32, out_features=5, patch_size=8)
    assert model.n_patches == 16 and model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ConfigError, match="--patch-size: must divide the image size \\(28\\)"):
        create_model("vit", patch_size=5)


def test_vit_knows_where_each_patch_is():
    model = create_model("vit", seed=0, patch_size=7).eval()
    images = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    # swap the top-left and bottom-right 7x7 patches: the same patches, in other places
    swapped = images.clone()
    swapped[..., :7, :7], swapped[..., 21:, 21:] = images[..., 21:, 21:], images[..., :7, :7]
    with torch.no_grad():
        # without learned positions the class token would see the same set of patch tokens
        assert not torch.allclose(model(images), model(swapped), atol=1e-5)


def test_vit_classifies_from_the_class_token():
    model = create_model("vit", seed=0, patch_size=7, n_layer=2).eval()
    states = []
    model.blocks[-1].register_forward_hook(lambda _m, _i, out: states.append(out))
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
        # the last block's output at position 0, the class token, and nothing else
        assert torch.equal(logits, model.head(model.final_ln(states[0][:, 0])))


def test_vit_overfits_one_batch_of_digits(mnist_root):
    from mlenv.data.vision import load_mnist_uint8, scale_images

    images, labels = load_mnist_uint8(mnist_root, "test")
    x, y = scale_images(images[:64], "unit").unsqueeze(1), labels[:64]  # (64, 1, 28, 28)
    model = create_model("vit", seed=0, patch_size=7, n_embd=64, n_layer=1)
    final = overfit(model, lambda: F.cross_entropy(model(x), y), 100, 3e-3)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert final < 0.05 and accuracy == 1.0, (final, accuracy)


# ---------------------------------------------------------------- GRU language model


def test_rnn_lm_cell_option():
    lstm = create_model("rnn-lm", vocab_size=20, embed=8, hidden=16)
    gru = create_model("rnn-lm", vocab_size=20, embed=8, hidden=16, cell="gru")
    assert isinstance(lstm.rnn, nn.LSTM) and isinstance(gru.rnn, nn.GRU)  # LSTM stays default
    # the GRU has three gates' weights where the LSTM has four
    assert gru.rnn.weight_hh_l0.shape == (3 * 16, 16) and lstm.rnn.weight_hh_l0.shape == (64, 16)
    with pytest.raises(ConfigError, match="--cell: accepts lstm or gru, got 'rnn'"):
        create_model("rnn-lm", vocab_size=20, cell="rnn")


def test_gru_lm_overfits_one_batch_of_text(shakespeare):
    vocab, ids = shakespeare
    tokens = windows_of(ids, 8, 33)  # (8, 33): inputs and next-character targets
    x, y = tokens[:, :-1], tokens[:, 1:]
    model = create_model("rnn-lm", seed=0, vocab_size=len(vocab), hidden=128, cell="gru")
    final = overfit(
        model, lambda: F.cross_entropy(model(x).reshape(-1, len(vocab)), y.reshape(-1)), 150, 1e-2
    )
    assert final < 0.1, final  # 256 next characters memorised (uniform: 4.17 nats)


# ---------------------------------------------------------------- recipes


def built(recipe: str, argv: list[str]):
    from mlenv.config import load_recipe, resolve
    from mlenv.train.run import build

    return build(resolve(load_recipe(recipe), argv))


def test_lstm_char_has_gpt_chars_parameter_count():
    from mlenv.config import load_recipe, resolve
    from mlenv.train.run import build_model

    def parameters(recipe: str) -> int:
        cfg = resolve(load_recipe(recipe), ["--path", "tinyshakespeare.txt"])
        model = build_model(cfg, {"vocab_size": 65, "block_size": 64})  # as text-lm gives them
        return sum(p.numel() for p in model.parameters())

    counts = {recipe: parameters(recipe) for recipe in ("gpt-char", "lstm-char")}
    assert counts["gpt-char"] == pytest.approx(counts["lstm-char"], rel=0.01), counts


def test_char_bert_and_mnist_vit_recipes_build(shared_data, mnist_root):
    text = ["--path", str(shared_data / "text" / "tinyshakespeare.txt"), "--max-chars", "20000"]
    bundle, model, task = built("char-bert", text)
    assert isinstance(task, MaskedLMTask) and model.block_size == 64  # from the data
    assert model.vocab_size == bundle.model_kwargs["vocab_size"]
    _, model, _ = built("mnist-vit", ["--root", str(mnist_root), "--limit", "600"])
    assert model.n_patches == 16 and model.dim == 10  # 28x28 digits in 7x7 patches, 10 classes
