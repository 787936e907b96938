"""`mlenv generate`: text from a trained language model, printed as the tokens come.

    mlenv generate --weights runs/gpt-char/<id> --prompt "ROMEO:" --max-new-tokens 200 \\
        --temperature 0.8 --top-k 40 --seed 1

The run is loaded through ``load_run`` (configuration, weights, and the tokenizer the run saved
in its checkpoints); a GPT samples with its key/value cache unless ``--no-cache``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from mlenv.commandline import OneLineParser
from mlenv.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mlenv generate",
        description="Text from a trained language model (a run of gpt-char, or any text-lm "
        "recipe with a GPT), printed as the tokens come.",
        allow_abbrev=False,
    )
    parser.add_argument("--weights", required=True, help="a run folder or a checkpoint file")
    parser.add_argument("--prompt", required=True, help="the text to continue (not empty)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate")
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="softmax temperature; 0: greedy"
    )
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest")
    parser.add_argument(
        "--top-p", type=float, default=None, help="sample in the smallest set of mass >= p"
    )
    parser.add_argument("--seed", type=int, default=0, help="the sampling seed")
    parser.add_argument(
        "--no-cache", action="store_true", help="recompute the whole context every token"
    )
    return parser


def check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None
) -> None:
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: accepts an integer >= 1, got {max_new_tokens}")
    if not temperature >= 0:
        raise ConfigError(f"--temperature: accepts a number >= 0 (0: greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k: accepts an integer >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"--top-p: accepts a probability in (0, 1], got {top_p}")


def encode_prompt(tokenizer: Any, prompt: str) -> Any:
    """The prompt's ids (1, T). A character the run's character tokenizer never saw is a
    one-line error naming it, also when the vocabulary holds U+FFFD (the stand-in for
    characters only the validation text has): a prompt is never silently changed.

    >>> from mlenv.data.text import CharTokenizer
    >>> encode_prompt(CharTokenizer(list("abc")), "cab")
    tensor([[2, 0, 1]])
    """
    unknown = tokenizer.unknown(prompt) if hasattr(tokenizer, "unknown") else set()
    if unknown:
        shown = "".join(sorted(unknown))
        raise ConfigError(
            f"--prompt: {len(unknown)} character(s) the run's tokenizer never saw in its "
            f"training text: {shown!r} (its vocabulary: {tokenizer.vocab_size} characters)"
        )
    return tokenizer.encode(prompt)[None, :]


def generate_text(
    weights: str,
    prompt: str,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Continue ``prompt`` with the run's model; with ``out`` the text is written there as it
    comes. Returns ``{"text", "new_tokens", "seconds", "tokens_per_s"}``.

    >>> generate_text("runs/gpt-char/<id>", "ROMEO:", 100, seed=1)["text"]  # doctest: +SKIP
    """
    import torch

    from mlenv.data.text import tokenizer_from_state
    from mlenv.train.run import load_run

    check_sampling(max_new_tokens, temperature, top_k, top_p)
    if not prompt:
        raise ConfigError("--prompt: give at least one character of text to continue")
    loaded = load_run(weights, prog="mlenv generate")
    model = loaded.model
    state = loaded.preprocessing.get("tokenizer")
    if state is None or not hasattr(model, "generate"):
        raise ConfigError(
            f"--weights: {loaded.checkpoint_path} is not a GPT trained on text "
            "(a text-lm recipe such as gpt-char)"
        )
    tokenizer = tokenizer_from_state(state)
    ids = encode_prompt(tokenizer, prompt)  # (1, T)
    generator = torch.Generator().manual_seed(seed)
    new: list[int] = []
    shown = ""
    if out is not None:
        out.write(prompt)
        out.flush()
    start = time.perf_counter()
    steps = model.generate(
        ids, max_new_tokens, temperature, top_k, top_p, use_cache=use_cache, generator=generator
    )
    for token in steps:
        new.append(int(token[0]))
        text = tokenizer.decode(new)
        # byte-level BPE: a token may end inside a character; print once it is whole
        if out is not None and not text.endswith("\ufffd") and len(text) > len(shown):
            out.write(text[len(shown) :])
            out.flush()
            shown = text
    seconds = time.perf_counter() - start
    text = tokenizer.decode(new)
    if out is not None:
        out.write(text[len(shown) :] + "\n")
        out.flush()
    return {
        "text": prompt + text,
        "new_tokens": len(new),
        "seconds": seconds,
        "tokens_per_s": len(new) / seconds if seconds > 0 else float("inf"),
    }


def cmd_generate(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    result = generate_text(
        args.weights,
        args.prompt,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
        use_cache=not args.no_cache,
        out=sys.stdout,
    )
    print(
        f"({result['new_tokens']} tokens in {result['seconds']:.2f} s: "
        f"{result['tokens_per_s']:.0f} tokens/s)",
        file=sys.stderr,
    )
    return 0
