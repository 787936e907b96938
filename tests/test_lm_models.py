"""The language models' parts against their formulas: sinusoidal positions, the 2017 embedding
scale, the pre-LN and post-LN residual layouts, GPT-2's initialisation, the tied head, dropout
only in training, BERT's head over the real tokens and its embedding LayerNorm, and the
recurrent LM's causality."""

from __future__ import annotations

import math

import pytest
import torch

from mlenv.models import create_model
from mlenv.models.gpt import count_parameters
from mlenv.models.transformer import Block, SinusoidalPositions

SMALL = {"vocab_size": 23, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32}


@pytest.mark.parametrize("n_embd", [6, 5])
def test_sinusoidal_positions_by_hand(n_embd):
    table = SinusoidalPositions(10, n_embd).table  # (L, C)
    for pos in (0, 3, 9):
        for i in range(0, n_embd, 2):
            angle = pos / 10000 ** (i / n_embd)  # PE(pos, 2k) = sin(pos / 10000^(2k/C))
            assert table[pos, i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            if i + 1 < n_embd:
                assert table[pos, i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("variant", ["2017", "2019"])
def test_the_first_block_sees_token_and_position_embeddings(variant):
    model = create_model("gpt", seed=0, variant=variant, **SMALL).eval()
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    idx = torch.tensor([[4, 0, 22, 4, 9]])
    model(idx)
    tokens = model.token_embedding.weight[idx[0]]  # (T, C)
    if variant == "2017":  # Vaswani et al.: embeddings x sqrt(C), plus the fixed sinusoids
        expected = tokens * math.sqrt(32) + model.positions.table[:5]
    else:
        expected = tokens + model.positions.embedding.weight[:5]
    torch.testing.assert_close(seen[0][0], expected)


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_residual_layout(norm_first):
    torch.manual_seed(0)
    block = Block(16, 2, causal=True, norm_first=norm_first, activation="gelu").eval()
    for norm in (block.ln1, block.ln2):  # affine LayerNorms that are not the identity
        torch.nn.init.normal_(norm.weight, 1.0, 0.5)
        torch.nn.init.normal_(norm.bias, 0.0, 0.5)
    x = torch.randn(2, 5, 16) * 2 + 1
    with torch.no_grad():
        if norm_first:  # x + attn(ln1(x)), then + mlp(ln2(.))
            h = x + block.attn(block.ln1(x))
            expected = h + block.mlp(block.ln2(h))
        else:  # ln1(x + attn(x)), then ln2(. + mlp(.))
            h = block.ln1(x + block.attn(x))
            expected = block.ln2(h + block.mlp(h))
        torch.testing.assert_close(block(x), expected)


def test_gpt2_initialisation():
    model = create_model("gpt", seed=0, variant="2020", bias=True, **{**SMALL, "n_embd": 64})
    residual = 0.02 / math.sqrt(2 * 2)  # 1/sqrt(2 n_layer) on the residual projections
    for block in model.blocks:
        assert block.attn.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
        assert block.mlp.proj.weight.std().item() == pytest.approx(residual, rel=0.05)
        assert block.attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.mlp.fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert not block.attn.qkv.bias.any() and not block.mlp.fc.bias.any()
    assert model.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.positions.embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize(("variant", "tied"), [("2020", True), ("2017", False)])
def test_the_tied_head_is_the_token_embedding(variant, tied):
    model = create_model("gpt", seed=0, variant=variant, **SMALL)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    unused_rows = model.token_embedding.weight.grad[1:]  # tokens the input never has
    # tied: every row is an output weight and gets a gradient; untied: only token 0 does
    assert bool(unused_rows.abs().sum(-1).gt(0).all()) == tied
    assert bool(unused_rows.eq(0).all()) != tied


@pytest.mark.parametrize("variant", ["2017", "2019", "2020"])
@pytest.mark.parametrize("bias", [False, True])
def test_closed_form_parameter_count_is_the_models(variant, bias):
    # match_params balances the variants with count_parameters: it must count what is built
    model = create_model("gpt", variant=variant, bias=bias, **SMALL)
    assert count_parameters(model.config) == sum(p.numel() for p in model.parameters())


def test_embedding_dropout_before_the_first_block():
    model = create_model("gpt", seed=0, dropout=0.5, **SMALL).train()
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model(torch.randint(0, 23, (8, 16), generator=torch.Generator().manual_seed(0)))
    dropped = seen[0].eq(0).double().mean().item()  # 8 x 16 x 32 values, half of them dropped
    assert dropped == pytest.approx(0.5, abs=0.03)


def test_dropout_acts_in_training_only():
    model = create_model("gpt", seed=0, dropout=0.3, **SMALL)
    idx = torch.randint(0, 23, (2, 16), generator=torch.Generator().manual_seed(0))
    model.eval()
    assert torch.equal(model(idx), model(idx))
    model.train()
    assert not torch.equal(model(idx), model(idx))


def test_bert_predicts_real_tokens_from_normalised_embeddings():
    model = create_model("bert", seed=0, vocab_size=11, block_size=8, n_layer=1, n_embd=16).eval()
    tokens = torch.tensor([[1, 5, 10, 0, 3]])  # no [MASK] (id 11) in the input
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    logits = model(tokens)
    assert logits.shape == (1, 5, 11)
    # the embeddings' sum is LayerNorm-ed (identity affine at init): mean 0, variance 1 less
    # LayerNorm's eps share (the sum's own variance is ~0.001: 2% short); unnormalised: ~0.001
    torch.testing.assert_close(seen[0].mean(-1), torch.zeros(1, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(seen[0].var(-1, unbiased=False), torch.ones(1, 5), atol=0.05, rtol=0)
    with torch.no_grad():  # the [MASK] row is an input only: it never scores a prediction
        # (not a constant shift: the head's LayerNorm output sums to 0, which would hide it)
        model.token_embedding.weight[11] += torch.linspace(-3.0, 3.0, 16)
    torch.testing.assert_close(model(tokens), logits)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_lm_never_sees_the_future(cell):
    model = create_model("rnn-lm", seed=0, vocab_size=13, cell=cell, layers=2).eval()
    idx = torch.randint(0, 13, (2, 12), generator=torch.Generator().manual_seed(0))
    logits = model(idx)
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 13
    other = model(changed)
    assert torch.equal(other[:, :7], logits[:, :7])
    assert not torch.allclose(other[:, 7], logits[:, 7])
