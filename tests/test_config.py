"""Configuration: precedence, round trip, and a clear error for each kind of bad input."""

from __future__ import annotations

import pytest
import yaml

from mlenv.cli import main
from mlenv.config import TrainConfig, load_recipe, resolve
from mlenv.errors import ConfigError


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--lr", "-1"], "lr: accepts a number > 0, got -1.0"),
        (["--epochs", "0"], "epochs: accepts a number > 0, got 0"),
        (["--epochs", "abc"], "key \"epochs\": Expected a <class 'int'>. Got value: abc"),
        (["--precision", "8"], "\"precision\": Expected a typing.Literal['32', 'bf16', '16']"),
        (["--bogus", "3"], "unknown key 'bogus'; allowed keys: accumulate, activation"),
        (["--epochz", "3"], "unknown key 'epochz' (did you mean 'epochs'?)"),
        (["--warmup-epoch", "1"], "unknown key 'warmup-epoch'"),
        (["--device", "tpu"], "device: accepts auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
        (["--min-lr", "0.1"], "min_lr: must not exceed lr (0.001), got 0.1"),
        (["--divergence-threshold", "-1"], "divergence_threshold: accepts a number > 0, got -1"),
        (["--early-stopping", "--patience", "0"], "patience: early stopping needs patience >= 1"),
        (["--threads", "0"], "threads: accepts a number > 0, got 0"),
        (["--experiment", "../x"], "experiment: accepts a folder name"),
        (["--mode", "sideways"], '"mode"'),
        (["--test-on", "middle"], '"test_on"'),
    ],
)
def test_bad_flag_exits_non_zero_naming_the_field(capsys, argv, expected):
    code, out, err = run_cli(capsys, "args", "digits-mlp", *argv)
    assert code == 2
    assert out == ""
    assert expected in err


def test_unknown_key_in_config_file_names_key_and_allowed(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: digits-mlp\nepochz: 3\n")
    code, _, err = run_cli(capsys, "args", "--config", str(path))
    assert code == 2
    assert "unknown key 'epochz' (did you mean 'epochs'?); allowed keys:" in err


def test_wrong_type_in_python_api_names_field():
    with pytest.raises(ConfigError, match=r"batch_size: accepts an integer, got '32'"):
        TrainConfig(batch_size="32")
    with pytest.raises(ConfigError, match=r"unknown key 'lrr' \(did you mean 'lr'\?\)"):
        TrainConfig.from_dict({"lrr": 0.1})


def test_unknown_recipe_suggests_the_close_one(capsys):
    code, _, err = run_cli(capsys, "args", "digits-mpl")
    assert code == 2
    assert "unknown recipe 'digits-mpl' (did you mean 'digits-mlp'?)" in err


def test_precedence_defaults_recipe_config_file_command_line(capsys, tmp_path):
    recipe = load_recipe("digits-mlp")
    cfg = resolve(recipe, [])
    assert cfg.train.epochs == recipe.train["epochs"] == 15  # recipe over default (10)
    assert cfg.train.optimizer == "adam"  # default
    path = tmp_path / "c.yaml"
    path.write_text("recipe: digits-mlp\nepochs: 7\nlr: 0.01\n")
    cfg = resolve(recipe, ["--config", str(path), "--lr", "0.5"])
    assert cfg.train.epochs == 7  # file over recipe
    assert cfg.train.lr == 0.5  # command line over file


def test_hyphenated_flags_and_bare_switches_are_accepted(capsys):
    code, out, _ = run_cli(
        capsys,
        "args",
        "digits-mlp",
        "--test-size",
        "0.3",
        "--save-every=2",
        "--deterministic",
        "--fast-dev-run",
        "--compile",
        "false",
    )
    assert code == 0
    values = yaml.safe_load(out)
    assert values["test_size"] == 0.3 and values["save_every"] == 2
    assert values["deterministic"] is True and values["fast_dev_run"] is True
    assert values["compile"] is False


def test_args_output_feeds_back_with_config(capsys, tmp_path):
    code, first, _ = run_cli(capsys, "args", "digits-mlp", "--epochs", "4", "--hidden", "16,8")
    assert code == 0
    values = yaml.safe_load(first)
    assert values["epochs"] == 4 and values["hidden"] == [16, 8] and values["precision"] == "32"
    path = tmp_path / "resolved.yaml"
    path.write_text(first)
    code, second, _ = run_cli(capsys, "args", "--config", str(path))
    assert code == 0
    assert second == first


def test_list_commands(capsys):
    assert "mlp " in run_cli(capsys, "list", "models")[1]
    assert "digits-mlp" in run_cli(capsys, "list", "recipes")[1]
    code, _, err = run_cli(capsys, "list", "things")
    assert code == 2 and "accepts models, datasets, recipes or trainers" in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--threshold", "2"], "threshold: accepts a probability in (0, 1), got 2.0"),
        (["--threshold", "0"], "threshold: accepts a probability in (0, 1), got 0.0"),
    ],
)
def test_task_options_are_checked_before_training(capsys, tmp_path, shared_data, argv, expected):
    data = shared_data / "tabular" / "spambase.data"
    runs = tmp_path / "runs"
    code, _, err = run_cli(
        capsys,
        "train",
        "tabular-binary",
        "--data",
        str(data),
        "--no-header",
        "--runs-dir",
        str(runs),
        *argv,
    )
    assert code == 2
    assert expected in err and err.count("\n") == 1, err
    assert not runs.exists()


def test_train_config_bounds_are_exact():
    for bad, message in (
        ({"lr": 0.0}, "lr: accepts a number > 0, got 0.0"),
        ({"weight_decay": -0.5}, "weight_decay: accepts a number >= 0, got -0.5"),
        ({"beta2": 1.0}, "beta2: accepts a number in [0, 1), got 1.0"),
        ({"ema": 0.0}, "ema: accepts a decay in (0, 1)"),
        ({"warmup_start_factor": 1.5}, "warmup_start_factor: accepts a number in (0, 1]"),
        ({"lr": True}, "lr: accepts a number, got True"),
    ):
        with pytest.raises(ConfigError) as caught:
            TrainConfig(**bad)
        assert message in str(caught.value), (bad, str(caught.value))
    # the edges that are allowed
    edge = TrainConfig(
        lr=0.01, min_lr=0.01, beta1=0.0, weight_decay=0.0, warmup_start_factor=1.0, ema=0.5
    )
    assert (edge.min_lr, edge.beta1, edge.warmup_start_factor) == (0.01, 0.0, 1.0)


def test_resolve_mode_from_the_metric_name_task_and_loss_terms():
    from mlenv.config import resolve_mode

    assert resolve_mode("val_recon_loss", None) == "min"
    assert resolve_mode("train_acc", None) == "max"
    assert resolve_mode("val_macro_f1", None) == "max"
    assert resolve_mode("val_kl", None, loss_terms=("kl", "recon")) == "min"
    assert resolve_mode("val_perplexity", None, task_modes={"perplexity": "min"}) == "min"
    assert resolve_mode("val_perplexity", "max") == "max"  # unknown name: the given mode
    with pytest.raises(ConfigError, match="mode: 'min' contradicts 'val_acc'"):
        resolve_mode("val_acc", "min")
    with pytest.raises(ConfigError, match="cannot tell whether a higher or a lower 'val_zeta'"):
        resolve_mode("val_zeta", None)


def test_a_stored_configuration_with_an_unknown_key_names_it_and_the_allowed_ones():
    recipe = load_recipe("digits-mlp")
    with pytest.raises(ConfigError, match=r"unknown key 'epochz' \(did you mean 'epochs'\?\)"):
        resolve(recipe, [], base={"epochz": 3})
    resolved = resolve(recipe, ["--lr", "0.5"], base={"lr": 0.25, "epochs": 7})
    assert (resolved.train.lr, resolved.train.epochs) == (0.5, 7)  # command line over base


def test_a_recipe_file_with_an_unknown_train_key_is_an_error(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("trainer: classification\ndataset: digits\nmodel: mlp\ntrain:\n  lrr: 0.1\n")
    code, _, err = run_cli(capsys, "args", str(path))
    assert code == 2
    assert "recipe mine train: unknown key 'lrr' (did you mean 'lr'?); allowed keys:" in err
