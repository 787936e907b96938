"""Compare two golden folders tensor by tensor, in execution order, and name the first place they
disagree. The second folder may come from another framework: it may hold a subset of the tensors,
as ``.safetensors`` or ``.npz`` files with the same names."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlenv.errors import MlenvError

# The order a computation happens in: what goes in, each layer, the loss, the backward pass, the
# step; the stored weights last (a port that loaded them wrong shows up in the first layer).
# In the order a port computes them: a divergence in an earlier section explains later ones.
SECTIONS = (
    "inputs",
    "activations",
    "loss",
    "grads",
    "grads_clipped",
    "step",
    "grads2",
    "grads2_clipped",
    "step2",
    "optimizer_state",
    "weights",
)


def load_tensors(folder: Path, name: str) -> dict[str, np.ndarray] | None:
    """``name.safetensors`` or ``name.npz`` from ``folder`` as numpy arrays, or ``None``."""
    if (folder / f"{name}.safetensors").is_file():
        from safetensors.numpy import load_file

        return load_file(str(folder / f"{name}.safetensors"))
    if (folder / f"{name}.npz").is_file():
        with np.load(folder / f"{name}.npz") as data:
            return {k: data[k] for k in data.files}
    if name == "loss" and (folder / "loss.json").is_file():
        return {"loss": np.array(json.loads((folder / "loss.json").read_text())["loss"])}
    return None


@dataclass
class Row:
    section: str
    name: str
    shape: tuple[int, ...]
    max_abs: float | None
    max_rel: float | None
    status: str  # ok, DIFF, missing, shape


def compare(a: Path, b: Path, rtol: float = 1e-5, atol: float = 1e-6) -> list[Row]:
    """One row per tensor of the golden folder ``a``, in execution order, compared with the
    tensor of the same name in ``b`` by ``numpy.allclose(b, a, rtol, atol)``."""
    a, b = Path(a), Path(b)
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise MlenvError(f"--{name}: accepts a number >= 0, got {value!r}")
    for folder in (a, b):
        if not folder.exists():
            raise MlenvError(f"{folder}: no such folder")
        if not folder.is_dir():
            raise MlenvError(f"{folder}: not a folder; give two golden folders")
    if not (a / "manifest.json").is_file():
        raise MlenvError(
            f"{a}: not a golden folder (no manifest.json); `mlenv export golden` writes one"
        )
    manifest = json.loads((a / "manifest.json").read_text())
    rows: list[Row] = []
    for section in SECTIONS:
        left = load_tensors(a, section)
        if left is None:
            continue
        right = load_tensors(b, section) or {}
        names = manifest["activations"]["order"] if section == "activations" else list(left)
        for name in names:
            x = np.asarray(left[name], dtype=np.float64)
            if name not in right:
                rows.append(Row(section, name, x.shape, None, None, "missing"))
                continue
            y = np.asarray(right[name], dtype=np.float64)
            if x.shape != y.shape:
                rows.append(Row(section, name, x.shape, None, None, f"shape {list(y.shape)}"))
                continue
            diff = np.abs(x - y)
            max_abs = float(diff.max()) if diff.size else 0.0
            max_rel = float((diff / np.maximum(np.abs(x), 1e-12)).max()) if diff.size else 0.0
            ok = np.allclose(y, x, rtol=rtol, atol=atol, equal_nan=True)
            rows.append(Row(section, name, x.shape, max_abs, max_rel, "ok" if ok else "DIFF"))
    return rows


def format_rows(rows: list[Row]) -> str:
    first = next((i for i, r in enumerate(rows) if r.status not in ("ok", "missing")), None)
    lines = [
        f"{'section':11s} {'tensor':32s} {'shape':16s} {'max abs':>10s} {'max rel':>10s}  status"
    ]
    for i, r in enumerate(rows):
        a = "" if r.max_abs is None else f"{r.max_abs:.3e}"
        rel = "" if r.max_rel is None else f"{r.max_rel:.3e}"
        mark = "   <-- first divergence: look here" if i == first else ""
        lines.append(
            f"{r.section:11s} {r.name[:32]:32s} {list(r.shape)!s:16s} {a:>10s} "
            f"{rel:>10s}  {r.status}{mark}"
        )
    compared = sum(r.status != "missing" for r in rows)
    bad = sum(r.status not in ("ok", "missing") for r in rows)
    lines.append("")
    lines.append(
        f"{compared} tensors compared, {bad} out of tolerance, "
        f"{sum(r.status == 'missing' for r in rows)} missing in the second folder"
    )
    return "\n".join(lines)


def failure(rows: list[Row], b: Path | str = "the second folder") -> str | None:
    """Why the comparison failed, or ``None``: a tensor out of tolerance or of another shape, or
    no tensor compared at all (``b`` holds none of the first folder's tensors)."""
    bad = [r for r in rows if r.status not in ("ok", "missing")]
    if bad:
        first = bad[0]
        return (
            f"{len(bad)} tensors differ; the first is {first.section}/{first.name} ({first.status})"
        )
    if not any(r.status == "ok" for r in rows):
        return (
            f"no tensor compared: {b} holds none of the first folder's tensors "
            "(inputs, activations, loss, grads, step, weights as .safetensors or .npz)"
        )
    return None
