"""Porting parity: the golden files are enough for an independent NumPy port to reproduce the
forward pass, the loss, the gradients and one Adam step; parity finds the first divergence; ONNX
matches torch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from safetensors.numpy import load_file

from mlenv.cli import main
from mlenv.export.onnx_export import export_onnx


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shared_data):
    runs = tmp_path_factory.mktemp("runs")
    assert (
        main(
            [
                "train",
                "tabular-binary",
                "--data",
                str(shared_data / "tabular" / "spambase.data"),
                "--no_header",
                "true",
                "--epochs",
                "2",
                "--lr",
                "1e-3",
                "--runs_dir",
                str(runs),
                "--progress",
                "false",
            ]
        )
        == 0
    )
    (run,) = (runs / "tabular-binary").iterdir()
    return run


@pytest.fixture(scope="module")
def golden(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    assert main(["export", "golden", "--weights", str(run_dir), "--out", str(out)]) == 0
    return out


# --- an independent port, written from the equations, reading only the exported files --------


def numpy_port(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    w = load_file(str(folder / "weights.safetensors"))
    batch = load_file(str(folder / "inputs.safetensors"))
    x, y = batch["x"].astype(np.float64), batch["y"].astype(np.float64)
    order = manifest["activations"]["order"]  # execution order: net.0, net.1, ..., predictions
    linear = [n for n in order if f"{n}.weight" in w]
    acts, h, pre = {}, x, []
    for i, name in enumerate(linear):
        z = h @ w[f"{name}.weight"].T + w[f"{name}.bias"]  # Linear stores [out, in]
        acts[name] = z
        pre.append((name, h, z))
        if i < len(linear) - 1:
            h = np.maximum(z, 0.0)
            acts[order[order.index(name) + 1]] = h  # the ReLU after this layer
    logits = z[:, 0]
    loss = np.mean(np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits))))
    acts["predictions"] = 1 / (1 + np.exp(-logits))
    # backward
    grads = {}
    dz = ((acts["predictions"] - y) / len(y))[:, None]  # d loss / d logits, (B, 1)
    for i in range(len(linear) - 1, -1, -1):
        name, h_in, z = pre[i]
        grads[f"{name}.weight"] = dz.T @ h_in
        grads[f"{name}.bias"] = dz.sum(axis=0)
        if i > 0:
            dz = (dz @ w[f"{name}.weight"]) * (pre[i - 1][2] > 0)
    # clip by the global norm, then one Adam step from a fresh state
    opt = manifest["optimizer"]
    norm = np.sqrt(sum((g**2).sum() for g in grads.values()))
    coef = min(1.0, opt["grad_clip"] / (norm + 1e-6))
    (b1, b2), lr, eps = opt["betas"], opt["lr"], opt["eps"]
    step = {}
    for name, g in grads.items():
        g = g * coef
        m_hat = (1 - b1) * g / (1 - b1)
        v_hat = (1 - b2) * g**2 / (1 - b2)
        step[name] = w[name] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return acts, loss, grads, step


def test_numpy_port_reproduces_every_stage(golden):
    acts, loss, grads, step = numpy_port(golden)
    exported = load_file(str(golden / "activations.safetensors"))
    worst = {}
    for name, value in acts.items():
        worst[f"act {name}"] = np.abs(exported[name] - value.reshape(exported[name].shape)).max()
    worst["loss"] = abs(json.loads((golden / "loss.json").read_text())["loss"] - loss)
    for name, value in grads.items():
        worst[f"grad {name}"] = np.abs(
            load_file(str(golden / "grads.safetensors"))[name] - value
        ).max()
    for name, value in step.items():
        worst[f"step {name}"] = np.abs(
            load_file(str(golden / "step.safetensors"))[name] - value
        ).max()
    assert len(worst) == 6 + 1 + 6 + 6  # 5 layers + predictions, loss, 6 grads, 6 stepped
    print("largest differences:", sorted(worst.items(), key=lambda kv: -kv[1])[:4])
    assert max(worst.values()) < 1e-5, sorted(worst.items(), key=lambda kv: -kv[1])[:3]


def test_inputs_hold_raw_rows_and_scaler(golden, shared_data):
    batch = load_file(str(golden / "inputs.safetensors"))
    raw = np.loadtxt(shared_data / "tabular" / "spambase.data", delimiter=",")
    np.testing.assert_array_equal(batch["x_raw"], raw[batch["lines"] - 1, :57])
    scaled = (batch["x_raw"] - batch["scaler_mean"]) / batch["scaler_scale"]
    np.testing.assert_array_equal(batch["x"], scaled.astype(np.float32))
    manifest = json.loads((golden / "manifest.json").read_text())
    assert "must transpose" in manifest["weights"]["net.0.weight"]["layout"]
    cases = {(c["mode"], c["case"]): c["expected"] for c in manifest["loss_edge_cases"]}
    assert cases[("sigmoid", "wrong")] == 100.0


def test_parity_same_checkpoint_then_perturbed_layer(run_dir, golden, tmp_path, capsys):
    again = tmp_path / "again"
    assert main(["export", "golden", "--weights", str(run_dir), "--out", str(again)]) == 0
    capsys.readouterr()
    assert main(["parity", str(golden), str(again)]) == 0
    assert "0 out of tolerance" in capsys.readouterr().out

    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    state["model"]["net.2.weight"] += 1e-3
    perturbed_ckpt = tmp_path / "perturbed.pt"
    torch.save(state, perturbed_ckpt)
    perturbed = tmp_path / "perturbed"
    assert (
        main(["export", "golden", "--weights", str(perturbed_ckpt), "--out", str(perturbed)]) == 0
    )
    capsys.readouterr()
    assert main(["parity", str(golden), str(perturbed)]) == 1
    out = capsys.readouterr().out
    (first,) = [line for line in out.splitlines() if "first divergence" in line]
    assert first.split()[:2] == ["activations", "net.2"]
    assert "activations net.0" in " ".join(out.split()) and "ok" in out


def test_parity_reads_a_subset_as_npz(golden, tmp_path, capsys):
    other = tmp_path / "port"
    other.mkdir()
    acts = load_file(str(golden / "activations.safetensors"))
    np.savez(other / "activations.npz", **{"net.0": acts["net.0"], "net.1": acts["net.1"]})
    assert main(["parity", str(golden), str(other)]) == 0
    out = capsys.readouterr().out
    assert "2 tensors compared, 0 out of tolerance" in out
    acts["net.1"][0, 0] += 1.0
    np.savez(other / "activations.npz", **{"net.0": acts["net.0"], "net.1": acts["net.1"]})
    assert main(["parity", str(golden), str(other), "--atol", "1e-3"]) == 1


def test_onnx_round_trip(run_dir, tmp_path):
    path = tmp_path / "model.onnx"
    difference = export_onnx(str(run_dir), path)
    assert difference <= 1e-5
    onnx.checker.check_model(onnx.load(str(path)))
