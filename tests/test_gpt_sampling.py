"""Sampling from a GPT: temperature, top-k and top-p on a distribution computed by hand, the
frequencies a seeded generator draws, the sampling flags' bounds, generation past the block
size (the cache's restart window, nanoGPT's crop without it), and a prompt with characters
the tokenizer never saw.

The logits [2, 1, 0, -1] give, by hand:
- temperature 1: e^(2, 1, 0, -1) / 11.4752 = (0.6439, 0.2369, 0.0871, 0.0321);
- temperature 0.5: e^(4, 2, 0, -2) / 63.1225 = (0.8650, 0.1171, 0.0158, 0.0021);
- top-k 2: tokens {0, 1}, renormalised (1, e^-1) / (1 + e^-1) = (0.7311, 0.2689);
- top-p 0.8 at temperature 1: 0.6439 < 0.8 <= 0.6439 + 0.2369, so {0, 1} as top-k 2;
  at temperature 0.5 token 0 alone holds 0.8650 >= 0.8: {0}. Applying the temperature after
  the filter would keep {0, 1} there (0.8808, 0.1192).
"""

from __future__ import annotations

import math

import pytest
import torch

from mlenv.data.text import CharTokenizer
from mlenv.errors import ConfigError
from mlenv.generate import check_sampling, encode_prompt
from mlenv.models import create_model
from mlenv.models.gpt import next_token_probs, sample_next

LOGITS = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
E = math.e


def normalised(*weights: float, zeros: int = 0) -> list[float]:
    """The weights divided by their sum, then ``zeros`` tokens of probability 0."""
    total = sum(weights)
    return [w / total for w in weights] + [0.0] * zeros


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, normalised(E**2, E, 1, E**-1)),
        ({"temperature": 0.5}, normalised(E**4, E**2, 1, E**-2)),
        ({"temperature": 2.0}, normalised(E, E**0.5, 1, E**-0.5)),
        ({"top_k": 2}, normalised(1, E**-1, zeros=2)),
        ({"top_k": 3, "temperature": 0.5}, normalised(E**4, E**2, 1, zeros=1)),
        ({"top_p": 0.8}, normalised(1, E**-1, zeros=2)),
        ({"top_p": 0.9}, normalised(E**2, E, 1, zeros=1)),  # 0.8808 < 0.9 <= 0.9679
        ({"top_p": 0.8, "temperature": 0.5}, [1.0, 0, 0, 0]),  # temperature first: 0.865 >= 0.8
        ({"top_p": 0.95, "temperature": 0.5}, normalised(E**4, E**2, zeros=2)),
        ({"top_k": 4, "top_p": 1.0}, normalised(E**2, E, 1, E**-1)),  # neither restricts
    ],
)
def test_next_token_probs_by_hand(kwargs, expected):
    probs = next_token_probs(LOGITS, **kwargs)
    torch.testing.assert_close(probs, torch.tensor([expected]), atol=1e-6, rtol=0)
    # the same logits in another order: the same probabilities, following their tokens
    order = torch.tensor([2, 0, 3, 1])
    shuffled = next_token_probs(LOGITS[:, order], **kwargs)
    torch.testing.assert_close(shuffled, torch.tensor([expected])[:, order], atol=1e-6, rtol=0)


def test_top_p_stops_at_the_token_whose_mass_reaches_p():
    # four equal tokens (exactly 0.25 each): two of them reach p = 0.5, a third is not needed
    probs = next_token_probs(torch.zeros(1, 4), top_p=0.5)
    assert sorted(probs[0].tolist()) == [0.0, 0.0, 0.5, 0.5]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"temperature": 2.0, "top_k": 3}, normalised(E, E**0.5, 1, zeros=1)),
        ({"top_p": 0.9}, normalised(E**2, E, 1, zeros=1)),
        ({"temperature": 0.5, "top_p": 0.8}, [1.0, 0, 0, 0]),
    ],
)
def test_sampled_frequencies_follow_the_distribution(kwargs, expected):
    n = 20_000
    g = torch.Generator().manual_seed(0)
    tokens = sample_next(LOGITS.expand(n, 4), generator=g, **kwargs)
    counts = torch.bincount(tokens, minlength=4).double() / n
    for p, freq in zip(expected, counts.tolist(), strict=True):
        sd = math.sqrt(p * (1 - p) / n)  # binomial: at most 0.0035 here
        assert abs(freq - p) <= 4.5 * sd + 1e-12, (kwargs, counts.tolist(), expected)


def test_greedy_and_seeded_sampling():
    assert sample_next(LOGITS[:, [3, 1, 0, 2]], temperature=0).tolist() == [2]
    draws = [
        sample_next(LOGITS.expand(50, 4), generator=torch.Generator().manual_seed(s))
        for s in (5, 5, 6)
    ]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        ((0, 1.0, None, None), "--max-new-tokens"),
        ((1, -0.1, None, None), "--temperature"),
        ((1, 1.0, 0, None), "--top-k"),
        ((1, 1.0, None, 0.0), "--top-p"),
        ((1, 1.0, None, 1.01), "--top-p"),
    ],
)
def test_sampling_flags_out_of_range_name_themselves(args, flag):
    with pytest.raises(ConfigError, match=flag):
        check_sampling(*args)


def test_sampling_flags_at_their_bounds_are_accepted():
    check_sampling(1, 0.0, 1, 1.0)  # one token, greedy, top-k 1, top-p 1: all valid


@pytest.mark.parametrize("vocabulary", ["abc ", "abc \ufffd"])
def test_prompt_with_unseen_characters_is_one_error_whatever_the_vocabulary(vocabulary):
    # with U+FFFD in the vocabulary (characters only the validation text had) the prompt was
    # silently changed before; without it a different error came from the tokenizer
    tokenizer = CharTokenizer(sorted(vocabulary))
    with pytest.raises(ConfigError) as error:
        encode_prompt(tokenizer, "a Zéb")
    message = str(error.value)
    assert message == (
        "--prompt: 2 character(s) the run's tokenizer never saw in its training text: 'Zé' "
        f"(its vocabulary: {len(vocabulary)} characters)"
    )
    assert encode_prompt(tokenizer, "cab").tolist() == [[3, 1, 2]]  # known characters encode


def windows_of_the_cache(prompt: int, steps: int, block: int) -> list[int]:
    """The context length the cached model sees at each step, as the docs say: the prompt's
    last block, then one more per token until it would pass the block, then the last half."""
    lengths, w = [], min(prompt, block)
    for _ in range(steps):
        lengths.append(w)
        w = block // 2 if w + 1 > block else w + 1
    return lengths


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_past_the_block_size(use_cache):
    block = 16
    model = create_model(
        "gpt", seed=0, vocab_size=23, block_size=block, n_layer=2, n_head=2, n_embd=32
    ).eval()
    with torch.no_grad():  # large weights: a greedy choice that any change of context moves
        for p in model.parameters():
            p.mul_(30)
    prompt = torch.randint(0, 23, (2, 5), generator=torch.Generator().manual_seed(4))
    steps = 3 * block
    tokens = list(model.generate(prompt, steps, temperature=0, use_cache=use_cache))
    assert len(tokens) == steps
    # greedy by hand: nanoGPT's crop to the last block without the cache, the restart window
    # with it; both equal up to the block size
    lengths = windows_of_the_cache(5, steps, block) if use_cache else [block] * steps
    context = prompt
    with torch.no_grad():
        for length, token in zip(lengths, tokens, strict=True):
            expected = model(context[:, -length:])[:, -1].argmax(-1)
            assert torch.equal(token, expected), length
            context = torch.cat([context, token[:, None]], dim=1)
