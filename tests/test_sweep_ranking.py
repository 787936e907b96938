"""`mlenv sweep show` and the search space without training anything: the ranking of a study's
trials (best first for either direction, pruned trials left out) in a real SQLite study, and every
parameter type of a space file sampled within its bounds and on its scale."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from mlenv.bench import sweep as sweeps
from mlenv.cli import main
from mlenv.errors import ConfigError

LR = FloatDistribution(1e-4, 1e-1, log=True)
# (direction, complete trials' values, the pruned trial's value, the ranking as indices into the
# values, the order `show` names): the pruned trial's value (what Optuna records for one: its
# last reported epoch) would be the best in either direction if it were ranked
STUDIES = {
    "min": ("minimize", [0.30, 0.10, 0.20, 0.40], 0.05, [1, 2, 0], "lowest"),
    "max": ("maximize", [0.80, 0.60, 0.90, 0.70], 0.95, [2, 0, 3], "highest"),
}


def add(study, state: str, lr: float, value: float) -> None:
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE if state == "complete" else TrialState.PRUNED,
            value=value,
            params={"lr": lr},
            distributions={"lr": LR},
            user_attrs={"run_id": f"run-{len(study.trials)}"},
            intermediate_values={0: value, 1: value} if state == "complete" else {0: value},
        )
    )


@pytest.fixture(scope="module")
def storage_url(tmp_path_factory) -> str:
    """One SQLite database (creating one takes seconds) with the studies ``min`` and ``max``
    (trials 0, 2, 3, 4 complete, trial 1 pruned; the complete ones share their lr, so no fANOVA
    runs), ``one`` (a pruned and a complete trial) and ``empty``."""
    url = f"sqlite:///{tmp_path_factory.mktemp('sweep') / 'optuna.db'}"
    storage = optuna.storages.RDBStorage(url)
    for name, (direction, values, pruned, _, _) in STUDIES.items():
        study = optuna.create_study(storage=storage, study_name=name, direction=direction)
        mode = direction[:3]
        plan = {"recipe": "tabular-binary", "metric": "val_m", "mode": mode, "overrides": []}
        study.set_user_attr("mlenv", plan)
        add(study, "complete", 1e-3, values[0])
        add(study, "pruned", 5e-2, pruned)
        for value in values[1:]:
            add(study, "complete", 1e-3, value)
    one = optuna.create_study(storage=storage, study_name="one")
    add(one, "pruned", 1e-3, 0.1)
    add(one, "complete", 1e-2, 0.5)
    optuna.create_study(storage=storage, study_name="empty", direction="maximize")
    return url


@pytest.mark.parametrize("name", list(STUDIES))
def test_sweep_show_ranks_complete_trials_best_first_and_leaves_pruned_ones_out(
    storage_url, capsys, name
):
    _, values, _, ranked, order = STUDIES[name]
    numbers = [0, 2, 3, 4]  # the complete trials, in the order of ``values``
    expected = [numbers[i] for i in ranked]
    result = sweeps.show(name, storage_url, None, top=3)
    out = capsys.readouterr().out
    assert [row["trial"] for row in result["best"]] == expected
    assert [row["val_m"] for row in result["best"]] == [values[i] for i in ranked]
    assert [row["run"] for row in result["best"]] == [f"run-{n}" for n in expected]
    assert result["best"][0]["epochs"] == 1 and result["counts"] == {"complete": 4, "pruned": 1}
    assert "5 trials (4 complete, 1 pruned)" in out
    assert f"best 3 trials ({order} first):" in out
    table = out.split(f"({order} first):\n", 1)[1].splitlines()
    assert [int(line.split()[0]) for line in table[2:5]] == expected  # printed in that order
    assert "best trial's flags: --lr 0.001\n" in out
    # the line `mlenv sweep` prints at the end names the same best trial
    plan = SimpleNamespace(study_name=name, storage_url=storage_url, metric="val_m")
    best_line = next(line for line in sweeps.summary_lines(plan) if line.startswith("best:"))
    assert best_line.startswith(f"best: trial {expected[0]}, val_m {values[ranked[0]]:.6g}, run ")
    # a --top larger than the study: every complete trial, still no pruned one
    every = sweeps.best_trials(optuna.load_study(study_name=name, storage=storage_url), 9)
    best_first = sorted(values, reverse=order == "highest")
    assert [t.value for t in every] == best_first


def test_sweep_show_command_passes_top_and_writes_the_plots(storage_url, tmp_path, capsys):
    out = tmp_path / "plots"
    assert (
        main(["sweep", "show", "max", "--storage", storage_url, "--top", "2", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "best 2 trials (highest first):" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(sweeps.PLOTS)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in out.iterdir())


def test_sweep_show_with_one_complete_trial_or_none(storage_url, capsys):
    result = sweeps.show("one", storage_url, None)
    assert [row["trial"] for row in result["best"]] == [1] and result["importances"] == {}
    out = capsys.readouterr().out
    assert "best trial's flags: --lr 0.01\n" in out
    assert "parameter importances: need 2+ finished trials" in out
    assert sweeps.show("empty", storage_url, None)["best"] == []
    assert "no finished trial yet" in capsys.readouterr().out


# -- the space: every type sampled within its bounds and on its scale ----------------------------

FIELDS = ["lr", "weight_decay", "batch_size", "hidden_width", "hidden", "optimizer", "runs_dir"]
SPACE = {
    "lr": {"type": "float", "low": "1e-4", "high": 1e-2, "log": True},  # YAML's text "1e-4"
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.01, "step": 0.0025},
    "batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
    "hidden_width": {"type": "int", "low": 1, "high": 256, "log": True},
    "hidden": {"type": "categorical", "choices": [[64, 32], [16], "wide"]},
    "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
}


def test_every_parameter_type_is_sampled_within_its_bounds_and_scale():
    params = {p.name: p for p in sweeps.parse_space(SPACE, "space.yaml", FIELDS)}
    assert params["lr"].describe() == "lr: float in [0.0001, 0.01] log"
    assert params["batch_size"].describe() == "batch_size: int in [16, 64] step 16"
    assert params["hidden"].choices == ["[64, 32]", "[16]", "wide"]  # lists kept as their text
    assert params["lr"].values_to_check() == [1e-4, 1e-2]  # both bounds are checked
    assert params["hidden"].values_to_check() == ["[64, 32]", "[16]", "wide"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn: dict[str, list] = {name: [] for name in params}
    for _ in range(400):
        trial = study.ask()
        for name, param in params.items():
            drawn[name].append(param.suggest(trial))
        study.tell(trial, 0.0)
    lr = np.array(drawn["lr"])
    assert lr.min() >= 1e-4 and lr.max() <= 1e-2
    # log-uniform: half the draws below the geometric midpoint 1e-3 (uniform: 9 in 99)
    assert np.mean(lr < 1e-3) == pytest.approx(0.5, abs=0.08)
    assert set(drawn["weight_decay"]) == {0.0, 0.0025, 0.005, 0.0075, 0.01}
    assert set(drawn["batch_size"]) == {16, 32, 48, 64}
    width = np.array(drawn["hidden_width"])
    assert width.min() >= 1 and width.max() <= 256
    assert all(type(w) is int for w in drawn["hidden_width"] + drawn["batch_size"])
    # log scale over [1, 256]: about half the draws <= 16 (uniform: 16 in 256)
    assert np.mean(width <= 16) == pytest.approx(0.5, abs=0.1)
    assert set(drawn["hidden"]) == {"[64, 32]", "[16]", "wide"}
    assert set(drawn["optimizer"]) == {"adamw", "sgd"}
    assert (
        math.isclose(study.trials[0].distributions["lr"].low, 1e-4)
        and study.trials[0].distributions["hidden_width"].log
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"lr": {"type": "float", "low": 0.1, "high": 0.2, "step": 0}},
            "lr: step accepts a number > 0, got 0",
        ),
        (
            {"lr": {"type": "float", "low": 0.1, "high": 0.2, "log": True, "step": 0.1}},
            "lr: give log or step, not both",
        ),
        (
            {"batch_size": {"type": "int", "low": 8, "high": 64, "log": True, "step": 8}},
            "batch_size: give log or step, not both",
        ),
        (
            {"lr": {"type": "float", "low": -1, "high": 0.2, "log": True}},
            "lr: log needs low > 0, got -1",
        ),
        (
            {"optimizer": {"type": "categorical", "choices": ["adamw", "sgd", "adamw"]}},
            "optimizer: choices holds a value twice",
        ),
        (
            {"hidden": {"type": "categorical", "choices": [[16], [16]]}},
            "hidden: choices holds a value twice",
        ),
        (
            {"optimizer": {"type": "categorical", "choices": []}},
            "optimizer: choices accepts a non-empty list, got []",
        ),
        ({"lr": {"type": "float", "low": 0.1}}, "lr: type float needs low and high"),
        (
            {"lr": {"type": "float", "low": 0.1, "high": 0.2, "log": "yes"}},
            "lr: log accepts true or false",
        ),
        (
            {"batch_size": {"type": "int", "low": 8, "high": "lots"}},
            "batch_size: high: accepts an integer, got 'lots'",
        ),
        (
            {"lr": {"type": "float", "low": 0.1, "high": 0.2, "choices": [1]}},
            "lr: unknown key 'choices' for type float; allowed keys: type, low, high, log, step",
        ),
        ({"runs_dir": {"type": "categorical", "choices": ["a"]}}, "unknown key 'runs_dir'"),
    ],
)
def test_space_refuses_bad_entries_naming_the_key(spec, message):
    with pytest.raises(ConfigError) as err:
        sweeps.parse_space(spec, "space.yaml", FIELDS)
    assert message in str(err.value) and str(err.value).startswith("--space: space.yaml: ")


def test_space_accepts_what_is_valid_at_the_edges():
    # equal bounds (a fixed value), an int log range with step 1, a low bound of 0 without log
    space = {
        "lr": {"type": "float", "low": 0.01, "high": 0.01},
        "batch_size": {"type": "int", "low": 1, "high": 64, "log": True, "step": 1},
        "weight_decay": {"type": "float", "low": 0, "high": 0.1},
    }
    lr, batch, decay = sweeps.parse_space(space, "space.yaml", FIELDS)
    assert (lr.low, lr.high) == (0.01, 0.01)
    assert (batch.log, batch.step) == (True, 1) and isinstance(batch.low, int)
    assert decay.low == 0.0
    # the allowed fields are named when a key is unknown, without the ones a sweep sets
    with pytest.raises(ConfigError) as err:
        sweeps.parse_space({"lrr": {"type": "float", "low": 0, "high": 1}}, "space.yaml", FIELDS)
    allowed = str(err.value).split("allowed keys: ", 1)[1]
    assert "lr" in allowed and "batch_size" in allowed and "runs_dir" not in allowed
