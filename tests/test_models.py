"""Every registered model passes the same contract: output shape and width (``dim``), finite
output, a gradient on every parameter, and a safetensors save/load that gives identical output."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from mlenv.models import MODELS, create_model
from mlenv.train.base import BaseModel

# name -> (builder arguments the data would provide, an example input)
EXAMPLES = {
    "mlp": ({"in_features": 5, "out_features": 3}, lambda: torch.randn(4, 5)),
    "binary-mlp": ({"in_features": 5}, lambda: torch.randn(4, 5)),
    "vae": ({"in_features": 6}, lambda: torch.rand(4, 6)),
    "hvae": ({"in_features": 6}, lambda: torch.rand(4, 6)),
    "simple-cnn": (
        {"in_channels": 1, "image_size": 28, "out_features": 10},
        lambda: torch.randn(4, 1, 28, 28),
    ),
    "resnet18": ({"in_channels": 3, "out_features": 10}, lambda: torch.randn(2, 3, 16, 16)),
    "resnet50": (
        {"in_channels": 1, "out_features": 4, "width": 8},
        lambda: torch.randn(2, 1, 16, 16),
    ),
    "rnn-lm": ({"vocab_size": 11}, lambda: torch.randint(0, 11, (2, 7))),
    "gpt": ({"vocab_size": 11, "block_size": 8}, lambda: torch.randint(0, 11, (2, 7))),
    "bert": ({"vocab_size": 11, "block_size": 8}, lambda: torch.randint(0, 12, (2, 7))),
    "vit": (
        {"in_channels": 1, "image_size": 28, "out_features": 10},
        lambda: torch.randn(4, 1, 28, 28),
    ),
    # the UNets take (x, t[, labels]) and give the noise, one value per pixel: dim is the channels
    "unet": (
        {"channels": (4, 8, 8), "time_dim": 8},
        lambda: (torch.randn(4, 1, 8, 8), torch.tensor([0, 5, 500, 999])),
    ),
    "unet-conditional": (
        {"channels": (4, 8, 8), "time_dim": 8},
        lambda: (
            torch.randn(4, 1, 8, 8),
            torch.tensor([0, 5, 500, 999]),
            torch.tensor([0, 3, 9, 10]),
        ),
    ),
}


def test_every_registered_model_has_an_example():
    assert sorted(MODELS.names()) == sorted(EXAMPLES)


def first(output):
    return output[0] if isinstance(output, tuple) else output


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_model_contract(name, tmp_path):
    torch.manual_seed(0)
    kwargs, make_input = EXAMPLES[name]
    model = create_model(name, **kwargs)
    assert isinstance(model, BaseModel)
    model.init_weights()
    inputs = make_input()
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    x = inputs[0]
    model.train()
    out = model(*inputs)
    main = first(out)
    assert main.shape[0] == x.shape[0]
    if main.ndim == 4:  # images out: (B, dim, H, W)
        assert main.shape[1] == model.dim and main.shape[2:] == x.shape[2:]
    else:
        assert main.shape[-1] == model.dim or (main.ndim == 1 and model.dim == 1)
    assert all(torch.isfinite(t).all() for t in (out if isinstance(out, tuple) else (out,)))
    loss = sum(t.float().pow(2).mean() for t in (out if isinstance(out, tuple) else (out,)))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} gets no gradient"
    model.eval()
    with torch.no_grad():
        expected = first(model(*inputs))
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    other = create_model(name, **kwargs)
    other.load_state_dict(load_file(tmp_path / "w.safetensors"))
    other.eval()
    with torch.no_grad():
        assert torch.equal(first(other(*inputs)), expected)
