"""Checks for the paths a user names for a command to write (``--out``, ``--plot``): nothing the
command reads, nothing inside a run folder and nothing that is not a plain file is ever
overwritten, and an existing file only with ``--force``.

Every refusal is an :class:`~mlenv.errors.OutputError` whose message names the path and what to do.

>>> check_output_file("preds.csv", inputs=["new.csv"])  # doctest: +SKIP
PosixPath('preds.csv')
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from mlenv.errors import OutputError


def run_folder_of(path: str | Path) -> Path | None:
    """The run folder that holds ``path`` (or is ``path``), or ``None``.

    A run folder holds two of ``summary.json``, ``config.yaml`` and ``checkpoints/``: one marker
    alone is common in a user's project folder (a ``config.yaml`` or ``checkpoints/`` at its
    root), two together are what ``runs/<experiment>/<run-id>/`` holds from its first epoch."""
    path = Path(os.path.abspath(path))
    for folder in (path, *path.parents):
        markers = (
            (folder / "summary.json").is_file(),
            (folder / "config.yaml").is_file(),
            (folder / "checkpoints").is_dir(),
        )
        if sum(markers) >= 2:
            return folder
    return None


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()  # follows symbolic links: a link to an input is that input
    except (FileNotFoundError, NotADirectoryError):
        return None


def _refuse_inputs(path: Path, flag: str, inputs: Iterable[str | Path | None]) -> None:
    """``path`` is none of ``inputs`` (by device and inode: symbolic and hard links too)."""
    target = _stat(path)
    for given in inputs:
        if given is None:
            continue
        source = _stat(Path(given))
        same = (
            _same_file(target, source)
            if target is not None and source is not None
            else Path(os.path.abspath(path)).resolve() == Path(os.path.abspath(given)).resolve()
        )
        if same:
            raise OutputError(
                f"{flag}: {path} is {given}, which this command reads; "
                "write the result to another path"
            )


def _refuse_run_folder(path: Path, flag: str) -> None:
    for candidate in (path, path.resolve()):  # the path as named and where its links lead
        folder = run_folder_of(candidate)
        if folder is not None:
            raise OutputError(
                f"{flag}: {path} is inside the run folder {folder}, which mlenv writes and "
                "`mlenv runs delete` removes; write outside it"
            )


def _under_cwd(folder: Path) -> bool:
    return Path(os.path.abspath(folder)).resolve().is_relative_to(Path.cwd().resolve())


def _parent_ready(path: Path, flag: str, mkdir: bool) -> None:
    """The folder that will hold ``path`` exists and is writable; a missing one is created when
    it lies below the current folder, or anywhere with ``--mkdir``."""
    parent = Path(os.path.abspath(path)).parent
    if parent.exists():
        if not parent.is_dir():
            raise OutputError(f"{flag}: {parent} is not a folder, so {path} cannot be written")
    else:
        existing = next(p for p in parent.parents if p.exists())
        if not existing.is_dir():
            raise OutputError(f"{flag}: {existing} is not a folder, so {path} cannot be written")
        if not (mkdir or _under_cwd(parent)):
            raise OutputError(
                f"{flag}: the folder {parent} does not exist; create it, or pass --mkdir "
                "to let mlenv create it"
            )
        parent = existing
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag}: cannot write in {parent} (permission denied)")


def check_output_file(
    path: str | Path,
    *,
    inputs: Iterable[str | Path | None] = (),
    force: bool = False,
    mkdir: bool = False,
    append: bool = False,
    flag: str = "--out",
) -> Path:
    """``path`` as a ``Path`` once it is safe to write a file there; missing parent folders are
    created (below the current folder, or anywhere with ``mkdir``).

    Refused, whatever ``force`` says: one of ``inputs`` (also through a symbolic or hard link),
    anything inside a run folder, anything that exists and is not a regular file (a folder, a
    FIFO, a device). An existing regular file is refused unless ``force`` (or ``append``, for a
    command that adds lines to its results file).

    >>> check_output_file("out/preds.csv", inputs=["data.csv"], force=True)  # doctest: +SKIP
    PosixPath('out/preds.csv')
    """
    path = Path(path)
    _refuse_inputs(path, flag, inputs)
    _refuse_run_folder(path, flag)
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    if mode is not None:
        if stat.S_ISLNK(mode) and _stat(path) is None:
            raise OutputError(
                f"{flag}: {path} is a symbolic link to nothing; remove it or give another path"
            )
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise OutputError(f"{flag}: {path} is a folder; give a file name (e.g. {path}/out)")
        if not stat.S_ISREG(mode):
            raise OutputError(
                f"{flag}: {path} exists and is not a regular file (a device, FIFO or socket); "
                "give another path"
            )
        if not (force or append):
            raise OutputError(f"{flag}: {path} exists; pass --force to overwrite it")
        if not os.access(path, os.W_OK):
            raise OutputError(f"{flag}: cannot write {path} (permission denied)")
    _parent_ready(path, flag, mkdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def check_output_dir(
    path: str | Path,
    *,
    inputs: Iterable[str | Path | None] = (),
    force: bool = False,
    mkdir: bool = False,
    flag: str = "--out",
) -> Path:
    """``path`` as a ``Path`` once it is safe for a command to write its files into that folder;
    the folder is created (its missing parents below the current folder, or anywhere with
    ``mkdir``).

    Refused, whatever ``force`` says: a run folder or a folder inside one, a folder that is or
    holds one of ``inputs``, anything that exists and is not a folder. A folder that already
    holds files is refused unless ``force``.
    """
    path = Path(path)
    _refuse_inputs(path, flag, inputs)
    _refuse_run_folder(path, flag)
    resolved = Path(os.path.abspath(path)).resolve()
    for given in inputs:
        if given is not None and Path(os.path.abspath(given)).resolve().is_relative_to(resolved):
            raise OutputError(
                f"{flag}: {path} holds {given}, which this command reads; "
                "write the result to another folder"
            )
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OutputError(f"{flag}: {path} exists and is not a folder; give a folder name")
        if not force and any(path.iterdir()):
            raise OutputError(
                f"{flag}: the folder {path} is not empty; pass --force to write into it "
                "(files of the same name are replaced)"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{flag}: cannot write in {path} (permission denied)")
        return path
    _parent_ready(path, flag, mkdir)
    path.mkdir(parents=True, exist_ok=True)
    return path
