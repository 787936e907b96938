"""The ``mlenv`` command: names in, objects out. Heavy modules are imported only by the command
that needs them, so ``mlenv --help`` starts fast.

Every failure a user can act on is one line on stderr (``mlenv: error: ...``) and exit status 2;
Ctrl-C outside training is one line and 130; a closed pipe (``mlenv runs list | head``) ends the
command quietly."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

USAGE = """usage: mlenv COMMAND [ARGS]

commands:
  train RECIPE [--flags]      train a recipe; every field is a flag (see `mlenv args RECIPE`)
  train --config FILE         train from a resolved configuration file
  train --resume-run RUN_DIR  continue a run from its folder's configuration and last checkpoint
  test --weights CKPT         evaluate a checkpoint on its recipe's test split
  predict --weights RUN_DIR|CKPT --data NEW.csv --out preds.csv [--force] [--mkdir]
                              probability and predicted label for every row of a CSV
  check data --data F.csv [--flags]    sizes, scaled feature statistics, drift/duplicate/outlier warnings
  check labels --data F.csv [--flags]  count and percentage of each label in train and test
  check loss                  BCE edge cases through every output mode, with gradients
  book stepNN [--out DIR] [--data FILE]   a step of the book path (`mlenv book list`)
  export golden --weights RUN_DIR|CKPT --out DIR [--batch-size 8] [--seed S]
                              weights, a fixed batch, activations, loss, gradients, one step
  export onnx --weights RUN_DIR|CKPT --out model.onnx   ONNX, checked against onnxruntime
  parity DIR_A DIR_B [--rtol R] [--atol A]   where two golden folders first disagree
  repeat RECIPE --seeds 0-4 [--experiment NAME] [--flags]   one recipe over several seeds, a group
  cv RECIPE --folds 5 [--repeats 2] [--experiment NAME] [--flags]   k-fold cross-validation, a group
  compare GROUP_A GROUP_B [...] --metric test_acc [--alpha 0.05] [--unpaired] [--plot PNG]
                              is it really better?
  sweep RECIPE --space FILE --trials N [--workers K] [--storage URL] [--study NAME]
        [--pruner median|hyperband|none] [--metric val_loss --mode min] [--flags]
                              an Optuna search; every trial is a run (resumable: run it again)
  sweep show STUDY [--storage URL] [--out DIR]   best trials, importances, plots
  doctor RECIPE [--flags] | doctor --run RUN_DIR   short checks of why a run fails, with fixes
  lr-find RECIPE [--flags]    learning-rate range test: loss against lr, a suggested lr
  generate --weights RUN --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K]
           [--top-p P] [--seed S]   text from a trained language model, streamed
  runs list [--experiment E] [--sort METRIC] | runs show ID | runs delete ID [--yes] [--force]
  bench RECIPE|MODEL [--batch-sizes 1,32,256] [--input-shape 20] [--threads N] [--out FILE.jsonl]
                              parameters, FLOPs, latency percentiles, throughput, peak memory
  (runs, repeat, cv, compare take --store PATH; the default is runs/mlenv.db)
  args RECIPE [--flags]       print the fully resolved configuration as YAML (feed back: --config)
  list models|datasets|recipes|trainers
  demo [--flags]              train the digits MLP end to end and show where everything went

`mlenv COMMAND --help` shows a command's flags. A flag may be spelled --foo-bar or --foo_bar.
A path given to --out or --plot never replaces a file the command reads, a run folder's files, or
anything but a regular file; an existing file needs --force, and a missing folder outside the
current one needs --mkdir."""

COMMANDS = (
    "train",
    "args",
    "list",
    "demo",
    "test",
    "predict",
    "check",
    "book",
    "export",
    "parity",
    "repeat",
    "cv",
    "compare",
    "runs",
    "bench",
    "sweep",
    "doctor",
    "lr-find",
    "generate",
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return code
    except KeyboardInterrupt:
        print("\nmlenv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _stdout_to_devnull()
        return 141  # 128 + SIGPIPE, what a shell reports for `yes | head`
    except SystemExit as exc:  # a --help that printed and exited
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(f"mlenv: {exc.code}", file=sys.stderr)
        return 1


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"mlenv: error: unknown command {command!r}; commands: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    from mlenv.errors import MlenvError

    handlers = {
        "train": cmd_train,
        "args": cmd_args,
        "list": cmd_list,
        "demo": cmd_demo,
        "test": cmd_test,
        "predict": cmd_predict,
        "check": cmd_check,
        "book": cmd_book,
        "export": cmd_export,
        "parity": cmd_parity,
        "repeat": cmd_repeat,
        "cv": cmd_cv,
        "compare": cmd_compare,
        "runs": cmd_runs,
        "bench": cmd_bench,
        "sweep": cmd_sweep,
        "doctor": cmd_doctor,
        "lr-find": cmd_lr_find,
        "generate": cmd_generate,
    }
    try:
        return handlers[command](rest)
    except MlenvError as exc:
        trainer = sys.modules.get("mlenv.train.trainer")  # imported only by training commands
        if trainer is not None and isinstance(exc, trainer.TrainingInterrupted):
            print(f"mlenv: {exc}", file=sys.stderr)
            return 130
        print(f"mlenv: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise
    except OSError as exc:
        if exc.filename is None:
            raise  # not about a path the user can fix: a bug, keep the traceback
        print(f"mlenv: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        sqlite3 = sys.modules.get("sqlite3")
        if sqlite3 is not None and isinstance(exc, sqlite3.DatabaseError):
            print(f"mlenv: error: the experiment store: {exc}", file=sys.stderr)
            return 2
        raise


def _stdout_to_devnull() -> None:
    """After a broken pipe, point stdout at /dev/null so the flush at exit stays quiet."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# -- parsing ------------------------------------------------------------------------------------
def _parser(command: str, description: str, epilog: str | None = None) -> Any:
    from mlenv.commandline import OneLineParser

    return OneLineParser(prog=f"mlenv {command}", description=description, epilog=epilog)


def _flag(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """``--foo-bar`` and the same flag spelled ``--foo_bar`` (accepted, not shown in the help)."""
    action = parser.add_argument(flag, **kwargs)
    alias = "--" + flag[2:].replace("-", "_")
    if alias != flag:
        same = {k: v for k, v in kwargs.items() if k not in ("help", "default", "required")}
        same["dest"] = action.dest
        parser.add_argument(alias, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **same)


def _write_flags(parser: argparse.ArgumentParser, what: str = "file") -> None:
    parser.add_argument(
        "--force", action="store_true", help=f"write over an existing {what} at --out"
    )
    parser.add_argument(
        "--mkdir",
        action="store_true",
        help="create missing folders of the --out path anywhere (without it: only below the "
        "current folder)",
    )


def _type(convert: Any, accepts: str) -> Any:
    """An argparse ``type`` that converts with ``convert`` and says what it accepts."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"accepts {accepts}, got {text!r}") from None

    parse.__name__ = accepts
    return parse


def _at_least(low: int) -> Any:
    def convert(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(text)
        return value

    return _type(convert, f"an integer >= {low}")


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


INT_LIST = _type(_int_list, "integers separated by commas, like 1,32,256")


def _bool(text: str) -> bool:
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in value:
        raise ValueError(text)
    return value[text.lower()]


BOOL = _type(_bool, "true or false")


def _is_help(argv: list[str]) -> bool:
    return "-h" in argv or "--help" in argv


def _take_option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """Remove ``--name VALUE`` or ``--name=VALUE`` from argv (``-`` and ``_`` alike)."""
    spellings = {name, "--" + name[2:].replace("_", "-"), "--" + name[2:].replace("-", "_")}
    for i, token in enumerate(argv):
        flag, eq, value = token.partition("=")
        if flag in spellings:
            if eq:
                return value, argv[:i] + argv[i + 1 :]
            if i + 1 < len(argv):
                return argv[i + 1], argv[:i] + argv[i + 2 :]
    return None, argv


def _recipe_and_rest(argv: list[str], command: str) -> tuple[Any, list[str], dict[str, Any]]:
    """The recipe named by the first argument, by ``--config FILE``'s ``recipe`` key, or by a
    run folder's configuration (``--resume-run``)."""
    import yaml

    from mlenv.config import load_recipe
    from mlenv.errors import ConfigError

    base: dict[str, Any] = {}
    if argv and not argv[0].startswith("-"):
        return load_recipe(argv[0]), argv[1:], base
    config_file, _ = _take_option(argv, "--config")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config: {path}: no such file")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError(f"--config: {path} is not valid YAML{where}: {problem}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--config: {path} is not a text file") from None
        if not isinstance(values, dict):
            raise ConfigError(
                f"--config: {path} holds a {type(values).__name__}, not a mapping of fields"
            )
        if "recipe" not in values:
            raise ConfigError(f"--config: {path} has no 'recipe' key; name the recipe first")
        from mlenv.config import recipe_from_config

        return recipe_from_config(values["recipe"]), argv, base
    raise ConfigError(f"{command}: name a recipe (`mlenv list recipes`) or give --config FILE")


def cmd_train(argv: list[str]) -> int:
    from mlenv.config import resolve

    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: mlenv train RECIPE [--flags] | --config FILE | --resume-run RUN_DIR\n"
            "`mlenv train RECIPE --help` lists the recipe's flags."
        )
        return 0
    resume_run, argv = _take_option(argv, "--resume-run")
    run_dir = None
    if resume_run:
        recipe, base, run_dir = _resume_run(resume_run)
        checkpoint, argv = _take_option(argv, "--resume")  # default: the run's last.pt
        if checkpoint in (None, "last", "best"):
            checkpoint = str(run_dir / "checkpoints" / f"{checkpoint or 'last'}.pt")
        cfg = resolve(recipe, [*argv, "--resume", checkpoint], base=base)
    else:
        recipe, rest, base = _recipe_and_rest(argv, "train")
        if "-h" in rest or "--help" in rest:
            from mlenv.config import build_parser

            build_parser(recipe, f"mlenv train {recipe.name}").print_help()
            return 0
        cfg = resolve(recipe, rest)
    from mlenv.train.run import run_recipe

    run_recipe(cfg, run_dir=run_dir)
    return 0


def _resume_run(run_dir_arg: str) -> tuple[Any, dict[str, Any], Path]:
    import yaml

    from mlenv.config import recipe_from_config
    from mlenv.errors import ConfigError

    run_dir = Path(run_dir_arg)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"--resume-run: {run_dir} is not a run folder (no config.yaml)")
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise ConfigError(f"--resume-run: {run_dir} has no checkpoints/last.pt to resume from")
    try:
        base = yaml.safe_load(config_file.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--resume-run: {config_file} is not valid YAML ({exc})") from None
    if not isinstance(base, dict) or "recipe" not in base:
        raise ConfigError(f"--resume-run: {config_file} names no recipe")
    return recipe_from_config(base["recipe"]), base, run_dir


def cmd_args(argv: list[str]) -> int:
    from mlenv.config import build_parser, resolve

    if argv[:1] in (["-h"], ["--help"]):
        print(
            "usage: mlenv args RECIPE [--flags] | --config FILE [--flags]\n"
            "print the fully resolved configuration as YAML (feed it back with --config FILE);\n"
            "`mlenv args RECIPE --help` lists every field of the recipe as a flag."
        )
        return 0
    recipe, rest, _ = _recipe_and_rest(argv, "args")
    if "-h" in rest or "--help" in rest:
        build_parser(recipe, f"mlenv args {recipe.name}").print_help()
        return 0
    print(resolve(recipe, rest, prog="mlenv args").to_yaml(), end="")
    return 0


LISTS = ("models", "datasets", "recipes", "trainers")


def cmd_list(argv: list[str]) -> int:
    from mlenv.errors import ConfigError

    parser = _parser("list", "the registered names and what each one is")
    parser.add_argument("what", nargs="?", default="", metavar="{" + ",".join(LISTS) + "}")
    what = parser.parse_args(argv).what
    if what == "recipes":
        from mlenv.config import load_recipe, recipe_names

        for name in recipe_names():
            r = load_recipe(name)
            print(f"{name:24s} {r.description}")
        return 0
    if what in LISTS:
        from mlenv.data import DATASETS
        from mlenv.models import MODELS
        from mlenv.train.tasks import TRAINERS

        registry = {"models": MODELS, "datasets": DATASETS, "trainers": TRAINERS}[what]
        for name in registry.names():
            print(f"{name:24s} {registry.describe(name)}")
        return 0
    raise ConfigError(f"list: accepts models, datasets, recipes or trainers, got {what!r}")


def cmd_demo(argv: list[str]) -> int:
    from mlenv.config import load_recipe, resolve
    from mlenv.train.run import run_recipe

    cfg = resolve(load_recipe("digits-mlp"), ["--experiment", "demo", *argv], prog="mlenv demo")
    print("mlenv demo: an MLP on scikit-learn's handwritten digits (1,797 8x8 images, 10 classes)")
    result = run_recipe(cfg)
    if result.run_dir is not None:
        print(f"\nrun folder: {result.run_dir}")
        print(f"loss curve: {result.summary['loss_curve']}")
        print(f"TensorBoard: tensorboard --logdir {result.run_dir / 'tensorboard'}")
    print(f"test accuracy: {result.summary['test_acc']:.4f}")
    return 0


def cmd_test(argv: list[str]) -> int:
    """Evaluate a checkpoint on its recipe's test split (the split is rebuilt from its seed)."""
    from mlenv.errors import ConfigError
    from mlenv.track.report import format_summary
    from mlenv.train.run import evaluate_run

    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: mlenv test --weights RUN_DIR|CKPT [--flags]\n"
            "Evaluates a trained run on its recipe's test split, rebuilt from the run's stored\n"
            "configuration and seed; --data FILE evaluates another file with the same columns."
        )
        return 0
    weights, argv = _take_option(argv, "--weights")
    if not weights:
        raise ConfigError("test: give the checkpoint with --weights PATH|RUN_DIR")
    metrics = evaluate_run(weights, argv, "mlenv test")
    warning = metrics.pop("warning", None)
    if warning:
        print(f"mlenv: warning: {warning}", file=sys.stderr)
    print(format_summary(metrics))
    return 0


def cmd_predict(argv: list[str]) -> int:
    """Probability and predicted label (original values) for every row of a CSV."""
    from mlenv.track.outputs import check_output_file
    from mlenv.train.run import predict_csv

    parser = _parser(
        "predict",
        "Probability and predicted label for every row of a CSV, with a trained tabular model.",
        "Other flags override the checkpoint's configuration (`mlenv args tabular-binary --help`).",
    )
    parser.add_argument("--weights", required=True, metavar="RUN_DIR|CKPT", help="trained model")
    parser.add_argument("--data", required=True, metavar="NEW.csv", help="rows to predict")
    parser.add_argument("--out", required=True, metavar="FILE.csv", help="predictions to write")
    _flag(
        parser,
        "--no-header",
        nargs="?",
        const=True,
        default=None,
        type=BOOL,
        metavar="true|false",
        help="the CSV has no header row (a bare switch, or true/false; default: the recipe's)",
    )
    _write_flags(parser)
    args, overrides = parser.parse_known_args(argv)
    out = check_output_file(
        args.out, inputs=[args.weights, args.data], force=args.force, mkdir=args.mkdir
    )
    count, accuracy = predict_csv(args.weights, args.data, str(out), args.no_header, overrides)
    print(
        f"wrote {count} predictions to {out}"
        + (f"; accuracy against the file's labels {accuracy:.4f}" if accuracy is not None else "")
    )
    return 0


def cmd_check(argv: list[str]) -> int:
    from mlenv.errors import ConfigError

    parser = _parser(
        "check",
        "Look at the data and the loss before training.",
        "`mlenv check data --help` lists the tabular recipe's flags (--data, --target, ...).",
    )
    checks = parser.add_subparsers(dest="what", required=True, metavar="{data,labels,loss}")
    for name, what in (
        ("data", "sizes, scaled feature statistics, drift/duplicate/outlier warnings"),
        ("labels", "count and percentage of each label in train and test"),
    ):  # their flags are the tabular recipe's, parsed (and --help printed) by config.resolve
        checks.add_parser(name, add_help=False, help=what)
    checks.add_parser(
        "loss",
        help="BCE edge cases through every output mode, with gradients",
        description="BCE edge cases through every output mode, with gradients; exit 1 when a "
        "clamped mode gives a wrong loss or gradient.",
    )
    args, rest = parser.parse_known_args(argv)
    if args.what == "loss":
        if rest:
            raise ConfigError(f"check loss: takes no arguments, got {' '.join(rest)}")
        from mlenv.doctor.loss_checks import format_loss_table, loss_table

        rows = loss_table()
        print(format_loss_table(rows))
        bad = [r for r in rows if r["mode"] != "unclamped" and not r["ok"]]
        return 1 if bad else 0
    from mlenv.config import load_recipe, resolve
    from mlenv.data.tabular import load_split
    from mlenv.doctor.data_checks import data_report, label_report

    cfg = resolve(load_recipe("tabular-binary"), rest, prog=f"mlenv check {args.what}")
    split = load_split(seed=cfg.train.seed, **cfg.data)  # writes --save-split, safely
    print(data_report(split) if args.what == "data" else label_report(split))
    if cfg.data.get("save_split"):
        print(f"split written to {cfg.data['save_split']}")
    return 0


def cmd_export(argv: list[str]) -> int:
    from mlenv.track.outputs import check_output_dir, check_output_file

    parser = _parser("export", "Files to port a trained model to another framework.")
    kinds = parser.add_subparsers(dest="what", required=True, metavar="{golden,onnx}")
    for name, what, out in (
        ("golden", "weights, a fixed batch, activations, loss, gradients, one step", "DIR"),
        ("onnx", "ONNX, checked against onnxruntime on a fixed batch", "FILE.onnx"),
    ):
        kind = kinds.add_parser(name, help=what, description=what)
        kind.add_argument("--weights", required=True, metavar="RUN_DIR|CKPT", help="trained model")
        kind.add_argument(
            "--out", required=True, metavar=out, help=f"where to write ({out.lower()})"
        )
        _flag(
            kind,
            "--batch-size",
            type=_at_least(1),
            default=8,
            metavar="N",
            help="rows in the fixed batch (8)",
        )
        kind.add_argument(
            "--seed", type=_at_least(0), default=0, metavar="S", help="seed of the fixed batch (0)"
        )
        _write_flags(kind, "non-empty folder" if name == "golden" else "file")
    args = parser.parse_args(argv)
    options = {"inputs": [args.weights], "force": args.force, "mkdir": args.mkdir}
    if args.what == "golden":
        from mlenv.export.golden import export_golden

        folder = export_golden(
            args.weights, check_output_dir(args.out, **options), args.batch_size, args.seed
        )
        print(f"golden vectors in {folder}: " + ", ".join(sorted(p.name for p in folder.iterdir())))
    else:
        from mlenv.export.onnx_export import export_onnx

        out = check_output_file(args.out, **options)
        export_onnx(args.weights, out, args.batch_size, args.seed)
    return 0


def cmd_parity(argv: list[str]) -> int:
    from mlenv.export.parity import compare, failure, format_rows

    parser = _parser(
        "parity",
        "Compare two golden folders tensor by tensor, in execution order, and name the first\n"
        "tensor out of tolerance (numpy.allclose(B, A, rtol, atol)). DIR_B may hold a subset of\n"
        "DIR_A's tensors, as .safetensors or .npz; exit 1 when a tensor differs or none compared.",
    )
    parser.add_argument("golden", metavar="DIR_A", help="the reference (`mlenv export golden`)")
    parser.add_argument("other", metavar="DIR_B", help="the port's tensors, same names")
    parser.add_argument(
        "--rtol",
        type=_type(float, "a number"),
        default=1e-5,
        metavar="R",
        help="relative tolerance >= 0 (1e-5)",
    )
    parser.add_argument(
        "--atol",
        type=_type(float, "a number"),
        default=1e-6,
        metavar="A",
        help="absolute tolerance >= 0 (1e-6)",
    )
    args = parser.parse_args(argv)
    rows = compare(Path(args.golden), Path(args.other), rtol=args.rtol, atol=args.atol)
    print(format_rows(rows))
    problem = failure(rows, args.other)
    if problem:
        print(f"mlenv: parity: {problem}", file=sys.stderr)
        return 1
    return 0


def _store(path: str | None) -> Any:
    from mlenv.errors import ConfigError
    from mlenv.track.store import Store

    target = Path(path or "runs/mlenv.db")
    if target.is_dir():
        raise ConfigError(f"--store: {target} is a folder; give the store file (its mlenv.db)")
    if not target.is_file():
        raise ConfigError(
            f"--store: {target} does not exist (train something first, or give --store PATH)"
        )
    with target.open("rb") as f:
        if f.read(16) != b"SQLite format 3\0":
            raise ConfigError(f"--store: {target} is not an experiment store (not SQLite)")
    return Store(target)


def _store_flag(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument(
        "--store",
        default=default,
        metavar="PATH",
        help="the experiment store (default: runs/mlenv.db)",
    )


def _recipe_parser(command: str, description: str) -> Any:
    parser = _parser(
        command,
        description,
        "Other flags are the recipe's fields (`mlenv args RECIPE --help`), --store among them.",
    )
    parser.add_argument("recipe", metavar="RECIPE", help="a recipe name or YAML file")
    return parser


def cmd_repeat(argv: list[str]) -> int:
    from mlenv.bench.experiments import parse_seeds, repeat
    from mlenv.config import load_recipe

    parser = _recipe_parser("repeat", "One recipe over several seeds, recorded as a group.")
    parser.add_argument("--seeds", required=True, metavar="SEEDS", help="0-4, or 0,3,7")
    parser.add_argument("--experiment", metavar="NAME", help="the group's name")
    args, overrides = parser.parse_known_args(argv)
    repeat(load_recipe(args.recipe), parse_seeds(args.seeds), overrides, args.experiment)
    return 0


def cmd_cv(argv: list[str]) -> int:
    from mlenv.bench.experiments import cross_validate
    from mlenv.config import load_recipe

    parser = _recipe_parser("cv", "k-fold cross-validation of a recipe, recorded as a group.")
    parser.add_argument("--folds", type=_at_least(2), default=5, metavar="K", help="folds (5)")
    parser.add_argument(
        "--repeats", type=_at_least(1), default=1, metavar="N", help="shuffled repeats (1)"
    )
    parser.add_argument("--experiment", metavar="NAME", help="the group's name")
    args, overrides = parser.parse_known_args(argv)
    cross_validate(load_recipe(args.recipe), args.folds, args.repeats, overrides, args.experiment)
    return 0


def cmd_compare(argv: list[str]) -> int:
    import inspect

    from mlenv.bench.experiments import compare_groups
    from mlenv.errors import ConfigError
    from mlenv.track.outputs import check_output_file

    parser = _parser(
        "compare",
        "Is the first group really better? Paired tests by seed or fold, effect size, bootstrap\n"
        "interval; Holm-adjusted p-values for more than two groups.",
    )
    parser.add_argument("groups", nargs="+", metavar="GROUP", help="two or more group names/ids")
    parser.add_argument("--metric", default="test_acc", help="a summary metric (test_acc)")
    parser.add_argument(
        "--alpha",
        type=_type(float, "a number in (0, 1)"),
        default=0.05,
        metavar="A",
        help="significance level (0.05)",
    )
    parser.add_argument(
        "--unpaired", action="store_true", help="compare groups whose members do not pair up"
    )
    parser.add_argument("--plot", metavar="PNG", help="write a box plot of the groups")
    _store_flag(parser)
    _write_flags(parser)
    args = parser.parse_intermixed_args(argv)
    if len(args.groups) < 2:
        raise ConfigError("compare: give at least two groups (`mlenv compare A B --metric M`)")
    if not 0 < args.alpha < 1:
        raise ConfigError(f"--alpha: accepts a number in (0, 1), got {args.alpha}")
    store = _store(args.store)
    plot = args.plot
    if plot is not None:
        plot = check_output_file(
            plot, inputs=[store.path], force=args.force, mkdir=args.mkdir, flag="--plot"
        )
    options = {}
    if args.unpaired:
        if "unpaired" not in inspect.signature(compare_groups).parameters:
            raise ConfigError("--unpaired: this version of mlenv compares paired groups only")
        options["unpaired"] = True
    compare_groups(store, args.groups, args.metric, args.alpha, plot, **options)
    return 0


def cmd_sweep(argv: list[str]) -> int:
    if argv[:1] == ["show"]:
        return _sweep_show(argv[1:])
    import os

    from mlenv.bench.sweep import (
        PRUNERS,
        WorkerProcesses,
        check_trial_runs,
        open_sweep,
        plan_sweep,
        run_worker,
        shown_url,
        summary_lines,
    )
    from mlenv.config import load_recipe

    parser = _recipe_parser(
        "sweep",
        "An Optuna search over the fields a --space file names. Every trial is a run in the store\n"
        "(group: the study's name); per-epoch values of --metric drive the pruner. Running the\n"
        "same command again continues the study until it has --trials trials.\n"
        "`mlenv sweep show STUDY` prints the best trials and importances and draws the plots.",
    )
    parser.add_argument("--space", required=True, metavar="FILE", help="the search space (YAML)")
    parser.add_argument(
        "--trials", required=True, type=_at_least(1), metavar="N", help="trials in the study"
    )
    parser.add_argument("--study", metavar="NAME", help="the study's name (RECIPE-sweep)")
    parser.add_argument(
        "--storage", metavar="URL", help="a database URL (sqlite:///RUNS_DIR/optuna.db)"
    )
    parser.add_argument(
        "--workers", type=_at_least(1), default=1, metavar="K", help="worker processes (1)"
    )
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="(median)")
    _flag(
        parser,
        "--pruner-startup",
        type=_at_least(0),
        default=5,
        metavar="N",
        help="median: finished trials before any pruning (5)",
    )
    _flag(
        parser,
        "--pruner-warmup",
        type=_at_least(0),
        default=0,
        metavar="E",
        help="median: epochs of a trial before it may be pruned (0)",
    )
    parser.add_argument("--metric", help="the per-epoch metric to optimise (the recipe's monitor)")
    parser.add_argument("--mode", choices=("min", "max"), help="(inferred from --metric)")
    parser.add_argument("--spawned", action="store_true", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    sweep = plan_sweep(
        load_recipe(args.recipe),
        args.space,
        args.trials,
        overrides,
        study=args.study,
        storage=args.storage,
        metric=args.metric,
        mode=args.mode,
        pruner=args.pruner,
        pruner_startup=args.pruner_startup,
        pruner_warmup=args.pruner_warmup,
    )
    if args.spawned:  # a worker of `--workers K`: the parent checked and reports
        run_worker(sweep)
        return 0
    check_trial_runs(sweep)
    open_sweep(sweep)  # the study and its tables exist before any worker starts
    print(
        f"sweep {sweep.study_name}: recipe {sweep.recipe.name}, {sweep.trials} trials, "
        f"{sweep.metric} ({sweep.mode}), pruner {sweep.pruner}, {args.workers} worker(s)\n"
        f"study in {shown_url(sweep.storage_url)}; runs in "
        f"{Path(sweep.runs_dir) / sweep.study_name}"
    )
    code = 0
    if args.workers == 1:
        run_worker(sweep)
    else:  # this process is worker 1, K-1 others start beside it
        _, child = _take_option(argv, "--workers")
        threads, _ = _take_option(overrides, "--threads")
        if threads is None:  # the cores shared out between the workers
            threads = str(max(1, (os.cpu_count() or 1) // args.workers))
            child += ["--threads", threads]
            sweep.overrides += ["--threads", threads]
        others = WorkerProcesses(child, args.workers - 1)
        try:
            run_worker(sweep, label="[w1] ")
        finally:
            code = others.wait()
    print()
    for line in summary_lines(sweep):
        print(line)
    return code


def _sweep_show(argv: list[str]) -> int:
    from mlenv.bench.sweep import default_storage, load_study, plots_only, show
    from mlenv.track.outputs import check_output_dir

    parser = _parser(
        "sweep show",
        "A study's best trials (and the flags of the best), parameter importances (fANOVA),\n"
        "and its optimisation-history and parallel-coordinate plots.",
    )
    parser.add_argument("study", metavar="STUDY", help="the study's name")
    parser.add_argument("--storage", metavar="URL", help="(sqlite:///RUNS_DIR/optuna.db)")
    _flag(parser, "--runs-dir", default="runs", metavar="DIR", help="runs folder (runs)")
    parser.add_argument(
        "--top", type=_at_least(1), default=5, metavar="N", help="best trials shown (5)"
    )
    parser.add_argument("--out", metavar="DIR", help="where the plots go (sweep-out/STUDY)")
    _write_flags(parser, "non-empty folder")
    args = parser.parse_args(argv)
    storage = args.storage or default_storage(args.runs_dir)
    load_study(args.study, storage)  # a missing study is an error before any folder is made
    out = Path(args.out or Path("sweep-out") / args.study)
    out = check_output_dir(out, force=args.force or plots_only(out), mkdir=args.mkdir)
    show(args.study, storage, out, args.top)
    return 0


def cmd_runs(argv: list[str]) -> int:
    parser = _parser("runs", "The runs in the experiment store.")
    _store_flag(parser)
    actions = parser.add_subparsers(dest="what", required=True, metavar="{list,show,delete}")
    listing = actions.add_parser("list", help="one line per run", description="one line per run")
    listing.add_argument("--experiment", metavar="NAME", help="only this experiment's runs")
    listing.add_argument(
        "--sort",
        metavar="METRIC",
        help="best first: lowest loss, highest acc (default: start time)",
    )
    listing.add_argument(
        "--mode", choices=("min", "max"), help="with --sort: lower or higher is better (inferred)"
    )
    show = actions.add_parser(
        "show", help="a run's record, metrics and summary", description="a run's record"
    )
    delete = actions.add_parser(
        "delete",
        help="a run's record and its folder",
        description="Delete a run from the store and its folder (after showing both). The\n"
        "folder goes only if its summary.json names the run.",
    )
    for action in (show, delete):
        action.add_argument(
            "run_id", metavar="ID", help="the run id, or an unambiguous prefix of 6+ characters"
        )
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask")
    delete.add_argument("--force", action="store_true", help="even while the run is running")
    for action in (listing, show, delete):
        _store_flag(action, argparse.SUPPRESS)  # --store before or after the action
    args = parser.parse_args(argv)
    store = _store(args.store)
    if args.what == "list":
        return _runs_list(store, args.experiment, args.sort, args.mode)
    run = store.find_run(args.run_id)
    if args.what == "show":
        return _runs_show(store, run)
    return _runs_delete(store, run, args.yes, args.force)


def _runs_list(store: Any, experiment: str | None, sort: str | None, mode: str | None) -> int:
    from mlenv.config import resolve_mode
    from mlenv.track.store import best_first

    runs = store.runs(experiment)
    if sort:  # the direction as --monitor infers it: a loss is best lowest
        runs = best_first(runs, sort, resolve_mode(sort, mode))
    metric = sort or "test_acc"
    print(f"{'id':24s} {'experiment':20s} {'member':16s} {'status':9s} {metric:>10s}  start")
    for r in runs:
        value = r["summary"].get(metric)
        shown = f"{value:10.4f}" if value is not None else f"{'':10s}"
        print(
            f"{r['id']:24s} {r['experiment'][:20]:20s} {(r['member'] or '')[:16]:16s} "
            f"{r['status']:9s} {shown}  {r['start']}"
        )
    return 0


def _runs_show(store: Any, run: dict) -> int:
    import json

    from mlenv.track.report import format_summary, format_table

    folder = store.run_folder(run)
    print(f"run {run['id']}  experiment {run['experiment']}  status {run['status']}")
    print(f"folder {folder}  device {run['device']}  git {run['git_commit']}")
    print(
        f"started {run['start']}  ended {run['end']}"
        + (f"  error {run['error']}" if run["error"] else "")
    )
    print("config: " + json.dumps(json.loads(run["config"]), sort_keys=True))
    rows: dict[int, dict[str, float]] = {}
    for m in store.metrics(run["id"]):
        if not m["name"].startswith("step/"):  # per-step values: TensorBoard shows them
            rows.setdefault(m["step"], {})[m["name"]] = m["value"]
    if rows:
        print(format_table([{"epoch": k, **v} for k, v in sorted(rows.items())]))
    if run["summary"]:
        print(format_summary(run["summary"]))
    curve = folder / "plots" / "loss_curve.png" if folder else None
    print(f"loss curve: {curve if curve and curve.is_file() else '(none)'}")
    return 0


def _runs_delete(store: Any, run: dict, yes: bool, force: bool) -> int:
    folder = store.deletable_folder(run, force)  # refuses what is not provably this run's
    recorded = store.run_folder(run)
    print(f"run        {run['id']}")
    print(f"experiment {run['experiment']}")
    print(f"status     {run['status']}")
    if folder is not None:
        print(f"folder     {folder}")
    else:
        print(f"folder     {recorded or '(none recorded)'} (not there; only the record goes)")
    if not yes:
        try:
            answer = input("delete this run? [y/N] ")
        except EOFError:
            print()
            print(
                "mlenv: nothing deleted (no answer: stdin is closed; pass --yes)", file=sys.stderr
            )
            return 1
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    store.delete_run(run["id"], folder)
    print(f"deleted run {run['id']}" + (f" and its folder {folder}" if folder else ""))
    return 0


def cmd_bench(argv: list[str]) -> int:
    from mlenv.bench.benchmark import (
        append_results,
        benchmark_target,
        check_results_file,
        format_rows,
    )
    from mlenv.track.outputs import check_output_file

    parser = _parser(
        "bench",
        "Parameters, FLOPs, latency percentiles, throughput and peak memory of a model, one row\n"
        "per batch size, appended to a JSON-lines file.",
        "Other flags are the recipe's fields (`mlenv args RECIPE --help`).",
    )
    parser.add_argument("target", metavar="RECIPE|MODEL", help="a recipe, or a registered model")
    _flag(
        parser,
        "--batch-sizes",
        type=INT_LIST,
        default=[1, 32, 256],
        metavar="1,32,256",
        help="batch sizes to measure",
    )
    _flag(
        parser,
        "--input-shape",
        type=INT_LIST,
        metavar="SHAPE",
        help="a model's input shape, e.g. 20 or 3,32,32",
    )
    parser.add_argument(
        "--threads",
        type=_type(int, "an integer >= 1"),
        metavar="N",
        help="torch threads (default: the trainer's choice)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument(
        "--out", metavar="FILE.jsonl", help="results file, appended to (runs/bench.jsonl)"
    )
    parser.add_argument(
        "--mkdir",
        action="store_true",
        help="create missing folders of the --out path anywhere (without it: only below the "
        "current folder)",
    )
    args, overrides = parser.parse_known_args(argv)
    out = Path("runs/bench.jsonl")
    if args.out is not None:
        recipe_file = args.target if args.target.endswith(".yaml") else None
        out = check_output_file(args.out, inputs=[recipe_file], append=True, mkdir=args.mkdir)
    check_results_file(out)
    rows = benchmark_target(
        args.target, overrides, args.batch_sizes, args.input_shape, args.threads, args.device
    )
    print(format_rows(rows))
    path = append_results(rows, out)
    print(f"appended {len(rows)} rows to {path}")
    return 0


def cmd_book(argv: list[str]) -> int:
    from mlenv.book import STEPS, run_step
    from mlenv.errors import ConfigError
    from mlenv.track.outputs import check_output_dir

    steps = "\n".join(f"  {name}  {what}" for name, what in STEPS.items())
    parser = _parser("book", "A step of the book path: plots and results.json.", f"steps:\n{steps}")
    parser.add_argument("step", nargs="?", default="list", help="a step, or list (the default)")
    parser.add_argument("--out", metavar="DIR", help="where to write (book-out/STEP)")
    parser.add_argument(
        "--data", metavar="PATH", help="the step's data file (steps 07-10: the MNIST folder)"
    )
    training = parser.add_argument_group("steps 06-10 (training)")
    training.add_argument("--epochs", type=int, help="epochs to train (the book's by default)")
    training.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (the default)")
    training.add_argument(
        "--precision", choices=["32", "bf16", "16"], help="32, bf16 or 16 (the recipe's default)"
    )
    training.add_argument("--threads", type=int, help="torch threads on the CPU")
    training.add_argument("--seed", type=int, default=0, help="seed of the run (0)")
    training.add_argument("--limit", type=int, help="train on the first N digits only (a look)")
    training.add_argument("--runs-dir", metavar="DIR", help="where the run goes (OUT/runs)")
    training.add_argument(
        "--sample-steps", type=int, help="DDIM sampling with this many steps (09-10; 1000 = DDPM)"
    )
    training.add_argument("--guidance", type=float, help="classifier-free guidance scale (step10)")
    training.add_argument("--no-progress", action="store_true", help="no progress bars")
    _write_flags(parser, "non-empty folder")
    args = parser.parse_args(argv)
    if args.step == "list":
        for name, what in STEPS.items():
            print(f"{name}  {what}")
        return 0
    if args.step not in STEPS:
        raise ConfigError(f"unknown book step {args.step!r}; steps: {', '.join(STEPS)}")
    from mlenv.book import TRAINING_STEPS
    from mlenv.book._common import BookOptions

    options = None
    if args.step in TRAINING_STEPS:
        options = BookOptions(
            epochs=args.epochs,
            device=args.device,
            sample_steps=args.sample_steps,
            guidance=args.guidance,
            limit=args.limit,
            runs_dir=args.runs_dir,
            data_dir=args.data if args.step != "step06" else None,
            seed=args.seed,
            precision=args.precision,
            threads=args.threads,
            progress=not args.no_progress,
        )
    else:
        given = [
            flag
            for flag, value in (
                ("--epochs", args.epochs),
                ("--limit", args.limit),
                ("--sample-steps", args.sample_steps),
                ("--guidance", args.guidance),
                ("--runs-dir", args.runs_dir),
                ("--precision", args.precision),
                ("--threads", args.threads),
                ("--device", None if args.device == "auto" else args.device),
                ("--seed", None if args.seed == 0 else args.seed),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(f"{given[0]}: applies to steps 06-10 only, not {args.step}")
    out = args.out
    if out is not None:
        out = check_output_dir(out, inputs=[args.data], force=args.force, mkdir=args.mkdir)
    run_step(args.step, out, args.data, options)
    print(f"plots and results.json in {out or f'book-out/{args.step}'}")
    return 0


def cmd_doctor(argv: list[str]) -> int:
    from mlenv.doctor.command import cmd_doctor as run

    return run(argv)


def cmd_lr_find(argv: list[str]) -> int:
    from mlenv.doctor.command import cmd_lr_find as run

    return run(argv)


def cmd_generate(argv: list[str]) -> int:
    from mlenv.generate import cmd_generate as run

    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main())
