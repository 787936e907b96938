"""Checkpoint files: written atomically, read with ``weights_only=True``, checked against the model.

A checkpoint is one dict of tensors and plain data: model, optimizer, scheduler, grad scaler, every
RNG state, the loop position (epoch and batch), callback state, history and the run configuration.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlenv.errors import CheckpointError

FORMAT_VERSION = 1
COMPILE_PREFIX = "_orig_mod."


def strip_compile_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Keys as the plain model names them, whether or not it was wrapped by ``torch.compile``."""
    return {k.replace(COMPILE_PREFIX, ""): v for k, v in state.items()}


def serialize(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename: old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    state = {"format_version": FORMAT_VERSION, **state}
    atomic_write_bytes(path, serialize(state))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; every way it can be unusable is one line naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (truncated checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        OSError,
        EOFError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        ValueError,
    ) as exc:
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
        if "Unsupported global" in text:  # a class or function: code we will not run
            raise CheckpointError(
                f"{path}: refused to load: it holds objects other than tensors and plain data "
                "(mlenv never executes code from a checkpoint)"
            ) from None
        if "Weights only load failed" in text:
            reason = "the data is not a valid checkpoint"
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({reason})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not an mlenv checkpoint (no 'model' entry)")
    version = state.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this mlenv reads "
            f"({FORMAT_VERSION}); upgrade mlenv"
        )
    state["model"] = strip_compile_prefix(state["model"])
    return state


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load weights into ``model`` after checking every name and shape, with a one-line error."""
    target = getattr(model, "_orig_mod", model)
    expected = target.state_dict()
    state = strip_compile_prefix(state)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise CheckpointError(f"{path}: does not fit the model: missing keys: {', '.join(missing)}")
    if unexpected:
        raise CheckpointError(
            f"{path}: does not fit the model: unexpected keys: {', '.join(unexpected)}"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{path}: layer {key} has shape {list(tensor.shape)}, "
                f"the model expects {list(expected[key].shape)}"
            )
    target.load_state_dict(state)


def resolve_checkpoint(spec: str, checkpoints_dir: Path | None) -> Path:
    """``last``/``best`` inside a run's checkpoint folder, or a path."""
    if spec in ("last", "best"):
        if checkpoints_dir is None:
            raise CheckpointError(f"resume: {spec!r} needs a run folder (use --resume-run RUN_DIR)")
        return checkpoints_dir / f"{spec}.pt"
    path = Path(spec)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        return candidate if candidate.exists() else path / "last.pt"
    return path
