"""Checkpoint files: written atomically, read with ``weights_only=True``, checked against the model.

A checkpoint is one dict of tensors and plain data: model, optimizer, scheduler, grad scaler, every
RNG state, the loop state (``TrainState``: position, sums, callbacks, history), pending gradients of
an unfinished accumulation group and the run configuration. ``sha256`` is a digest of all of it
(tensor bytes included), checked on load, so flipped bits are found rather than trained on.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlenv.errors import CheckpointError

FORMAT_VERSION = 2
COMPILE_PREFIX = "_orig_mod."


def strip_compile_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Keys as the plain model names them, whether or not it was wrapped by ``torch.compile``."""
    return {k.replace(COMPILE_PREFIX, ""): v for k, v in state.items()}


def state_digest(value: Any) -> str:
    """SHA-256 over a nested structure of dicts, lists, tensors and plain values, in a fixed
    order (dict keys sorted), tensors by dtype, shape and bytes."""
    digest = hashlib.sha256()

    def walk(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            tensor = item.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            if tensor.numel():
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(item, dict):
            digest.update(b"{")
            for key in sorted(item, key=repr):
                digest.update(repr(key).encode())
                walk(item[key])
            digest.update(b"}")
        elif isinstance(item, list | tuple):
            digest.update(b"[")
            for element in item:
                walk(element)
            digest.update(b"]")
        else:
            digest.update(repr(item).encode())

    walk(value)
    return digest.hexdigest()


def serialize(state: dict[str, Any]) -> bytes:
    """Checkpoint bytes, with the digest of the state inside (``sha256``)."""
    state = {k: v for k, v in state.items() if k != "sha256"}
    buffer = io.BytesIO()
    torch.save({**state, "sha256": state_digest(state)}, buffer)
    return buffer.getvalue()


def _file_mode() -> int:
    """0666 less the process umask: what ``open()`` would give a new file (0644 by default)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename: old or new, never half.
    The file gets the mode a plain ``open()`` would give it (the umask applies). A path that
    exists and is not a regular file (a device, a FIFO, a folder) is refused, never replaced."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        mode = os.stat(path).st_mode if path.exists() else 0
        if path.exists() and not stat.S_ISREG(mode):
            from mlenv.errors import OutputError

            raise OutputError(f"{path}: exists and is not a regular file; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
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


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; every way it can be unusable is one line naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (truncated checkpoint)")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # torch raises many kinds for a file that is not a checkpoint
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
        if "Unsupported global" in text or "GLOBAL" in text:  # a class or function
            raise CheckpointError(
                f"{path}: refused to load: it is a pickle that would create Python objects or "
                "run code, not only tensors and plain data (mlenv never executes code from a "
                "checkpoint; load it yourself only if you trust its source)"
            ) from None
        if isinstance(exc, zipfile.BadZipFile | EOFError | pickle.UnpicklingError | KeyError):
            reason = "the data is not a PyTorch checkpoint"
        elif "Weights only load failed" in text:
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
    if version < FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} was written by an older mlenv; "
            f"this one reads version {FORMAT_VERSION} (retrain, or use the older mlenv)"
        )
    stored = state.pop("sha256", None)
    if stored is None:
        raise CheckpointError(f"{path}: not an mlenv checkpoint (it carries no SHA-256 digest)")
    if state_digest(state) != stored:
        raise CheckpointError(
            f"{path}: integrity check failed: the contents do not match their SHA-256 "
            "(the file was damaged or edited after it was written)"
        )
    for key in ("config", "state"):
        if key not in state:
            raise CheckpointError(f"{path}: not an mlenv checkpoint (no {key!r} entry)")
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
