"""The ``mlenv`` command: names in, objects out. Heavy modules are imported only by the command
that needs them, so ``mlenv --help`` starts fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

USAGE = """usage: mlenv COMMAND [ARGS]

commands:
  train RECIPE [--flags]      train a recipe; every field is a flag (see `mlenv args RECIPE`)
  train --config FILE         train from a resolved configuration file
  train --resume-run RUN_DIR  continue a run from its folder's configuration and last checkpoint
  test --weights CKPT         evaluate a checkpoint on its recipe's test split
  predict --weights RUN_DIR|CKPT --data NEW.csv --out preds.csv
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
  compare GROUP_A GROUP_B [...] --metric test_acc [--alpha 0.05] [--plot PNG]   is it really better?
  runs list [--experiment E] [--sort METRIC] | runs show ID | runs delete ID [--yes]
  bench RECIPE|MODEL [--batch-sizes 1,32,256] [--input-shape 20] [--out FILE.jsonl]
                              parameters, FLOPs, latency percentiles, throughput, peak memory
  (runs, repeat, cv, compare take --store PATH; the default is runs/mlenv.db)
  args RECIPE [--flags]       print the fully resolved configuration as YAML (feed back: --config)
  list models|datasets|recipes|trainers
  demo [--flags]              train the digits MLP end to end and show where everything went

`mlenv COMMAND --help` shows a command's flags."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
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
    }
    if command not in handlers:
        print(
            f"mlenv: error: unknown command {command!r}; commands: {', '.join(handlers)}",
            file=sys.stderr,
        )
        return 2
    from mlenv.errors import MlenvError
    from mlenv.train.trainer import TrainingInterrupted

    try:
        return handlers[command](rest)
    except TrainingInterrupted as exc:
        print(f"mlenv: {exc}", file=sys.stderr)
        return 130
    except MlenvError as exc:
        print(f"mlenv: error: {exc}", file=sys.stderr)
        return 2


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
        values = yaml.safe_load(path.read_text()) or {}
        if "recipe" not in values:
            raise ConfigError(f"--config: {path} has no 'recipe' key; name the recipe first")
        return load_recipe(values["recipe"]), argv, base
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
        cfg = resolve(
            recipe, [*argv, "--resume", str(run_dir / "checkpoints" / "last.pt")], base=base
        )
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

    from mlenv.config import load_recipe
    from mlenv.errors import ConfigError

    run_dir = Path(run_dir_arg)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"--resume-run: {run_dir} is not a run folder (no config.yaml)")
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise ConfigError(f"--resume-run: {run_dir} has no checkpoints/last.pt to resume from")
    base = yaml.safe_load(config_file.read_text()) or {}
    return load_recipe(base["recipe"]), base, run_dir


def cmd_args(argv: list[str]) -> int:
    from mlenv.config import build_parser, resolve

    recipe, rest, _ = _recipe_and_rest(argv, "args")
    if "-h" in rest or "--help" in rest:
        build_parser(recipe, f"mlenv args {recipe.name}").print_help()
        return 0
    print(resolve(recipe, rest, prog="mlenv args").to_yaml(), end="")
    return 0


def cmd_list(argv: list[str]) -> int:
    from mlenv.config import load_recipe, recipe_names
    from mlenv.errors import ConfigError

    what = argv[0] if argv else ""
    if what == "recipes":
        for name in recipe_names():
            r = load_recipe(name)
            print(f"{name:24s} {r.description}")
        return 0
    if what in ("models", "datasets", "trainers"):
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
    from mlenv.train.checkpoint import load_model_state
    from mlenv.train.run import build, load_trained

    weights, argv = _take_option(argv, "--weights")
    if not weights:
        raise ConfigError("test: give the checkpoint with --weights PATH|RUN_DIR")
    trainer, cfg, state, path = load_trained(weights, argv, "mlenv test")
    bundle, _, _ = build(cfg)
    split = bundle.test if bundle.test is not None else bundle.val
    trainer.setup(trainer.to_device(next(iter(trainer._batches(split, False)))), 1)
    load_model_state(trainer.raw_model, state["model"], path)
    metrics = trainer.evaluate(split, prefix="test" if bundle.test is not None else "val")
    print(format_summary({"checkpoint": str(path), **metrics}))
    return 0


def cmd_predict(argv: list[str]) -> int:
    """Probability and predicted label (original values) for every row of a CSV."""
    from mlenv.errors import ConfigError
    from mlenv.train.run import predict_csv

    weights, argv = _take_option(argv, "--weights")
    data, argv = _take_option(argv, "--data")
    out, argv = _take_option(argv, "--out")
    header_off = None
    for spelling in ("--no-header", "--no_header"):
        if spelling in argv:  # a bare switch
            i = argv.index(spelling)
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("-") else None
            header_off = value is None or value.lower() in ("true", "1", "yes")
            argv = argv[:i] + argv[i + (1 if value is None else 2) :]
    if not (weights and data and out):
        raise ConfigError("predict: give --weights RUN_DIR|CKPT, --data NEW.csv and --out FILE")
    count, accuracy = predict_csv(weights, data, out, header_off, argv)
    print(
        f"wrote {count} predictions to {out}"
        + (f"; accuracy against the file's labels {accuracy:.4f}" if accuracy is not None else "")
    )
    return 0


def cmd_check(argv: list[str]) -> int:
    from mlenv.errors import ConfigError

    what, rest = (argv[0], argv[1:]) if argv else ("", [])
    if what == "loss":
        from mlenv.doctor.loss_checks import format_loss_table, loss_table

        rows = loss_table()
        print(format_loss_table(rows))
        bad = [r for r in rows if r["mode"] != "unclamped" and not r["ok"]]
        return 1 if bad else 0
    if what in ("data", "labels"):
        from mlenv.config import load_recipe, resolve
        from mlenv.data.tabular import load_split, write_split
        from mlenv.doctor.data_checks import data_report, label_report

        cfg = resolve(load_recipe("tabular-binary"), rest, prog=f"mlenv check {what}")
        options = {k: v for k, v in cfg.data.items() if k != "save_split"}
        split = load_split(seed=cfg.train.seed, **options)
        print(data_report(split) if what == "data" else label_report(split))
        if cfg.data["save_split"]:
            write_split(split, cfg.data["save_split"])
            print(f"split written to {cfg.data['save_split']}")
        return 0
    raise ConfigError(f"check: accepts data, labels or loss, got {what!r}")


def cmd_export(argv: list[str]) -> int:
    from mlenv.errors import ConfigError

    what, rest = (argv[0], argv[1:]) if argv else ("", [])
    weights, rest = _take_option(rest, "--weights")
    out, rest = _take_option(rest, "--out")
    batch_size, rest = _take_option(rest, "--batch-size")
    seed, rest = _take_option(rest, "--seed")
    if what not in ("golden", "onnx"):
        raise ConfigError(f"export: accepts golden or onnx, got {what!r}")
    if not (weights and out) or rest:
        raise ConfigError(
            f"export {what}: give --weights RUN_DIR|CKPT and --out PATH"
            + (f"; unexpected: {' '.join(rest)}" if rest else "")
        )
    size, seed_value = _int_option("--batch-size", batch_size, 8), _int_option("--seed", seed, 0)
    if what == "golden":
        from mlenv.export.golden import export_golden

        folder = export_golden(weights, out, size, seed_value)
        print(f"golden vectors in {folder}: " + ", ".join(sorted(p.name for p in folder.iterdir())))
    else:
        from mlenv.export.onnx_export import export_onnx

        export_onnx(weights, out, size, seed_value)
    return 0


def _int_option(name: str, value: str | None, default: int) -> int:
    from mlenv.errors import ConfigError

    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}: accepts an integer, got {value!r}") from None
    if number < 0 or (name == "--batch-size" and number == 0):
        raise ConfigError(f"{name}: accepts a positive integer, got {number}")
    return number


def cmd_parity(argv: list[str]) -> int:
    from mlenv.errors import ConfigError
    from mlenv.export.parity import compare, format_rows

    rtol, argv = _take_option(argv, "--rtol")
    atol, argv = _take_option(argv, "--atol")
    if len(argv) != 2:
        raise ConfigError("parity: give two golden folders: mlenv parity DIR_A DIR_B")
    try:
        tolerances = {"rtol": float(rtol or 1e-5), "atol": float(atol or 1e-6)}
    except ValueError:
        raise ConfigError("--rtol/--atol: accept numbers") from None
    rows = compare(Path(argv[0]), Path(argv[1]), **tolerances)
    print(format_rows(rows))
    return 1 if any(r.status not in ("ok", "missing") for r in rows) else 0


def _store(path: str | None) -> Any:
    from mlenv.errors import ConfigError
    from mlenv.track.store import Store

    target = Path(path or "runs/mlenv.db")
    if not target.is_file():
        raise ConfigError(
            f"--store: {target} does not exist (train something first, or give --store PATH)"
        )
    return Store(target)


def cmd_repeat(argv: list[str]) -> int:
    from mlenv.bench.experiments import parse_seeds, repeat
    from mlenv.config import load_recipe
    from mlenv.errors import ConfigError

    seeds, argv = _take_option(argv, "--seeds")
    name, argv = _take_option(argv, "--experiment")
    if not argv or argv[0].startswith("-") or not seeds:
        raise ConfigError("repeat: usage: mlenv repeat RECIPE --seeds 0-4 [--experiment NAME] ...")
    repeat(load_recipe(argv[0]), parse_seeds(seeds), argv[1:], name)
    return 0


def cmd_cv(argv: list[str]) -> int:
    from mlenv.bench.experiments import cross_validate
    from mlenv.config import load_recipe
    from mlenv.errors import ConfigError

    folds, argv = _take_option(argv, "--folds")
    repeats, argv = _take_option(argv, "--repeats")
    name, argv = _take_option(argv, "--experiment")
    if not argv or argv[0].startswith("-"):
        raise ConfigError("cv: usage: mlenv cv RECIPE --folds 5 [--repeats 2] [--experiment NAME]")
    cross_validate(
        load_recipe(argv[0]),
        _int_option("--folds", folds, 5),
        _int_option("--repeats", repeats, 1),
        argv[1:],
        name,
    )
    return 0


def cmd_compare(argv: list[str]) -> int:
    from mlenv.bench.experiments import compare_groups
    from mlenv.errors import ConfigError

    metric, argv = _take_option(argv, "--metric")
    alpha, argv = _take_option(argv, "--alpha")
    plot, argv = _take_option(argv, "--plot")
    store, argv = _take_option(argv, "--store")
    if len(argv) < 2 or any(a.startswith("-") for a in argv):
        raise ConfigError(
            "compare: usage: mlenv compare GROUP_A GROUP_B [...] --metric test_acc "
            "[--alpha 0.05] [--plot PNG] [--store PATH]"
        )
    try:
        level = float(alpha or 0.05)
    except ValueError:
        raise ConfigError(f"--alpha: accepts a number in (0, 1), got {alpha!r}") from None
    if not 0 < level < 1:
        raise ConfigError(f"--alpha: accepts a number in (0, 1), got {level}")
    compare_groups(_store(store), argv, metric or "test_acc", level, plot)
    return 0


def cmd_runs(argv: list[str]) -> int:
    import shutil

    from mlenv.errors import ConfigError

    store_path, argv = _take_option(argv, "--store")
    what, rest = (argv[0], argv[1:]) if argv else ("", [])
    store = _store(store_path)
    if what == "list":
        experiment, rest = _take_option(rest, "--experiment")
        sort, rest = _take_option(rest, "--sort")
        runs = store.runs(experiment)
        if sort:
            runs.sort(key=lambda r: r["summary"].get(sort, float("-inf")), reverse=True)
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
    if what in ("show", "delete"):
        if not rest:
            raise ConfigError(f"runs {what}: give a run id (`mlenv runs list`)")
        run = store.run(rest[0])
        if run is None:
            raise ConfigError(f"runs {what}: no run {rest[0]!r} in {store.path}")
        if what == "show":
            import json

            print(f"run {run['id']}  experiment {run['experiment']}  status {run['status']}")
            print(f"folder {run['run_dir']}  device {run['device']}  git {run['git_commit']}")
            print(
                f"started {run['start']}  ended {run['end']}"
                + (f"  error {run['error']}" if run["error"] else "")
            )
            print("config: " + json.dumps(json.loads(run["config"]), sort_keys=True))
            rows: dict[int, dict[str, float]] = {}
            for m in store.metrics(run["id"]):
                if not m["name"].startswith("step/"):  # per-step values: TensorBoard shows them
                    rows.setdefault(m["step"], {})[m["name"]] = m["value"]
            from mlenv.track.report import format_summary, format_table

            if rows:
                print(format_table([{"epoch": k, **v} for k, v in sorted(rows.items())]))
            if run["summary"]:
                print(format_summary(run["summary"]))
            curve = Path(run["run_dir"] or "") / "plots" / "loss_curve.png"
            print(f"loss curve: {curve if curve.is_file() else '(none)'}")
            return 0
        if "--yes" not in rest:
            answer = input(f"delete run {run['id']} and its folder {run['run_dir']}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        store.delete_run(run["id"])
        if run["run_dir"] and Path(run["run_dir"]).is_dir():
            shutil.rmtree(run["run_dir"])
        print(f"deleted run {run['id']}")
        return 0
    raise ConfigError(f"runs: accepts list, show or delete, got {what!r}")


def cmd_bench(argv: list[str]) -> int:
    from mlenv.bench.benchmark import append_results, benchmark_target, format_rows
    from mlenv.errors import ConfigError

    sizes, argv = _take_option(argv, "--batch-sizes")
    shape, argv = _take_option(argv, "--input-shape")
    out, argv = _take_option(argv, "--out")
    threads, argv = _take_option(argv, "--threads")
    device_name, argv = _take_option(argv, "--device")
    if not argv or argv[0].startswith("-"):
        raise ConfigError("bench: usage: mlenv bench RECIPE|MODEL [--batch-sizes 1,32,256] ...")
    try:
        batch_sizes = [int(v) for v in (sizes or "1,32,256").split(",")]
        dims = [int(v) for v in shape.split(",")] if shape else None
    except ValueError:
        raise ConfigError("--batch-sizes/--input-shape: accept integers like 1,32,256") from None
    rows = benchmark_target(
        argv[0],
        argv[1:],
        batch_sizes,
        dims,
        None if threads is None else _int_option("--threads", threads, 1),
        device_name or "auto",
    )
    print(format_rows(rows))
    path = append_results(rows, out or "runs/bench.jsonl")
    print(f"appended {len(rows)} rows to {path}")
    return 0


def cmd_book(argv: list[str]) -> int:
    from mlenv.book import STEPS, run_step
    from mlenv.errors import ConfigError

    out, argv = _take_option(argv, "--out")
    data, argv = _take_option(argv, "--data")
    if not argv or argv[0] in ("list", "-h", "--help"):
        for name, what in STEPS.items():
            print(f"{name}  {what}")
        return 0
    if len(argv) > 1:
        raise ConfigError(
            f"book: unexpected arguments {' '.join(argv[1:])}; "
            "accepts: book STEP [--out DIR] [--data FILE]"
        )
    run_step(argv[0], out, data)
    print(f"plots and results.json in {out or f'book-out/{argv[0]}'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
