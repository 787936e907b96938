"""`mlenv generate` (being written)."""

from __future__ import annotations

from mlenv.errors import ConfigError


def cmd_generate(argv: list[str]) -> int:
    import argparse

    argparse.ArgumentParser(prog="mlenv generate", description="(being written)").parse_known_args(
        argv
    )
    raise ConfigError("generate: not built yet")
