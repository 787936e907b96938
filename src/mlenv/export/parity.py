"""Compare two golden folders tensor by tensor, in execution order, and name the first place they
disagree. The second folder may come from another framework: it may hold a subset of the tensors,
as ``.safetensors`` or ``.npz`` files with the same names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlenv.errors import MlenvError

# The order a computation happens in: what goes in, each layer, the loss, the backward pass, the
# step; the stored weights last (a port that loaded them wrong shows up in the first layer).
SECTIONS = ("inputs", "activations", "loss", "grads", "step", "weights")


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
    a, b = Path(a), Path(b)
    if not (a / "manifest.json").is_file():
        raise MlenvError(f"{a}: not a golden folder (no manifest.json)")
    if not b.is_dir():
        raise MlenvError(f"{b}: no such folder")
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
