"""mlenv's GPT (2020 variant, recipe gpt-char) against a faithful re-writing of nanoGPT's
Shakespeare-char training loop, in one process, on the same data, split and thread count.

nanoGPT's CPU configuration: n_layer 4, n_head 4, n_embd 128, block_size 64, batch_size 12,
AdamW (0.9, 0.99), weight decay 0.1 on matrices only, lr 1e-3 with 100 warmup iterations and a
cosine to 1e-4 at 2000, grad_clip 1.0, dropout 0, 2000 iterations, eval_iters 20.

The reference below is written here in nanoGPT's shape (model with targets -> (logits, loss),
``get_batch`` stacking numpy slices, the lr set every iteration, clip, step, zero_grad), not
imported. What is measured:

1. ms per training iteration, alternating blocks of ``--block-iters`` iterations (reference,
   mlenv, reference, ...), median ratio; with ``--compile`` the same with torch.compile;
2. the validation loss after ``--iters`` iterations (2000: nanoGPT's run) of each, both
   evaluated on the same 200 random validation batches;
3. generation tokens/s of the trained mlenv GPT with and without its KV cache.

    python benchmarks/gpt_char.py                     # the full comparison (minutes of CPU)
    python benchmarks/gpt_char.py --iters 300 --rounds 3   # a shortened one
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine, median
from mlenv.config import TrainConfig
from mlenv.data.text import FixedBlocks, RandomBlocks, text_lm, tokenizer_from_state
from mlenv.models import create_model
from mlenv.train.checkpoint import atomic_write_bytes
from mlenv.train.tasks import LanguageModelTask
from mlenv.train.trainer import Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "tinyshakespeare.txt"
N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH = 4, 4, 128, 64, 12
LR, MIN_LR, WARMUP, WEIGHT_DECAY, BETAS, CLIP = 1e-3, 1e-4, 100, 0.1, (0.9, 0.99), 1.0
EVAL_INTERVAL, EVAL_ITERS = 250, 20


# ---------------------------------------------------------------- the reference (nanoGPT's shape)


class RefAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(N_EMBD, 3 * N_EMBD, bias=False)
        self.c_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(N_EMBD, dim=2)
        q = q.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2)
        v = v.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class RefBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(N_EMBD, bias=False)
        self.attn = RefAttention()
        self.ln_2 = nn.LayerNorm(N_EMBD, bias=False)
        self.c_fc = nn.Linear(N_EMBD, 4 * N_EMBD, bias=False)
        self.c_proj = nn.Linear(4 * N_EMBD, N_EMBD, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, N_EMBD)
        self.wpe = nn.Embedding(BLOCK, N_EMBD)
        self.h = nn.ModuleList(RefBlock() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(N_EMBD, bias=False)
        self.lm_head = nn.Linear(N_EMBD, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * N_LAYER))
            elif p.ndim == 2:
                nn.init.normal_(p, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # nanoGPT asks for the fused kernel on CUDA only; on the CPU AdamW runs its default
        return torch.optim.AdamW(groups, lr=LR, betas=BETAS)


def get_lr(it: int, total: int) -> float:
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    if it > total:
        return MIN_LR
    ratio = (it - WARMUP) / (total - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


class RefRun:
    """nanoGPT's loop, resumable in blocks of iterations (its state is the loop's)."""

    def __init__(self, train: np.ndarray, val: np.ndarray, vocab: int, total: int, compile: bool):
        torch.manual_seed(1337)
        self.train_data, self.val_data, self.total = train, val, total
        self.model = RefGPT(vocab)
        self.optimizer = self.model.configure_optimizers()
        self.fwd = torch.compile(self.model) if compile else self.model
        self.iter_num = 0
        self.X, self.Y = self.get_batch("train")

    def get_batch(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.train_data if split == "train" else self.val_data
        ix = torch.randint(len(data) - BLOCK, (BATCH,))
        x = torch.stack([torch.from_numpy(data[i : i + BLOCK].astype(np.int64)) for i in ix])
        y = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + BLOCK].astype(np.int64)) for i in ix]
        )
        return x, y

    @torch.no_grad()
    def estimate_loss(self) -> dict[str, float]:
        out = {}
        self.model.eval()
        for split in ("train", "val"):
            losses = torch.zeros(EVAL_ITERS)
            for k in range(EVAL_ITERS):
                X, Y = self.get_batch(split)
                _, loss = self.fwd(X, Y)
                losses[k] = loss.item()
            out[split] = float(losses.mean())
        self.model.train()
        return out

    def run(self, iters: int, evaluate: bool = False) -> float:
        """``iters`` iterations; returns the seconds of the training steps alone."""
        seconds = 0.0
        for _ in range(iters):
            lr = get_lr(self.iter_num, self.total)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if evaluate and self.iter_num % EVAL_INTERVAL == 0:
                losses = self.estimate_loss()
                print(f"  reference step {self.iter_num}: val {losses['val']:.4f}", flush=True)
            t0 = time.perf_counter()
            _, loss = self.fwd(self.X, self.Y)
            self.X, self.Y = self.get_batch("train")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss.item()  # nanoGPT logs every iteration at log_interval 1: a sync
            seconds += time.perf_counter() - t0
            self.iter_num += 1
        return seconds


# ---------------------------------------------------------------- mlenv


def mlenv_config(compile: bool, epochs: int) -> TrainConfig:
    """The gpt-char recipe's training fields (its defaults are nanoGPT's configuration)."""
    return TrainConfig(
        epochs=epochs,
        batch_size=BATCH,
        optimizer="adamw",
        lr=LR,
        beta1=BETAS[0],
        beta2=BETAS[1],
        weight_decay=WEIGHT_DECAY,
        grad_clip=CLIP,
        scheduler="cosine",
        warmup_steps=WARMUP,
        warmup_start_factor=1 / (WARMUP + 1),
        min_lr=MIN_LR,
        threads=1,
        compile=compile,
        progress=False,
        monitor="val_nll",
        save_top_k=0,
        wd_skip_bias_norm=True,  # nanoGPT decays the weight matrices only
    )


class MlenvRun:
    """mlenv's Trainer over its GPT, fitted one block of iterations (one epoch) at a time; the
    optimizer and schedule are set up once for the whole run (``total`` steps)."""

    def __init__(self, bundle, total: int, block_iters: int, compile: bool, eval_iters: int):
        vocab = bundle.model_kwargs["vocab_size"]
        self.model = create_model(
            "gpt", seed=1337, vocab_size=vocab, block_size=BLOCK, variant="2020"
        )
        self.train = RandomBlocks(bundle.train.ids, BLOCK, block_iters, seed=0)
        self.val = FixedBlocks(bundle.val.ids, BLOCK, eval_iters * BATCH, seed=0)
        config = mlenv_config(compile, epochs=max(1, total // block_iters))
        self.trainer = Trainer(config, self.model, task=LanguageModelTask())
        self.trainer.prepare(self.train, self.val)  # optimizer and schedule for the whole run

    def run(self, iters: int, evaluate: bool = False) -> float:
        """``iters`` steps as one epoch; returns the seconds of the training steps alone."""
        self.train.steps = iters
        self.trainer.config.epochs = self.trainer.epoch + 1
        row = self.trainer.fit(self.train, self.val).history[-1]
        if evaluate:
            print(f"  mlenv step {self.trainer.global_step}: val {row['val_nll']:.4f}", flush=True)
        return iters * BATCH / row["samples_per_s"]


# ---------------------------------------------------------------- shared measurements


@torch.no_grad()
def val_loss(forward, val_ids: torch.Tensor, batches: int = 200) -> float:
    """Mean cross-entropy over the same ``batches`` random validation batches for any model."""
    blocks = FixedBlocks(val_ids, BLOCK, batches * BATCH, batch_size=BATCH, seed=2024)
    losses = [F.cross_entropy(forward(x).flatten(0, 1), y.flatten()).item() for x, y in blocks]
    return sum(losses) / len(losses)


def generation_speed(model, tokens: int) -> dict[str, float]:
    model.eval()
    start = torch.zeros(1, 1, dtype=torch.long)
    out = {}
    for use_cache in (False, True):
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for _ in model.generate(start, tokens, top_k=None, use_cache=use_cache, generator=g):
            pass
        out["kv_cache" if use_cache else "no_cache"] = tokens / (time.perf_counter() - t0)
    out["speedup"] = out["kv_cache"] / out["no_cache"]
    return out


def timing(bundle, train_np, val_np, vocab, rounds, block_iters, compile) -> dict:
    ref = RefRun(train_np, val_np, vocab, total=10**6, compile=compile)
    ours = MlenvRun(bundle, 10**6, block_iters, compile, eval_iters=1)
    ref.run(20)  # warm-up (and compilation) outside the clock
    ours.run(20)
    ref_ms, ours_ms, ref_cpu, ours_cpu = [], [], [], []
    for r in range(rounds):
        c0 = time.process_time()
        ref_ms.append(1000 * ref.run(block_iters) / block_iters)
        c1 = time.process_time()
        ours_ms.append(1000 * ours.run(block_iters) / block_iters)
        c2 = time.process_time()  # CPU time of the whole block: the epoch's overhead included
        ref_cpu.append(1000 * (c1 - c0) / block_iters)
        ours_cpu.append(1000 * (c2 - c1) / block_iters)
        print(
            f"  round {r + 1}: reference {ref_ms[-1]:.2f} ms/it ({ref_cpu[-1]:.2f} CPU), "
            f"mlenv {ours_ms[-1]:.2f} ms/it ({ours_cpu[-1]:.2f} CPU)",
            flush=True,
        )
    ratios = [o / r for o, r in zip(ours_ms, ref_ms, strict=True)]
    return {
        "reference_ms_per_iter": ref_ms,
        "mlenv_ms_per_iter": ours_ms,
        "median_reference_ms": median(ref_ms),
        "median_mlenv_ms": median(ours_ms),
        "median_ratio": median(ratios),
        "reference_cpu_ms_per_iter": ref_cpu,
        "mlenv_cpu_ms_per_iter": ours_cpu,
        "median_cpu_ratio": median([o / r for o, r in zip(ours_cpu, ref_cpu, strict=True)]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=2000, help="training run length (0: none)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing blocks")
    parser.add_argument("--block-iters", type=int, default=100, help="iterations per block")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--gen-tokens", type=int, default=500)
    parser.add_argument("--out", default=str(RESULTS / "gpt_char.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    bundle = text_lm(str(DATA), "char", block_size=BLOCK, eval_interval=EVAL_INTERVAL)
    vocab = bundle.model_kwargs["vocab_size"]
    train_np = bundle.train.ids.numpy().astype(np.uint16)  # nanoGPT's train.bin / val.bin
    val_np = bundle.val.ids.numpy().astype(np.uint16)
    result: dict = {"config": {"n_layer": N_LAYER, "n_head": N_HEAD, "n_embd": N_EMBD,
                               "block_size": BLOCK, "batch_size": BATCH, "vocab_size": vocab,
                               "threads": 1}}  # fmt: skip

    print("timing, eager (alternating blocks)", flush=True)
    result["eager"] = timing(bundle, train_np, val_np, vocab, args.rounds, args.block_iters, False)
    if args.compile:
        print("timing, torch.compile", flush=True)
        result["compiled"] = timing(
            bundle, train_np, val_np, vocab, args.rounds, args.block_iters, True
        )

    if args.iters:
        block = min(EVAL_INTERVAL, args.iters)
        print(f"training {args.iters} iterations each (alternating blocks of {block})")
        ref = RefRun(train_np, val_np, vocab, total=args.iters, compile=False)
        ours = MlenvRun(bundle, args.iters, block, compile=False, eval_iters=EVAL_ITERS)
        ref_s = ours_s = 0.0
        for done in range(0, args.iters, block):
            n = min(block, args.iters - done)
            ref_s += ref.run(n, evaluate=True)
            ours_s += ours.run(n, evaluate=True)
        ref.model.eval()
        ref_val = val_loss(lambda x: ref.model(x, x.contiguous())[0], bundle.val.ids)
        ours_val = val_loss(ours.model.eval(), bundle.val.ids)
        result["training"] = {
            "iterations": args.iters,
            "reference_val_loss": ref_val,
            "mlenv_val_loss": ours_val,
            "reference_ms_per_iter": 1000 * ref_s / args.iters,
            "mlenv_ms_per_iter": 1000 * ours_s / args.iters,
            "ratio": ours_s / ref_s,
            "reference_parameters": sum(p.numel() for p in ref.model.parameters()),
            "mlenv_parameters": sum(p.numel() for p in ours.model.parameters()),
            "val_batches": 200,
        }
        result["generation_tokens_per_s"] = generation_speed(ours.model, args.gen_tokens)
        tok = tokenizer_from_state(bundle.state["tokenizer"])
        g = torch.Generator().manual_seed(0)
        prompt = tok.encode("ROMEO:")[None, :]
        sample = ours.model.generate(prompt, 200, temperature=0.8, top_k=40, generator=g)
        result["mlenv_sample"] = "ROMEO:" + tok.decode([int(t[0]) for t in sample])
    result["machine"] = machine()
    text = json.dumps(result, indent=2) + "\n"
    atomic_write_bytes(args.out, text.encode())
    print(text)


if __name__ == "__main__":
    main()
