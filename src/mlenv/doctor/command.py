"""`mlenv doctor` and `mlenv lr-find`: build a recipe's data, model and task (or a run's), run the
checks of ``mlenv.doctor`` on them, print one verdict per check with its evidence and fix, and
write the plots and ``doctor.json`` / ``lr_find.json`` into ``--out``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from mlenv.commandline import OneLineParser
from mlenv.doctor.verdict import Verdict, format_verdicts
from mlenv.errors import ConfigError

DATA_CHECKS = ("leakage", "scaling", "class balance", "constant columns")
CHECKS = ("data", "nonfinite", "initial-loss", "gradients", "overfit", "lr", "lm")

DOCTOR_USAGE = (
    "mlenv doctor RECIPE [recipe flags] [--checks LIST] [--out DIR] [--force]\n"
    "       mlenv doctor --run RUN_DIR [--checks LIST] [--out DIR] [--force]"
)


def _positive_float(flag: str) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"accepts a number > 0, got {text!r}")
        return value

    parse.__name__ = flag
    return parse


def _int_at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"accepts an integer >= {low}, got {text!r}")
        return value

    return parse


def _check_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"accepts a comma-separated list of {', '.join(CHECKS)}, got {text!r}"
        )
    return names


def _lr_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--start-lr",
        type=_positive_float("--start-lr"),
        default=1e-7,
        help="first learning rate of the sweep (default 1e-7)",
    )
    parser.add_argument(
        "--end-lr",
        type=_positive_float("--end-lr"),
        default=10.0,
        help="last learning rate of the sweep (default 10)",
    )
    parser.add_argument(
        "--lr-steps",
        type=_int_at_least(10),
        default=100,
        help="steps of the sweep, one batch each (default 100)",
    )


def _out_flags(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--out", default=None, help=f"folder for plots and JSON (default {default})"
    )
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out folder")


def _doctor_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="mlenv doctor",
        usage=DOCTOR_USAGE,
        description="Short checks of why a run fails, each with a verdict (ok, warn, fail, skip), "
        "the evidence and a fix:\n"
        "  data          duplicate rows across train/test, outliers that dominate the scaling,\n"
        "                class imbalance, constant columns\n"
        "  nonfinite     the first loss term and module that give NaN/inf\n"
        "  initial-loss  the untrained loss against chance (ln C, ln 2 for binary)\n"
        "  gradients     gradient norm per layer, layers without gradient, dead ReLUs (plot)\n"
        "  overfit       one batch must reach a loss near 0; if not, a bug, not tuning\n"
        "  lr            learning-rate range test against --lr (plot; also `mlenv lr-find`)\n"
        "  lm            language models: tokenizer round trip, padding ignored by the loss\n"
        "Exit status 1 when a check fails. `mlenv doctor RECIPE --help` adds the recipe's flags.",
    )
    parser.add_argument("--run", metavar="RUN_DIR", help="a finished or failed run folder")
    parser.add_argument(
        "--checks",
        type=_check_list,
        default=list(CHECKS),
        help=f"which checks, comma-separated (default all: {','.join(CHECKS)})",
    )
    parser.add_argument(
        "--overfit-steps",
        type=_int_at_least(1),
        default=500,
        help="optimizer steps of the overfit check (default 500)",
    )
    _lr_flags(parser)
    _out_flags(parser, "doctor-out")
    return parser


def _lr_find_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="mlenv lr-find",
        usage="mlenv lr-find RECIPE [recipe flags] [--start-lr LR] [--end-lr LR] "
        "[--lr-steps N] [--out DIR] [--force]",
        description="Learning-rate range test: train a copy of the recipe's model while the "
        "learning rate grows exponentially, plot the smoothed loss against it, and suggest the "
        "lr of the steepest fall. `mlenv lr-find RECIPE --help` adds the recipe's flags.",
    )
    _lr_flags(parser)
    _out_flags(parser, "lr-find-out")
    return parser


def _recipe_config(prog: str, rest: list[str], parser: OneLineParser) -> Any:
    """The recipe named first in ``rest``, resolved with the rest of the flags."""
    from mlenv.config import build_parser, load_recipe, resolve

    if not rest or rest[0].startswith("-"):
        raise ConfigError(
            f"{prog}: name a recipe (`mlenv list recipes`)"
            + (" or give --run RUN_DIR" if prog == "mlenv doctor" else "")
        )
    recipe = load_recipe(rest[0])
    if "-h" in rest[1:] or "--help" in rest[1:]:
        parser.print_help()
        print()
        build_parser(recipe, f"{prog} {recipe.name}").print_help()
        raise SystemExit(0)
    return resolve(recipe, rest[1:], prog=f"{prog} {recipe.name}")


def _run_config(run_dir: str, rest: list[str]) -> tuple[Any, Path]:
    import yaml

    from mlenv.config import recipe_from_config, resolve

    folder = Path(run_dir)
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"--run: {folder} is not a run folder (no config.yaml)")
    try:
        base = yaml.safe_load(config_file.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--run: {config_file} is not valid YAML ({exc})") from None
    if not isinstance(base, dict) or "recipe" not in base:
        raise ConfigError(f"--run: {config_file} names no recipe")
    cfg = resolve(recipe_from_config(base["recipe"]), rest, prog="mlenv doctor --run", base=base)
    return cfg, folder


def _out_dir(given: str | None, default: str, force: bool, cfg: Any) -> Path:
    from mlenv.track.outputs import check_output_dir

    inputs = [v for k, v in cfg.data.items() if k in ("data", "path") and v]
    return check_output_dir(given or default, inputs=inputs, force=force)


def _write_json(path: Path, value: Any) -> None:
    from mlenv.train.checkpoint import atomic_write_bytes

    text = json.dumps(value, indent=2, default=str) + "\n"
    atomic_write_bytes(path, text.encode())


def cmd_doctor(argv: list[str]) -> int:
    parser = _doctor_parser()
    if argv[:1] in (["-h"], ["--help"]):
        parser.print_help()
        return 0
    args, rest = parser.parse_known_args(argv)
    if args.run:
        cfg, run_dir = _run_config(args.run, rest)
    else:
        cfg, run_dir = _recipe_config("mlenv doctor", rest, parser), None
    out = _out_dir(args.out, "doctor-out", args.force, cfg)
    verdicts = diagnose(cfg, args.checks, out, args, run_dir)
    print(format_verdicts(verdicts))
    _write_json(
        out / "doctor.json", {"recipe": cfg.recipe, "verdicts": [v.to_dict() for v in verdicts]}
    )
    print(f"plots and doctor.json in {out}")
    return 1 if any(v.status == "fail" for v in verdicts) else 0


def diagnose(
    cfg: Any, checks: list[str], out: Path, options: Any, run_dir: Path | None = None
) -> list[Verdict]:
    """The verdicts of ``checks`` on the recipe configuration ``cfg`` (data, a freshly
    initialised model, task), plots written into ``out``; with ``run_dir``, also what the run
    left (its status, its baselines, its weights)."""
    from mlenv.doctor import data_checks
    from mlenv.doctor.gradients import check_gradient_flow
    from mlenv.doctor.loss_checks import check_initial_loss
    from mlenv.doctor.lr_find import check_learning_rate, lr_range_test, plot_lr_find
    from mlenv.doctor.nonfinite import check_nonfinite
    from mlenv.doctor.overfit import check_overfit_batch
    from mlenv.doctor.probe import first_batch, make_probe
    from mlenv.train.run import build

    bundle, model, task = build(cfg)
    verdicts: list[Verdict] = []
    if run_dir is not None:
        verdicts += run_verdicts(run_dir)
    if "data" in checks:
        verdicts += data_checks.data_verdicts(bundle)
    c = cfg.train
    batch = first_batch(bundle.train, c.batch_size, c.seed)

    def probe() -> Any:  # every check starts from the same untrained model
        return make_probe(model, task, c, batch)

    if "nonfinite" in checks:
        verdicts.append(check_nonfinite(probe()))
    if "initial-loss" in checks:
        verdicts.append(check_initial_loss(probe()))
    if "gradients" in checks:
        verdicts.append(check_gradient_flow(probe(), out / "gradient_flow.png"))
    if "overfit" in checks:
        verdicts.append(check_overfit_batch(probe(), options.overfit_steps))
    if "lr" in checks:
        result = lr_range_test(
            probe(), bundle.train, options.start_lr, options.end_lr, options.lr_steps
        )
        plot_lr_find(result, out / "lr_find.png")
        _write_json(out / "lr_find.json", result.to_dict())
        verdict = check_learning_rate(result, c.lr)
        if any(v.status == "fail" for v in verdicts if v.check in DATA_CHECKS):
            verdict.fix += " (measured on the data as it is: fix the failing data checks first)"
        verdicts.append(verdict)
    if "lm" in checks:
        verdicts += lm_verdicts(cfg, bundle, task, probe())
    return verdicts


def lm_verdicts(cfg: Any, bundle: Any, task: Any, probe: Any) -> list[Verdict]:
    """Tokenizer round trip and padding, for a language-model task; nothing for other tasks."""
    from mlenv.doctor.lm_checks import check_padding_ignored, check_round_trip
    from mlenv.train.tasks import LanguageModelTask

    if not isinstance(task, LanguageModelTask):
        return []
    out = []
    tokenizer = _tokenizer(bundle)
    text = _sample_text(cfg)
    if tokenizer is not None and text:
        out.append(check_round_trip(tokenizer, text))
    else:
        out.append(Verdict("tokenizer round trip", "skip", "the data set exposes no tokenizer"))
    out.append(check_padding_ignored(probe.trainer.criterion, int(probe.outputs().shape[-1])))
    return out


def _tokenizer(bundle: Any) -> Any:
    """The tokenizer a text data set saved in its state (``text-lm``), or None."""
    from mlenv.data import text

    state = bundle.state.get("tokenizer")
    from_state = getattr(text, "tokenizer_from_state", None)
    return from_state(state) if isinstance(state, dict) and from_state is not None else None


def _sample_text(cfg: Any) -> str:
    path = cfg.data.get("path")
    if not path:
        return ""
    from mlenv.data.text import read_utf8

    return read_utf8(Path(path), "--path")[0][:2000]


def run_verdicts(run_dir: Path) -> list[Verdict]:
    """What a run's summary says: how it ended, and baselines far ahead of the model."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return [Verdict("run", "skip", f"{run_dir} has no readable summary.json")]
    out = []
    status = summary.get("status", "unknown")
    reason = summary.get("error") or summary.get("stop_reason") or ""
    out.append(
        Verdict(
            "run",
            "ok"
            if status == "finished"
            else "fail"
            if status in ("failed", "diverged")
            else "warn",
            f"status {status}" + (f": {reason}" if reason else ""),
            "the checks below say why" if status != "finished" else "",
        )
    )
    gap = baseline_gap(summary)
    if gap is not None:
        out.append(gap)
    return out


def baseline_gap(summary: dict[str, Any]) -> Verdict | None:
    """The best baseline's test accuracy against the model's, from a summary with baselines."""
    from mlenv.train.baselines import baseline_warning

    model = summary.get("test_acc")
    baselines = {k: v for k, v in summary.items() if k.startswith("baseline_")}
    if model is None or not any(k.endswith("_test_acc") for k in baselines):
        return None
    line = baseline_warning(model, baselines)
    if line is None:
        return Verdict(
            "baselines", "ok", f"no baseline beats the model's test accuracy {model:.4f} by far"
        )
    return Verdict(
        "baselines",
        "fail",
        line.split(": something")[0],
        "the data checks (scaling, leakage) and the overfit and learning-rate checks say where "
        "the model loses",
    )


def cmd_lr_find(argv: list[str]) -> int:
    from mlenv.doctor.lr_find import check_learning_rate, lr_range_test, plot_lr_find
    from mlenv.doctor.probe import first_batch, make_probe
    from mlenv.train.run import build

    parser = _lr_find_parser()
    if argv[:1] in (["-h"], ["--help"]):
        parser.print_help()
        return 0
    args, rest = parser.parse_known_args(argv)
    cfg = _recipe_config("mlenv lr-find", rest, parser)
    out = _out_dir(args.out, "lr-find-out", args.force, cfg)
    bundle, model, task = build(cfg)
    c = cfg.train
    probe = make_probe(model, task, c, first_batch(bundle.train, c.batch_size, c.seed))
    result = lr_range_test(probe, bundle.train, args.start_lr, args.end_lr, args.lr_steps)
    plot = plot_lr_find(result, out / "lr_find.png")
    _write_json(out / "lr_find.json", result.to_dict())
    verdict = check_learning_rate(result, c.lr)
    print(
        f"swept lr {result.lrs[0]:.3g} .. {result.lrs[-1]:.3g} in {len(result.lrs)} steps "
        f"({result.stop_reason})"
    )
    print(
        f"suggested lr: {result.suggestion:.3g} (steepest fall of the smoothed loss); "
        f"lowest loss at lr {result.min_loss_lr:.3g}"
    )
    print(format_verdicts([verdict]).split("\n\n")[0])
    print(f"plot: {plot}")
    return 0
