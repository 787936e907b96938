"""What the steps share: the book's data files, results.json, and the plotting module."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from mlenv.errors import DataError
from mlenv.train.checkpoint import atomic_write_bytes

# The book's data (MIT licence), fetched once into a cache when no --data is given.
BOOK_URL = "https://raw.githubusercontent.com/oreilly-japan/deep-learning-from-scratch-5/main"
BOOK_FILES = {
    "height.txt": (
        "step02/height.txt",
        "ffd6d443e89b397f7d1282e81e699382de831ca9e1c1d65513afbb8123e9fed7",
    ),
    "height_weight.txt": (
        "step03/height_weight.txt",
        "a149dacbc33240e398020604e2d1f19b11fa9a5bfaccdde3f1c5df98458fe3a0",
    ),
    "old_faithful.txt": (
        "step04/old_faithful.txt",
        "524af5093c5b20e1e044591fd9a4d4202bd86cf5fb7228b66fbb837af98cf144",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("MLENV_CACHE", Path.home() / ".cache" / "mlenv")) / "dlfs5"


def book_file(name: str, given: str | None = None, base_url: str | None = None) -> Path:
    """The data file a step reads: ``given`` (--data), else ``$MLENV_BOOK_DATA/name``, else the
    cached copy, else downloaded from the book's repository into the cache (checksum checked)."""
    if given:
        path = Path(given)
        if path.is_dir():
            raise DataError(f"{path}: is a folder, not a file; give a file with --data FILE")
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        return path
    folder = os.environ.get("MLENV_BOOK_DATA")
    if folder and (Path(folder) / name).is_file():
        return Path(folder) / name
    cached = cache_dir() / name
    if cached.is_file():
        return cached
    remote, sha256 = BOOK_FILES[name]
    url = f"{base_url or os.environ.get('MLENV_BOOK_URL', BOOK_URL)}/{remote}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            payload = response.read()
    except OSError as exc:
        raise DataError(
            f"cannot download {name} from {url} ({exc}); pass the file with --data FILE or set "
            "MLENV_BOOK_DATA to a folder holding it"
        ) from None
    if hashlib.sha256(payload).hexdigest() != sha256:
        raise DataError(f"{url}: the download's checksum does not match the book's {name}")
    atomic_write_bytes(cached, payload)
    return cached


def load_matrix(path: Path, columns: int, what: str) -> np.ndarray:
    """The file's numbers, ``columns`` a line (``what`` says what they are, for the error):
    shape (N,) for one column, else (N, columns). A file of another shape, with fewer than two
    rows, or with a value that is not a finite number is a one-line ``DataError``.

    >>> load_matrix(Path("old_faithful.txt"), 2, "duration and waiting time")  # doctest: +SKIP
    """
    import io
    import warnings

    from mlenv.data.text import read_utf8

    text, _ = read_utf8(path, "--data")
    expected = f"{columns} number{'s' if columns > 1 else ''} a line ({what})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file: reported below
            xs = np.loadtxt(io.StringIO(text), ndmin=2)  # (N, D)
    except ValueError as exc:
        raise DataError(f"{path}: not a file of numbers, expected {expected} ({exc})") from None
    if xs.shape[1] != columns:
        raise DataError(
            f"{path}: {xs.shape[1]} number{'s' if xs.shape[1] != 1 else ''} a line; expected "
            f"{expected}"
        )
    if len(xs) < 2:
        raise DataError(f"{path}: {len(xs)} line(s) of numbers; expected at least 2 of {expected}")
    bad = ~np.isfinite(xs).all(axis=1)
    if bad.any():
        raise DataError(
            f"{path}: data row {int(bad.argmax()) + 1} holds a value that is not finite"
        )
    return xs[:, 0] if columns == 1 else xs


def write_results(folder: Path, results: dict[str, Any]) -> Path:
    target = folder / "results.json"
    text = json.dumps(results, indent=2, default=lambda v: np.asarray(v).tolist()) + "\n"
    atomic_write_bytes(target, text.encode())
    return target


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> str:
    from mlenv.track.plots import save_figure

    save_figure(fig, path)
    return str(path)
