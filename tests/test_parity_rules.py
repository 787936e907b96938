"""`mlenv parity` on hand-made golden folders (no training): the tolerance rule, the first layer
that disagrees in execution order, missing tensors, NaN, and the exit status."""

from __future__ import annotations

import json

import numpy as np
from safetensors.numpy import save_file

from mlenv.cli import main
from mlenv.export.parity import compare, failure, format_rows


def golden(folder, activations, order, **sections):
    """A golden folder: ``activations`` in execution ``order``, and any other section."""
    folder.mkdir()
    save_file(
        {k: np.asarray(v, dtype=np.float32) for k, v in activations.items()},
        str(folder / "activations.safetensors"),
    )
    for name, tensors in sections.items():
        save_file(
            {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()},
            str(folder / f"{name}.safetensors"),
        )
    (folder / "manifest.json").write_text(json.dumps({"activations": {"order": order}}))
    return folder


def statuses(rows):
    return {(r.section, r.name): r.status for r in rows}


def test_tolerance_is_atol_plus_rtol_times_the_reference(tmp_path):
    # numpy.allclose(b, a): |b - a| <= atol + rtol * |a|, with a the first (reference) folder
    a = golden(tmp_path / "a", {"x": [0.0], "y": [100.0]}, ["x", "y"])
    b = golden(tmp_path / "b", {"x": [0.5], "y": [100.5]}, ["x", "y"])
    # x: 0.5 > 0.4 + 0.01 * 0; y: 0.5 <= 0.4 + 0.01 * 100
    assert statuses(compare(a, b, rtol=0.01, atol=0.4)) == {
        ("activations", "x"): "DIFF",
        ("activations", "y"): "ok",
    }
    # atol alone: both within 0.6; rtol alone: only y (0.5 <= 0.006 * 100)
    assert set(statuses(compare(a, b, rtol=0.0, atol=0.6)).values()) == {"ok"}
    assert statuses(compare(a, b, rtol=0.006, atol=0.0)) == {
        ("activations", "x"): "DIFF",
        ("activations", "y"): "ok",
    }
    # the reference is the first folder: a port that is large where the reference is 0 differs
    zero = golden(tmp_path / "zero", {"x": [0.0]}, ["x"])
    big = golden(tmp_path / "big", {"x": [1.0]}, ["x"])
    assert statuses(compare(zero, big, rtol=1.0, atol=0.0)) == {("activations", "x"): "DIFF"}
    assert statuses(compare(big, zero, rtol=1.0, atol=0.0)) == {("activations", "x"): "ok"}


def test_the_first_divergence_is_the_first_layer_in_execution_order(tmp_path, capsys):
    # execution order is not alphabetical: "stem" runs before "head"
    order = ["stem", "head"]
    a = golden(
        tmp_path / "a",
        {"stem": [1.0, 2.0], "head": [3.0]},
        order,
        weights={"w": [1.0]},
        inputs={"x": [1.0]},
    )
    b = golden(
        tmp_path / "b", {"stem": [1.0, 2.5], "head": [3.5]}, order, weights={"w": [1.0]}
    )  # inputs missing in the port
    rows = compare(a, b)
    assert [(r.section, r.name) for r in rows] == [
        ("inputs", "x"),
        ("activations", "stem"),
        ("activations", "head"),
        ("weights", "w"),
    ]
    assert [r.status for r in rows] == ["missing", "DIFF", "DIFF", "ok"]
    assert rows[1].max_abs == 0.5 and rows[1].max_rel == 0.25
    text = format_rows(rows)
    (marked,) = [line for line in text.splitlines() if "first divergence" in line]
    assert marked.split()[:2] == ["activations", "stem"]
    assert "3 tensors compared, 2 out of tolerance, 1 missing" in text
    assert failure(rows) == "2 tensors differ; the first is activations/stem (DIFF)"
    assert main(["parity", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "activations stem" in " ".join(out.split())


def test_within_tolerance_missing_nan_and_a_shape_mismatch(tmp_path, capsys):
    a = golden(tmp_path / "a", {"h": [1.0, np.nan], "o": [1.0, 2.0]}, ["h", "o"])
    b = golden(tmp_path / "b", {"h": [1.0 + 1e-7, np.nan]}, ["h"])
    rows = compare(a, b)
    assert [r.status for r in rows] == ["ok", "missing"]  # NaN where the reference has NaN
    assert failure(rows) is None
    assert main(["parity", str(a), str(b)]) == 0
    assert "1 tensors compared, 0 out of tolerance, 1 missing" in capsys.readouterr().out
    c = golden(tmp_path / "c", {"h": [1.0, 0.0], "o": [1.0, 2.0, 3.0]}, ["h", "o"])
    rows = compare(a, c)
    assert [r.status for r in rows] == ["DIFF", "shape [3]"]  # a NaN the port lacks differs
    empty = tmp_path / "empty"
    empty.mkdir()
    assert failure(compare(a, empty), empty).startswith(f"no tensor compared: {empty}")


def test_activations_keep_each_leaf_modules_first_call_in_execution_order():
    import torch
    from torch import nn

    from mlenv.export.golden import capture_activations

    class Twice(nn.Module):  # one ReLU module used twice: its first output is the golden one
        def __init__(self):
            super().__init__()
            self.second, self.act, self.first = nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)

        def forward(self, x):
            return self.act(self.second(self.act(self.first(x))))

    model = Twice()
    x = torch.tensor([[1.0, -2.0]])
    order, outputs, result = capture_activations(model, lambda: model(x))
    assert order == ["first", "act", "second"]
    torch.testing.assert_close(outputs["act"], torch.relu(model.first(x)))
    torch.testing.assert_close(result, torch.relu(model.second(torch.relu(model.first(x)))))
