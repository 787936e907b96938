"""Porting parity: the golden files are enough for an independent NumPy port to reproduce the
forward pass, the loss, the gradients, the clipping (by norm and by value, active on the golden
batch) and two Adam steps; the export runs under the recipe's precision; parity finds the first
divergence; ONNX matches torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from mlenv.cli import main

# thresholds below the gradients of the golden batch (total norm about 0.5, largest element about
# 0.12 after one epoch), so clipping changes what the optimizer sees in both steps
CLIP = {
    "norm": ["--grad-clip", "0.1"],
    "value": ["--grad-clip", "0.01", "--grad-clip-mode", "value"],
}
RUNS = {
    **CLIP,
    "bf16": [*CLIP["norm"], "--precision", "bf16"],
    "dropout": [*CLIP["norm"], "--dropout", "0.5"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    """``trained(kind) -> (run folder, golden folder)``: tabular-binary on spambase for one epoch
    with the flags of ``RUNS[kind]``, exported with ``mlenv export golden``; each made once."""
    made = {}

    def get(kind):
        if kind not in made:
            runs = tmp_path_factory.mktemp(f"runs-{kind}")
            data = str(shared_data / "tabular" / "spambase.data")
            argv = ["train", "tabular-binary", "--data", data, "--no-header", "--epochs", "1"]
            assert main([*argv, *RUNS[kind], "--runs-dir", str(runs), "--progress", "false"]) == 0
            (run,) = (runs / "tabular-binary").iterdir()
            golden = tmp_path_factory.mktemp(f"golden-{kind}")
            assert main(["export", "golden", "--weights", str(run), "--out", str(golden)]) == 0
            made[kind] = run, golden
        return made[kind]

    return get


@pytest.fixture(scope="module")
def run_dir(trained):
    return trained("norm")[0]


@pytest.fixture(scope="module")
def golden(trained):
    return trained("norm")[1]


def read(folder, name):
    return load_file(str(folder / f"{name}.safetensors"))


# --- an independent port, written from the equations, reading only the exported files --------


def forward_backward(w, x, y, order):
    """The binary MLP (Linear, ReLU, ..., Linear to one logit) with BCE-with-logits, in float64:
    every activation, the loss and every gradient."""
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
    grads = {}
    dz = ((acts["predictions"] - y) / len(y))[:, None]  # d loss / d logits, (B, 1)
    for i in range(len(linear) - 1, -1, -1):
        name, h_in, z = pre[i]
        grads[f"{name}.weight"] = dz.T @ h_in
        grads[f"{name}.bias"] = dz.sum(axis=0)
        if i > 0:
            dz = (dz @ w[f"{name}.weight"]) * (pre[i - 1][2] > 0)
    return acts, loss, grads


def clip(grads, opt):
    """By the global norm: g * min(1, c / (norm + 1e-6)); by value: every element into [-c, c]."""
    c = opt["grad_clip"]
    if opt["grad_clip_mode"] == "value":
        return {n: np.clip(g, -c, c) for n, g in grads.items()}
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    return {n: g * min(1.0, c / (norm + 1e-6)) for n, g in grads.items()}


def adam_step(params, grads, state, lr, opt):
    """One Adam step (no weight decay) with bias correction; ``state`` holds m, v and t."""
    (b1, b2), eps = opt["betas"], opt["eps"]
    t = state["t"] = state.get("t", 0) + 1
    ms, vs = state.setdefault("m", {}), state.setdefault("v", {})
    out = {}
    for name, g in grads.items():
        g = g.astype(np.float64)
        m = ms[name] = b1 * ms.get(name, 0.0) + (1 - b1) * g
        v = vs[name] = b2 * vs.get(name, 0.0) + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        out[name] = params[name] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return out


def largest(a, b):
    return max(float(np.abs(a[k] - np.reshape(b[k], a[k].shape)).max()) for k in a)


@pytest.mark.parametrize("mode", ["norm", "value"])
def test_numpy_port_reproduces_every_stage_and_two_clipped_adam_steps(trained, mode):
    folder = trained(mode)[1]
    manifest = json.loads((folder / "manifest.json").read_text())
    opt = manifest["optimizer"]
    assert (opt["name"], opt["grad_clip_mode"], opt["weight_decay"]) == ("Adam", mode, 0.0)
    assert manifest["precision"] == "32"
    # clipping changed the gradients of both steps on this batch
    assert [s["clipped"] for s in opt["steps"]] == [True, True]
    w = read(folder, "weights")
    batch = read(folder, "inputs")
    x, y = batch["x"].astype(np.float64), batch["y"].astype(np.float64)
    order = manifest["activations"]["order"]

    # forward, loss and backward at the exported weights, and again at the first step's
    acts, loss, grads = forward_backward(w, x, y, order)
    assert largest(read(folder, "activations"), acts) < 1e-5
    assert abs(json.loads((folder / "loss.json").read_text())["loss"] - loss) < 1e-6
    exported_grads = read(folder, "grads")
    assert largest(exported_grads, grads) < 1e-6
    step1 = read(folder, "step")
    _, loss2, grads2 = forward_backward(step1, x, y, order)
    exported_grads2 = read(folder, "grads2")
    assert largest(exported_grads2, grads2) < 1e-6
    assert abs(opt["steps"][1]["loss"] - loss2) < 1e-6

    # clipping, by hand, from the exported gradients
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in exported_grads.values()))
    assert opt["grad_norm_before_clip"] == pytest.approx(norm, rel=1e-6)
    clipped = clip(exported_grads, opt)
    clipped2 = clip(exported_grads2, opt)
    for name, mine in (("grads_clipped", clipped), ("grads2_clipped", clipped2)):
        exported = read(folder, name)
        for key, value in mine.items():
            np.testing.assert_allclose(exported[key], value, rtol=1e-5, atol=1e-9, err_msg=key)
    if mode == "norm":
        total = np.sqrt(sum((g**2).sum() for g in clipped.values()))
        assert total == pytest.approx(opt["grad_clip"], abs=1e-6)
    else:
        values = np.concatenate([g.ravel() for g in clipped.values()])
        assert np.abs(values).max() <= opt["grad_clip"] and (np.abs(values) == 0.01).any()

    # two Adam steps from a fresh state, by hand
    state = {}
    mine1 = adam_step(w, clipped, state, opt["steps"][0]["lr"], opt)
    assert largest(step1, mine1) < 1e-6
    mine2 = adam_step(step1, clipped2, state, opt["steps"][1]["lr"], opt)
    step2 = read(folder, "step2")
    assert largest(step2, mine2) < 1e-6
    moments = read(folder, "optimizer_state")
    for name in mine2:
        for key, value in (("exp_avg", state["m"][name]), ("exp_avg_sq", state["v"][name])):
            np.testing.assert_allclose(moments[f"{key}.{name}"], value, rtol=1e-5, atol=1e-12)
    # the second step needs the moments and the bias correction of step 2: a port that restarts
    # Adam at every step (t = 1, no history) lands elsewhere
    restarted = adam_step(step1, clipped2, {}, opt["steps"][1]["lr"], opt)
    assert largest(step2, restarted) > 1e-5
    print(
        f"{mode}: largest |difference| activations {largest(read(folder, 'activations'), acts):.1e}"
        f", grads {largest(exported_grads, grads):.1e}, grads2 {largest(exported_grads2, grads2):.1e}"
        f", clipped {largest(read(folder, 'grads_clipped'), clipped):.1e}"
        f", step {largest(step1, mine1):.1e}, step2 {largest(step2, mine2):.1e}"
        f"; restarted Adam off by {largest(step2, restarted):.1e}"
        f"; norms before clipping {[round(s['grad_norm_before_clip'], 4) for s in opt['steps']]}"
    )


def test_export_runs_under_the_recipes_precision(trained):
    folder = trained("bf16")[1]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["precision"], manifest["autocast"]) == ("bf16", "bfloat16")
    dtypes = manifest["activations"]["dtypes"]
    assert [dtypes[n] for n in ("net.0", "net.2", "net.4")] == ["bfloat16"] * 3
    acts = read(folder, "activations")
    for name in ("net.0", "net.2", "net.4"):
        # stored as float32, holding bfloat16 values: the low 16 bits are zero
        assert (acts[name].view(np.uint32) & 0xFFFF == 0).all(), name
    # the float32 computation is close but not equal: the export did not silently run in fp32
    w, batch = read(folder, "weights"), read(folder, "inputs")
    order = manifest["activations"]["order"]
    x, y = batch["x"].astype(np.float64), batch["y"].astype(np.float64)
    fp32, _, _ = forward_backward(w, x, y, order)
    difference = largest(acts, {k: fp32[k] for k in acts})
    assert 1e-4 < difference < 0.1, difference
    # the gradients stay float32 and the clipping and the step follow them exactly
    opt = manifest["optimizer"]
    clipped = clip(read(folder, "grads"), opt)
    mine = adam_step(w, clipped, {}, opt["steps"][0]["lr"], opt)
    assert largest(read(folder, "step"), mine) < 1e-6


def test_batch_size_larger_than_the_data_is_one_line_naming_the_rows(trained, tmp_path, capsys):
    run, _ = trained("norm")
    rows = json.loads((run / "summary.json").read_text())["data"]["sizes"]["train"]
    capsys.readouterr()
    for kind, out in (("golden", tmp_path / "g"), ("onnx", tmp_path / "m.onnx")):
        argv = ["export", kind, "--weights", str(run), "--out", str(out)]
        assert main([*argv, "--batch-size", str(rows + 1)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert "--batch-size" in err and f"only {rows} rows" in err, err
    argv = ["export", "golden", "--weights", str(run), "--out", str(tmp_path / "all")]
    assert main([*argv, "--batch-size", str(rows)]) == 0  # every row is fine


def test_inputs_hold_raw_rows_and_scaler(golden, shared_data):
    batch = read(golden, "inputs")
    raw = np.loadtxt(shared_data / "tabular" / "spambase.data", delimiter=",")
    np.testing.assert_array_equal(batch["x_raw"], raw[batch["lines"] - 1, :57])
    scaled = (batch["x_raw"] - batch["scaler_mean"]) / batch["scaler_scale"]
    np.testing.assert_array_equal(batch["x"], scaled.astype(np.float32))
    manifest = json.loads((golden / "manifest.json").read_text())
    assert "must transpose" in manifest["weights"]["net.0.weight"]["layout"]
    cases = {(c["mode"], c["case"]): c["expected"] for c in manifest["loss_edge_cases"]}
    assert cases[("sigmoid", "wrong")] == 100.0
    assert all((golden / name).is_file() for name in manifest["files_in_order"])


def test_parity_same_checkpoint_then_perturbed_layer(run_dir, golden, tmp_path, capsys):
    from mlenv.train.checkpoint import load_checkpoint, save_checkpoint

    again = tmp_path / "again"
    assert main(["export", "golden", "--weights", str(run_dir), "--out", str(again)]) == 0
    capsys.readouterr()
    assert main(["parity", str(golden), str(again)]) == 0
    assert "0 out of tolerance" in capsys.readouterr().out

    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    state["model"]["net.2.weight"] += 1e-3
    perturbed_ckpt = tmp_path / "perturbed.pt"
    save_checkpoint(perturbed_ckpt, state)
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
    acts = read(golden, "activations")
    np.savez(other / "activations.npz", **{"net.0": acts["net.0"], "net.1": acts["net.1"]})
    assert main(["parity", str(golden), str(other)]) == 0
    out = capsys.readouterr().out
    assert "2 tensors compared, 0 out of tolerance" in out
    acts["net.1"][0, 0] += 1.0
    np.savez(other / "activations.npz", **{"net.0": acts["net.0"], "net.1": acts["net.1"]})
    assert main(["parity", str(golden), str(other), "--atol", "1e-3"]) == 1


def test_golden_vectors_are_computed_with_dropout_off(trained):
    folder = trained("dropout")[1]
    manifest = json.loads((folder / "manifest.json").read_text())
    order = manifest["activations"]["order"]
    assert order[:4] == ["net.0", "net.1", "net.2", "net.3"]  # Linear, ReLU, Dropout, Linear
    acts = read(folder, "activations")
    np.testing.assert_array_equal(acts["net.2"], acts["net.1"])  # dropout is the identity
    batch = read(folder, "inputs")
    x, y = batch["x"].astype(np.float64), batch["y"].astype(np.float64)
    mine, loss, _ = forward_backward(read(folder, "weights"), x, y, order)
    assert largest({k: acts[k] for k in mine}, mine) < 1e-5
    assert abs(json.loads((folder / "loss.json").read_text())["loss"] - loss) < 1e-6


def test_onnx_round_trip(trained, tmp_path):
    import onnx

    from mlenv.export.onnx_export import export_onnx

    path = tmp_path / "model.onnx"
    # the model with dropout: exported and compared in eval mode, where both are deterministic
    difference = export_onnx(str(trained("dropout")[0]), path)
    assert difference <= 1e-5
    onnx.checker.check_model(onnx.load(str(path)))
