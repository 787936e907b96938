"""What the command-line modules share (``cli`` and the commands that live beside their code:
``doctor.command``, ``generate``): an argparse parser whose mistakes are one line."""

from __future__ import annotations

import argparse
from typing import Any

from mlenv.errors import ConfigError


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are :class:`ConfigError` (one line, exit 2) instead of a usage
    block; no abbreviated flags, since unknown flags may be a recipe's fields."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}; `{self.prog} --help` shows the flags")
