"""Golden vectors: everything a port to another framework needs to prove each stage equal.

For a checkpoint and a fixed batch of real rows: the weights, the batch (raw and as the model sees
it), every leaf module's output in execution order, the loss, every gradient after one backward
pass, and the parameters after one optimizer step with the recipe's optimizer and clipping.
Tensors go out as safetensors, the rest as JSON, so any framework can read them.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlenv.train.checkpoint import atomic_write_bytes

GOLDEN_FORMAT = 1


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

    params = dict(model.state_dict())
    _save(out / "weights.safetensors", params)
    _save(out / "inputs.safetensors", batch)

    # forward with every activation, then the loss and one backward pass
    trainer.optimizer.zero_grad(set_to_none=True)
    order, activations, (loss, terms, predictions) = capture_activations(
        model, lambda: trainer.compute_loss((batch["x"], batch["y"]))
    )
    loss.backward()
    if isinstance(predictions, torch.Tensor):
        activations["predictions"] = predictions.detach()
        order.append("predictions")
    _save(out / "activations.safetensors", activations)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    _save(out / "grads.safetensors", grads)
    loss_info = {
        "loss": loss.item(),
        "terms": {name: term.item() for name, term in terms.items()},
        "criterion": type(trainer.criterion).__name__,
        "reduction": "mean over the batch",
    }
    atomic_write_bytes(out / "loss.json", (json.dumps(loss_info, indent=2) + "\n").encode())

    # one optimizer step with the recipe's optimizer and clipping
    norm_before_clip = None
    if cfg.train.grad_clip is not None and cfg.train.grad_clip_mode == "norm":
        norm_before_clip = float(
            torch.nn.utils.clip_grad_norm_(trainer._params, cfg.train.grad_clip)
        )
    elif cfg.train.grad_clip is not None:
        torch.nn.utils.clip_grad_value_(trainer._params, cfg.train.grad_clip)
    trainer.optimizer.step()
    _save(out / "step.safetensors", {n: p.detach().clone() for n, p in model.named_parameters()})

    modules = dict(model.named_modules())
    group = trainer.optimizer.param_groups[0]
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
        "mode": "eval (dropout off); gradients and the step on this batch only, the step from a "
        "fresh optimizer state (its first step)",
        "batch": {
            "size": batch_size,
            "seed": seed,
            "tensors": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                for k, v in batch.items()
            },
        },
        "weights": {
            name: {
                "shape": list(t.shape),
                "dtype": str(t.dtype).replace("torch.", ""),
                "layout": layout_note(modules[name.rsplit(".", 1)[0]]) if "." in name else "",
            }
            for name, t in params.items()
        },
        "activations": {
            "order": order,
            "shapes": {k: list(v.shape) for k, v in activations.items()},
        },
        "loss": loss_info,
        "optimizer": {
            "name": type(trainer.optimizer).__name__,
            "lr": group["lr"],
            "betas": list(group.get("betas", ())),
            "eps": group.get("eps"),
            "weight_decay": group["weight_decay"],
            "grad_clip": cfg.train.grad_clip,
            "grad_clip_mode": cfg.train.grad_clip_mode,
            "grad_norm_before_clip": norm_before_clip,
        },
        "files_in_order": [
            "inputs.safetensors",
            "weights.safetensors",
            "activations.safetensors",
            "loss.json",
            "grads.safetensors",
            "step.safetensors",
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
