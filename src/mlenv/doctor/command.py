"""`mlenv doctor` and `mlenv lr-find` (being written)."""

from __future__ import annotations

from mlenv.errors import ConfigError


def cmd_doctor(argv: list[str]) -> int:
    import argparse

    argparse.ArgumentParser(prog="mlenv doctor", description="(being written)").parse_known_args(
        argv
    )
    raise ConfigError("doctor: not built yet")


def cmd_lr_find(argv: list[str]) -> int:
    import argparse

    argparse.ArgumentParser(prog="mlenv lr-find", description="(being written)").parse_known_args(
        argv
    )
    raise ConfigError("lr-find: not built yet")
