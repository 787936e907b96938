"""Golden vectors: everything a port to another framework needs to prove each stage equal.

For a checkpoint and a fixed batch of real rows: the weights, the batch (raw and as the model sees
it), every leaf module's output in execution order, the loss, every gradient after one backward
pass, and two optimizer steps on that batch with the recipe's optimizer, clipping and precision
(the second step is where Adam's moments and bias correction first matter). Tensors go out as
safetensors, the rest as JSON, so any framework can read them.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlenv.errors import ConfigError
from mlenv.train.checkpoint import atomic_write_bytes

GOLDEN_FORMAT = 2


def layout_note(module: nn.Module) -> str:
    """How the module stores its weights, for a porter whose framework stores them otherwise."""
    if isinstance(module, nn.Linear):
        return (
            "Linear: weight [out, in], y = x @ weight.T + bias; a framework storing [in, out] "
            "(JAX/Flax, Burn, Keras) must transpose"
        )
    if isinstance(module, nn.modules.conv._ConvNd):
        return "Conv: weight [out, in/groups, *kernel] (channels first, NCHW input)"
    if isinstance(module, nn.Embedding):
        return "Embedding: weight [num_embeddings, dim], a row per token id"
    if isinstance(module, nn.LSTM):
        return (
            "LSTM: weight_ih/hh [4*hidden, in/hidden], gates in order input, forget, cell, output"
        )
    if isinstance(module, nn.GRU):
        return "GRU: weight_ih/hh [3*hidden, in/hidden], gates in order reset, update, new"
    if isinstance(module, nn.LayerNorm | nn.modules.batchnorm._BatchNorm):
        return f"{type(module).__name__}: weight and bias per feature; eps={module.eps}"
    return type(module).__name__


def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n and not list(m.children())]


def capture_activations(
    model: nn.Module, run: Any
) -> tuple[list[str], dict[str, torch.Tensor], Any]:
    """Run ``run()`` and keep every leaf module's output, named by module path, in order."""
    order: list[str] = []
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in _leaf_modules(model):

        def hook(_m, _i, out, name=name):
            tensor = out[0] if isinstance(out, tuple) else out
            if isinstance(tensor, torch.Tensor) and name not in outputs:
                order.append(name)
                outputs[name] = tensor.detach().clone()

        handles.append(module.register_forward_hook(hook))
    try:
        result = run()
    finally:
        for h in handles:
            h.remove()
    return order, outputs, result


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


def fixed_batch(cfg: Any, bundle: Any, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """``batch_size`` real training rows chosen with ``seed``: model input ``x``, target ``y``,
    and for tabular data the raw rows, their line numbers and the scaler."""
    x_all, y_all = bundle.train[0], bundle.train[1]
    if batch_size > len(x_all):
        raise ConfigError(
            f"--batch-size: {batch_size} rows asked for, but the training split has only "
            f"{len(x_all)} rows; give --batch-size {len(x_all)} or less"
        )
    rows = np.sort(np.random.default_rng(seed).choice(len(x_all), batch_size, replace=False))
    batch = {"x": x_all[rows], "y": y_all[rows]}
    state = bundle.state
    if state.get("kind") == "tabular":
        from mlenv.data.tabular import load_split

        options = {k: v for k, v in cfg.data.items() if k != "save_split"}
        split = load_split(seed=cfg.train.seed, **options)
        table_rows = split.train[rows]
        batch["x_raw"] = torch.tensor(split.table.features[table_rows])
        batch["lines"] = torch.tensor(split.table.lines[table_rows])
        batch["scaler_mean"] = torch.tensor(split.scale_mean)
        batch["scaler_scale"] = torch.tensor(split.scale_scale)
        # the model input is the float32 of (raw - mean) / scale computed in float64
        expected = torch.tensor(split.scaled(table_rows), dtype=torch.float32)
        assert torch.equal(expected, batch["x"])
    return batch


def _float32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Half-precision tensors (autocast outputs) as float32, which every reader can load; the
    conversion is exact, and the manifest keeps the dtype they were computed in."""
    return {
        k: v.float() if v.dtype in (torch.bfloat16, torch.float16) else v
        for k, v in tensors.items()
    }


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).replace("torch.", "")


def _optimizer_state(trainer: Any, model: nn.Module) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter tensors (Adam: ``exp_avg``, ``exp_avg_sq``) as
    ``<state>.<parameter>``; the step count is in the manifest."""
    out = {}
    for name, param in model.named_parameters():
        for key, value in trainer.optimizer.state.get(param, {}).items():
            if isinstance(value, torch.Tensor) and key != "step":
                out[f"{key}.{name}"] = value.detach().clone()
    return out


def export_golden(weights: str, out: str | Path, batch_size: int = 8, seed: int = 0) -> Path:
    """Write the golden folder for the checkpoint ``weights`` (a file or a run folder)."""
    from mlenv.doctor.loss_checks import loss_table
    from mlenv.train.checkpoint import load_model_state
    from mlenv.train.run import build, load_trained

    out = Path(out)
    trainer, cfg, state, path = load_trained(weights, prog="mlenv export golden")
    bundle, _, _ = build(cfg)
    batch = fixed_batch(cfg, bundle, batch_size, seed)
    trainer.setup(batch["x"], 1)
    load_model_state(trainer.raw_model, state["model"], path)
    model = trainer.raw_model
    model.eval()  # dropout off: a port must match the deterministic computation first
    # the true gradients: fp16's loss scaling would only multiply and divide them again
    trainer.scaler = torch.amp.GradScaler(trainer.device.type, enabled=False)

    params = dict(model.state_dict())
    _save(out / "weights.safetensors", params)
    _save(out / "inputs.safetensors", batch)

    # two training steps on the batch, each: forward under the recipe's precision (autocast),
    # backward, the recipe's clipping, the optimizer step, the schedule
    steps: list[dict[str, Any]] = []
    for step in (1, 2):
        trainer.optimizer.zero_grad(set_to_none=True)
        order, activations, (loss, terms, predictions) = capture_activations(
            model, lambda: trainer.compute_loss((batch["x"], batch["y"]))
        )
        loss.backward()
        grads = {
            n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
        }
        lr = trainer.optimizer.param_groups[0]["lr"]
        norm_before_clip = float(trainer.clip_gradients())
        clipped = {n: p.grad.detach().clone() for n, p in model.named_parameters() if n in grads}
        trainer.optimizer.step()
        trainer.scheduler.step()
        stepped = {n: p.detach().clone() for n, p in model.named_parameters()}
        suffix = "" if step == 1 else str(step)
        _save(out / f"grads{suffix}.safetensors", grads)
        _save(out / f"grads{suffix}_clipped.safetensors", clipped)
        _save(out / f"step{suffix}.safetensors", stepped)
        largest = max(float(g.abs().max()) for g in grads.values())
        measure = norm_before_clip if cfg.train.grad_clip_mode == "norm" else largest
        steps.append(
            {
                "step": step,
                "lr": lr,
                "loss": loss.item(),
                "grad_norm_before_clip": norm_before_clip,
                "clipped": cfg.train.grad_clip is not None and measure > cfg.train.grad_clip,
            }
        )
        if step == 1:
            if isinstance(predictions, torch.Tensor):
                activations["predictions"] = predictions.detach()
                order.append("predictions")
            activation_dtypes = {k: _dtype(v) for k, v in activations.items()}
            _save(out / "activations.safetensors", _float32(activations))
            loss_info = {
                "loss": loss.item(),
                "terms": {name: term.item() for name, term in terms.items()},
                "criterion": type(trainer.criterion).__name__,
                "reduction": "mean over the batch",
            }
            text = json.dumps(loss_info, indent=2) + "\n"
            atomic_write_bytes(out / "loss.json", text.encode())
    optimizer_state = _optimizer_state(trainer, model)
    _save(out / "optimizer_state.safetensors", optimizer_state)

    modules = dict(model.named_modules())
    group = trainer.optimizer.param_groups[0]
    c = cfg.train
    manifest = {
        "format": GOLDEN_FORMAT,
        "checkpoint": str(path),
        "recipe": cfg.recipe,
        "model": {"name": cfg.model, **cfg.model_args},
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "dtype": "float32",
        "precision": c.precision,
        "autocast": {"32": None, "bf16": "bfloat16", "16": "float16"}[c.precision],
        "mode": "eval (dropout off); gradients and both steps on this batch only, from a fresh "
        "optimizer state; the forward runs under the recipe's precision (autocast), the "
        "gradients are not loss-scaled",
        "batch": {
            "size": batch_size,
            "seed": seed,
            "tensors": {k: {"shape": list(v.shape), "dtype": _dtype(v)} for k, v in batch.items()},
        },
        "weights": {
            name: {
                "shape": list(t.shape),
                "dtype": _dtype(t),
                "layout": layout_note(modules[name.rsplit(".", 1)[0]]) if "." in name else "",
            }
            for name, t in params.items()
        },
        "activations": {
            "order": order,
            "shapes": {k: list(v.shape) for k, v in activations.items()},
            "dtypes": activation_dtypes,
            "stored_as": "float32 (bfloat16/float16 outputs convert exactly)",
        },
        "loss": loss_info,
        "optimizer": {
            "name": type(trainer.optimizer).__name__,
            "lr": steps[0]["lr"],
            "betas": list(group.get("betas", ())),
            "eps": group.get("eps"),
            "weight_decay": group["weight_decay"],
            "momentum": group.get("momentum"),
            "grad_clip": c.grad_clip,
            "grad_clip_mode": c.grad_clip_mode,
            "clip_formula": None
            if c.grad_clip is None
            else "g * min(1, grad_clip / (total_norm + 1e-6)), total_norm over all gradients"
            if c.grad_clip_mode == "norm"
            else "clamp(g, -grad_clip, grad_clip) elementwise",
            "grad_norm_before_clip": steps[0]["grad_norm_before_clip"],
            "steps": steps,
            "state_after_step_2": sorted({k.split(".", 1)[0] for k in optimizer_state}),
        },
        "files_in_order": [
            "inputs.safetensors",
            "weights.safetensors",
            "activations.safetensors",
            "loss.json",
            "grads.safetensors",
            "grads_clipped.safetensors",
            "step.safetensors",
            "grads2.safetensors",
            "grads2_clipped.safetensors",
            "step2.safetensors",
            "optimizer_state.safetensors",
        ],
        "loss_edge_cases": [
            {k: r[k] for k in ("mode", "case", "expected", "loss", "grad")}
            for r in loss_table()
            if r["mode"] != "unclamped"
        ],
    }
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write_bytes(out / "manifest.json", text.encode())
    return out
