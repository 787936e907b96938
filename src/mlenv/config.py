"""Typed run configuration: defaults < recipe file < ``--config`` file < command line.

``TrainConfig`` holds what the Trainer needs and validates itself, so the Python API and the CLI give
the same errors. A recipe (``recipes/*.yaml`` or a user's YAML file) names a trainer, a data set and a
model by registry name and sets defaults for all three. On the command line every field is a flat
``--flag``: trainer fields, the data set builder's arguments and the model builder's arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from mlenv.errors import ConfigError

Precision = Literal["32", "bf16", "16"]
OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal[
    "constant", "cosine", "step", "exponential", "plateau", "onecycle", "linear"
]


@dataclass
class TrainConfig:
    """Everything the Trainer reads. Every field is validated on construction."""

    # optimisation
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    optimizer: OptimizerName = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    beta1: float = 0.9  # Adam/AdamW's moment decays (GPT recipes: beta2 0.98 or 0.99)
    beta2: float = 0.999
    grad_clip: float | None = None
    grad_clip_mode: Literal["norm", "value"] = "norm"
    accumulate: int = 1
    # weight decay skips biases and norm layers (every parameter of rank < 2)
    wd_skip_bias_norm: bool = False
    ema: float | None = None  # decay of an exponential moving average of the weights (0.999)
    # schedules
    scheduler: SchedulerName = "constant"
    warmup_epochs: int = 0
    warmup_steps: int = 0
    warmup_start_factor: float = 0.1
    step_size: int = 10
    gamma: float | None = None
    min_lr: float = 0.0
    plateau_patience: int = 2
    plot_lr: bool = False
    # execution
    precision: Precision = "32"
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    channels_last: bool = False  # image models: NHWC memory layout (faster convolutions)
    threads: int | None = None
    devices: int = 1  # processes on this machine (torchrun): one per GPU, or CPU processes
    strategy: Literal["ddp", "fsdp"] = "ddp"  # with devices > 1: replicate (DDP) or shard (FSDP2)
    # debugging
    limit_batches: int | None = None
    fast_dev_run: bool = False
    overfit_batches: int | None = None
    profile: bool = False
    progress: bool = True
    # checkpoints and stopping
    save_every: int = 1
    save_every_steps: int | None = None
    save_top_k: int = 1
    monitor: str = "val_loss"
    mode: Literal["min", "max"] | None = None  # None: inferred from the monitor's name
    test_on: Literal["best", "last"] = "best"  # weights the test split is evaluated with
    early_stopping: bool = False
    patience: int = 5
    min_delta: float = 0.0
    divergence_threshold: float | None = None  # stop at once when a batch's loss exceeds it
    resume: str | None = None
    # runs and trackers
    experiment: str | None = None
    runs_dir: str = "runs"
    store: str | None = None  # the SQLite experiment store; default <runs_dir>/mlenv.db
    wandb: bool = False
    mlflow: bool = False

    def __post_init__(self) -> None:
        for name, tp in TRAIN_TYPES.items():
            _check_type(name, getattr(self, name), tp)
        _positive(self, "epochs", "lr", "batch_size", "accumulate", "save_every", "step_size")
        _positive(self, "grad_clip", "limit_batches", "overfit_batches", "threads")
        _positive(self, "save_every_steps", "gamma", "warmup_start_factor", "plateau_patience")
        _non_negative(self, "weight_decay", "momentum", "warmup_epochs", "warmup_steps")
        _non_negative(self, "min_lr", "save_top_k", "patience", "min_delta")
        _positive(self, "divergence_threshold", "devices")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}: accepts a number in [0, 1), got {getattr(self, name)}")
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr: must not exceed lr ({self.lr:g}), got {self.min_lr:g}")
        if self.early_stopping and self.patience == 0:
            raise ConfigError("patience: early stopping needs patience >= 1, got 0")
        if self.experiment is not None:
            check_experiment_name(self.experiment)
        if self.warmup_start_factor > 1:
            raise ConfigError(
                f"warmup_start_factor: accepts a number in (0, 1], got {self.warmup_start_factor}"
            )
        if self.strategy == "fsdp" and self.precision == "16":
            raise ConfigError(
                "strategy: fsdp trains in precision 32 or bf16 (fp16's grad scaler does not "
                "shard); give --precision bf16"
            )
        if self.ema is not None and not 0 < self.ema < 1:
            raise ConfigError(f"ema: accepts a decay in (0, 1) such as 0.999, got {self.ema}")
        if self.ema is not None and self.strategy == "fsdp" and self.devices > 1:
            raise ConfigError("ema: not available with --strategy fsdp (give --strategy ddp)")
        if self.warmup_epochs and self.warmup_steps:
            raise ConfigError("warmup_epochs and warmup_steps: give one of them, not both")
        valid_device = self.device in ("auto", "cpu", "mps") or self.device.split(":")[0] == "cuda"
        if not valid_device:
            raise ConfigError(
                f"device: accepts auto, cpu, cuda, cuda:N or mps, got {self.device!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from plain data; an unknown key names itself and the allowed ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                raise ConfigError(unknown_key_message(key, names))
        return cls(**values)


TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))

# Metric names whose larger values are better; everything ending in "loss" is smaller-is-better.
HIGHER_IS_BETTER = ("acc", "accuracy", "auc", "f1", "precision", "recall", "r2")


def check_experiment_name(name: str) -> None:
    """An experiment is one folder below ``runs_dir``: no separators, no ``..``, not absolute."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+-]*", name) or ".." in name:
        raise ConfigError(
            f"experiment: accepts a folder name of letters, digits and . _ = + - "
            f"(no / or ..), got {name!r}"
        )


def resolve_mode(
    monitor: str,
    mode: str | None,
    task_modes: dict[str, str] | None = None,
    loss_terms: list[str] | tuple[str, ...] = (),
) -> str:
    """``min`` or ``max`` for a monitored metric: inferred from its name (loss -> min;
    acc/auc/f1/precision/recall/r2 -> max; a task's own metrics by the task), checked against
    an explicit ``mode``.

    >>> resolve_mode("val_acc", None), resolve_mode("val_loss", None)
    ('max', 'min')
    """
    base = monitor.split("_", 1)[1] if monitor.startswith(("val_", "train_")) else monitor
    inferred = (task_modes or {}).get(base)
    if inferred is None:
        if base.endswith("loss") or base in loss_terms:
            inferred = "min"
        elif base in HIGHER_IS_BETTER or base.endswith(tuple("_" + m for m in HIGHER_IS_BETTER)):
            inferred = "max"
    if mode is None:
        if inferred is None:
            raise ConfigError(
                f"mode: cannot tell whether a higher or a lower {monitor!r} is better; "
                "give --mode min or --mode max"
            )
        return inferred
    if inferred is not None and mode != inferred:
        better = "lower" if inferred == "min" else "higher"
        raise ConfigError(
            f"mode: {mode!r} contradicts {monitor!r} (a {better} value is better: {inferred!r})"
        )
    return mode


TRAIN_TYPES = typing.get_type_hints(TrainConfig)


def unknown_key_message(key: str, allowed: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; allowed keys: {', '.join(sorted(allowed))}"


def _describe_type(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    args = [a for a in get_args(tp) if a is not type(None)]
    if args and len(args) < len(get_args(tp)):
        return f"{_describe_type(args[0])} or null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _check_type(name: str, value: Any, tp: Any) -> None:
    origin = get_origin(tp)
    if origin is Literal:
        ok = value in get_args(tp)
    else:
        allowed = get_args(tp) or (tp,)
        ok = any(_is_instance(value, a) for a in allowed)
    if not ok:
        raise ConfigError(f"{name}: accepts {_describe_type(tp)}, got {value!r}")


def _is_instance(value: Any, tp: Any) -> bool:
    if get_origin(tp) is Literal:
        return value in get_args(tp)
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _positive(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{name}: accepts a number > 0, got {value}")


def _non_negative(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < 0:
            raise ConfigError(f"{name}: accepts a number >= 0, got {value}")


# ---------------------------------------------------------------------------------------------
# Recipes: YAML files that name a trainer, a data set and a model, and set defaults.

RECIPE_DIR = Path(__file__).parent / "recipes"
RECIPE_KEYS = ("description", "trainer", "dataset", "model", "data", "model_args", "task", "train")


@dataclass
class Recipe:
    name: str
    trainer: str
    dataset: str
    model: str
    description: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def recipe_from_config(value: Any) -> Recipe:
    """The recipe a stored configuration names: inlined (``{name, trainer, dataset, model}``, what
    every run keeps, so a run from a user's own recipe file needs no file later) or a packaged
    recipe's name."""
    if isinstance(value, dict):
        missing = [k for k in ("name", "trainer", "dataset", "model") if not value.get(k)]
        if missing:
            raise ConfigError(f"recipe: the configuration's recipe lacks {', '.join(missing)}")
        known = ("name", "trainer", "dataset", "model", "description", "path")
        for key in value:
            if key not in known:
                raise ConfigError("recipe: " + unknown_key_message(key, known))
        return Recipe(**{k: str(v) for k, v in value.items()})
    if isinstance(value, str) and value:
        return load_recipe(value)
    raise ConfigError(f"recipe: expected a recipe name or mapping, got {value!r}")


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> Recipe:
    """A packaged recipe by name (``digits-mlp``) or a user's recipe file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            close = difflib.get_close_matches(name_or_path, recipe_names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown recipe {name_or_path!r}{hint}; known: {', '.join(recipe_names())}"
            )
    elif not path.exists():
        raise ConfigError(f"recipe file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"recipe file {path} is a folder")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"recipe file {path} is not UTF-8 text (byte offset {exc.start})"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"recipe file {path}: expected a mapping of keys, got {type(raw).__name__}"
        )
    for key in raw:
        if key not in RECIPE_KEYS:
            raise ConfigError(f"recipe file {path}: " + unknown_key_message(key, RECIPE_KEYS))
    for key in ("trainer", "dataset", "model"):
        if key not in raw:
            raise ConfigError(f"recipe file {path}: missing key {key!r}")
    return Recipe(name=path.stem, path=str(path), **raw)


# ---------------------------------------------------------------------------------------------
# Resolved run configuration and its command-line parser.


@dataclass
class RunConfig:
    """A recipe with every value resolved: what ``mlenv args`` prints and a run folder keeps."""

    recipe: str
    trainer: str
    dataset: str
    model: str
    data: dict[str, Any]
    model_args: dict[str, Any]
    train: TrainConfig
    task_args: dict[str, Any] = field(default_factory=dict)

    def recipe_spec(self) -> dict[str, str]:
        return {
            "name": self.recipe,
            "trainer": self.trainer,
            "dataset": self.dataset,
            "model": self.model,
        }

    def to_flat(self) -> dict[str, Any]:
        """The flat mapping that ``--config`` reads back: one key per command-line flag, and the
        recipe inlined (so the configuration is self-contained)."""
        flat: dict[str, Any] = {"recipe": self.recipe_spec()}
        flat.update(self.data)
        flat.update(self.model_args)
        flat.update(self.task_args)
        flat.update(self.train.to_dict())
        return flat

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_flat(), sort_keys=False)


def builder_arguments(fn: Any, skip: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """The keyword arguments of a registered builder a user may set (those with defaults), as
    ``{name: (type, default)}``."""
    hints = typing.get_type_hints(fn)
    return {
        name: (hints.get(name, Any), p.default)
        for name, p in inspect.signature(fn).parameters.items()
        if name not in skip and p.default is not inspect.Parameter.empty
    }


def trainer_arguments(cls: type) -> dict[str, tuple[Any, Any]]:
    """A Trainer subclass's own keyword-only ``__init__`` options (e.g. ``baselines``)."""
    hints = typing.get_type_hints(cls.__init__)
    return {
        name: (hints.get(name, Any), p.default)
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.kind is p.KEYWORD_ONLY
        and p.default is not inspect.Parameter.empty
        # data_scale: a task's reading of the images' range, filled from the data set's own
        # --scale by train.run.build_task (a second flag for it could only disagree)
        and name not in ("run", "run_config", "data_scale")
    }


def build_parser(recipe: Recipe, prog: str) -> Any:
    """A jsonargparse parser with the recipe's values as defaults, every field a flat flag."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from mlenv.data import DATASETS
    from mlenv.models import MODELS
    from mlenv.train.tasks import TRAINERS

    parser = ArgumentParser(prog=prog, description=recipe.description or None, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of flag values")
    parser.add_argument(
        "--recipe",
        type=dict | str,
        default=recipe.name,
        help="the recipe: a name, or the inlined mapping a run's config.yaml holds",
    )

    provided = tuple(DATASETS.info(recipe.dataset).get("provides", ()))
    groups = {
        # the split seed is the run's --seed (build_data passes it), never a flag of its own
        "data": builder_arguments(DATASETS.get(recipe.dataset), skip=("seed",)),
        "model": builder_arguments(MODELS.get(recipe.model), skip=provided),
        "task": trainer_arguments(TRAINERS.get(recipe.trainer)),
    }
    taken: dict[str, str] = {name: "train" for name in TRAIN_FIELDS}
    for group_name, params in groups.items():
        source = {"model": recipe.model, "data": recipe.dataset, "task": recipe.trainer}[group_name]
        group = parser.add_argument_group(f"{group_name} ({source})")
        for name, (annotation, default) in params.items():
            if name in taken:
                raise ConfigError(
                    f"{group_name} argument {name!r} clashes with a {taken[name]} field"
                )
            taken[name] = group_name
            group.add_argument(f"--{name}", type=annotation, default=default)

    train_group = parser.add_argument_group("training")
    for f in dataclasses.fields(TrainConfig):
        train_group.add_argument(f"--{f.name}", type=TRAIN_TYPES[f.name], default=f.default)

    defaults: dict[str, Any] = {}
    sections = (("data", groups["data"]), ("model_args", groups["model"]), ("task", groups["task"]))
    for section, allowed in sections:
        for key, value in getattr(recipe, section).items():
            if key not in allowed:
                raise ConfigError(
                    f"recipe {recipe.name} {section}: " + unknown_key_message(key, list(allowed))
                )
            defaults[key] = value
    for key, value in recipe.train.items():
        if key not in TRAIN_FIELDS:
            raise ConfigError(
                f"recipe {recipe.name} train: " + unknown_key_message(key, TRAIN_FIELDS)
            )
        defaults[key] = value
    parser.set_defaults(**defaults)
    parser.mlenv_groups = {k: list(v) for k, v in groups.items()}
    parser.mlenv_bool_flags = {f"--{name}" for name, tp in TRAIN_TYPES.items() if tp is bool} | {
        f"--{name}" for params in groups.values() for name, (tp, _) in params.items() if tp is bool
    }
    parser.mlenv_list_flags = {
        f"--{name}"
        for params in groups.values()
        for name, (tp, _) in params.items()
        if get_origin(tp) in (list, tuple)
    }
    return parser


def resolve(
    recipe: Recipe,
    argv: list[str],
    prog: str = "mlenv train",
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Parse ``argv`` against ``recipe``; every error names the field and what it accepts.

    ``base`` (a run folder's or a checkpoint's flat configuration) sits between the recipe's
    defaults and the command line.
    """
    from jsonargparse import ArgumentError

    parser = build_parser(recipe, prog)
    argv = _underscore_flags(argv, {a.dest for a in parser._actions})
    _flags_of_other_data_sets(argv, {a.dest for a in parser._actions}, recipe)
    argv = _bare_switches(argv, parser.mlenv_bool_flags)
    argv = _bracket_lists(argv, parser.mlenv_list_flags)
    if base:
        base = {k: v for k, v in base.items() if k != "recipe"}
        allowed = [a.dest for a in parser._actions]
        for key in base:
            if key not in allowed:
                raise ConfigError(unknown_key_message(key, allowed))
        parser.set_defaults(**base)
    try:
        ns = parser.parse_args(argv)
    except ArgumentError as exc:
        raise ConfigError(_clean_jsonargparse_message(str(exc), parser)) from None
    values = ns.as_dict()
    values.pop("config", None)
    given = values.pop("recipe")
    given_name = given.get("name") if isinstance(given, dict) else given
    if given_name != recipe.name:
        raise ConfigError(
            f"recipe: the configuration is for recipe {given_name!r}, not {recipe.name!r}"
        )
    groups = parser.mlenv_groups
    data = {k: values.pop(k) for k in groups["data"]}
    model_args = {k: values.pop(k) for k in groups["model"]}
    task_args = {k: values.pop(k) for k in groups["task"]}
    return RunConfig(
        recipe=recipe.name,
        trainer=recipe.trainer,
        dataset=recipe.dataset,
        model=recipe.model,
        data=data,
        model_args=model_args,
        train=TrainConfig(**values),
        task_args=task_args,
    )


def _underscore_flags(argv: list[str], known: set[str]) -> list[str]:
    """Accept ``--test-size`` for ``--test_size``: the spelling most command lines use."""
    out = []
    for token in argv:
        flag, eq, value = token.partition("=")
        if flag.startswith("--") and "-" in flag[2:]:
            candidate = flag[2:].replace("-", "_")
            if candidate in known:
                token = f"--{candidate}{eq}{value}"
        out.append(token)
    return out


def _flags_of_other_data_sets(argv: list[str], known: set[str], recipe: Recipe) -> None:
    """A flag this recipe's data set lacks but another data set takes (``--eval-iters`` on
    ``char-lm``'s char-text): say which data set takes it, not only that the key is unknown."""
    from mlenv.data import DATASETS

    for token in argv:
        name = token[2:].partition("=")[0].replace("-", "_")
        if not token.startswith("--") or name in known:
            continue
        owners = [d for d in DATASETS.names() if name in builder_arguments(DATASETS.get(d))]
        if owners:
            raise ConfigError(
                f"--{name.replace('_', '-')}: a flag of the {' and '.join(owners)} data set; "
                f"recipe {recipe.name} reads {recipe.dataset}, which cannot apply it"
            )


def _bare_switches(argv: list[str], bool_flags: set[str]) -> list[str]:
    """A boolean flag given alone (``--no_header``) means true."""
    out = []
    for i, token in enumerate(argv):
        out.append(token)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if token in bool_flags and (following is None or following.startswith("--")):
            out.append("true")
    return out


def _bracket_lists(argv: list[str], list_flags: set[str]) -> list[str]:
    """Accept ``--hidden 64,32`` as well as ``--hidden [64,32]``."""
    out = list(argv)
    for i, token in enumerate(out):
        flag, eq, value = token.partition("=")
        if flag in list_flags:
            if eq and not value.startswith("["):
                out[i] = f"{flag}=[{value}]"
            elif not eq and i + 1 < len(out) and not out[i + 1].startswith(("[", "-")):
                out[i + 1] = f"[{out[i + 1]}]"
    return out


def _clean_jsonargparse_message(message: str, parser: Any) -> str:
    """jsonargparse's messages name the key; add the allowed keys when the key is unknown."""
    import re

    first = message.strip().splitlines()[0]
    hidden = ("help", "config", "print_config", "print_shtab")
    allowed = sorted(a.dest for a in parser._actions if a.dest not in hidden)
    unknown = re.search(
        r"Option '([^']+)' is not accepted|unrecognized arguments: --?([\w-]+)",
        first,
        re.IGNORECASE,
    )
    if unknown:
        return unknown_key_message(unknown.group(1) or unknown.group(2), allowed)
    joined = " ".join(line.strip() for line in message.strip().splitlines())
    union = re.search(
        r'Parser key "(\w+)": Does not validate against any of the Union subtypes '
        r"Subtypes: \[((?:<class '\w+'>(?:, )?)+)\].*Given value: (.*)$",
        joined,
    )
    if union:  # an optional plain flag (``int | None``): name the flag and what it takes
        words = {"int": "an integer", "float": "a number", "str": "a string", "NoneType": "null"}
        kinds = re.findall(r"<class '(\w+)'>", union.group(2))
        accepts = " or ".join(words.get(k, k) for k in kinds)
        return f"--{union.group(1).replace('_', '-')}: accepts {accepts}, got {union.group(3)!r}"
    return joined
