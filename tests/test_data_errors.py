"""Every wrong input to the data and model builders is one line on stderr and exit code 2.

One row per case: (what the files are, the command line) -> the message's key words. Files are
made in tmp_path; a case that would train writes its runs there too, and must leave no checkpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mlenv.cli import main
from mlenv.data.tabular import check_same_columns, load_split, read_table, tabular_csv
from mlenv.errors import ConfigError, DataError


def rows(n: int = 40, label=lambda i: str(i % 2)) -> list[str]:
    """``n`` data rows ``a,b,y`` with distinct, non-constant features."""
    return [f"{(i * 7 % n) / n:.3f},{(i * 3 % n) / n + 0.5:.3f},{label(i)}" for i in range(n)]


def csv(tmp: Path, lines: list[str], name: str = "d.csv", header: str | None = "a,b,y") -> str:
    path = tmp / name
    path.write_text("\n".join(([header] if header else []) + lines) + "\n")
    return str(path)


def with_value_in(split_name: str) -> Callable[[Path], list[str]]:
    """A file whose only huge value (1e300) lies in a row of ``split_name``: the split depends
    on the labels and the seed only, so it is found on the clean file first."""

    def make(tmp: Path) -> list[str]:
        clean = csv(tmp, rows())
        split = load_split(clean, seed=0)
        line = int(split.table.lines[getattr(split, split_name)[0]])
        lines = rows()
        lines[line - 2] = "1e300" + lines[line - 2][lines[line - 2].index(",") :]
        return ["--data", csv(tmp, lines), "--val_size", "0.2"]

    return make


def book(step: str, text: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "book.txt").write_text(text)
        return ["book", step, "--data", str(tmp / "book.txt"), "--out", str(tmp / "o"), "--mkdir"]

    return make


def tab(make: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    return lambda tmp: ["train", "tabular-binary", *make(tmp)]


def good(tmp: Path) -> list[str]:
    return ["--data", csv(tmp, rows())]


CHAR = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "tinyshakespeare.txt")

# (id, argv from tmp_path, words the one-line message must hold)
CASES: list[tuple[str, Callable[[Path], list[str]], list[str]]] = [
    # 1. validation never the test split: the fraction flags and their ranges
    (
        "tabular-val-size-too-big",
        tab(lambda t: [*good(t), "--val-size", "0.9"]),
        ["--val-size", "[0, 0.8)", "got 0.9"],
    ),
    (
        "tabular-val-size-negative",
        tab(lambda t: [*good(t), "--val-size", "-0.1"]),
        ["--val-size", "[0, 0.8)"],
    ),
    (
        "tabular-test-size-zero",
        tab(lambda t: [*good(t), "--test-size", "0"]),
        ["--test-size", "(0, 1)"],
    ),
    (
        "tabular-test-size-1.5",
        tab(lambda t: [*good(t), "--test-size", "1.5"]),
        ["--test-size", "(0, 1)", "1.5"],
    ),
    ("tabular-folds-1", tab(lambda t: [*good(t), "--folds", "1"]), ["--folds", ">= 2"]),
    (
        "tabular-val-with-folds",
        tab(lambda t: [*good(t), "--folds", "2", "--val-size", "0.6"]),
        ["--val-size", "--folds 2"],
    ),
    # 2. the digits recipe
    (
        "digits-val-size-0",
        lambda t: ["train", "digits-mlp", "--val-size", "0"],
        ["--val-size", "(0, 0.8)", "got 0"],
    ),
    (
        "digits-test-size-1.5",
        lambda t: ["train", "digits-mlp", "--test-size", "1.5"],
        ["--test-size", "(0, 1)", "got 1.5"],
    ),
    (
        "digits-val-size-too-big",
        lambda t: ["train", "digits-mlp", "--val-size", "0.85"],
        ["--val-size", "(0, 0.8)"],
    ),
    (
        "digits-val-size-tiny",
        lambda t: ["train", "digits-mlp", "--val-size", "0.0001"],
        ["cannot split 1797 rows", "--val-size 0.0001"],
    ),
    (
        "char-val-fraction-1",
        lambda t: ["train", "char-lm", "--path", CHAR, "--val-fraction", "1"],
        ["--val-fraction", "(0, 1)"],
    ),
    # 3. a headerless file read with a header; duplicate names; short rows
    (
        "header-of-numbers",
        tab(lambda t: ["--data", csv(t, rows(), header=None)]),
        ["first line (0.000,0.500,0)", "looks like a data row", "--no-header"],
    ),
    (
        "header-of-numbers-and-a-label",
        tab(lambda t: ["--data", csv(t, rows(label=lambda i: "gh"[i % 2]), header=None)]),
        ["first line (0.000,0.500,g)", "--no-header"],
    ),
    (
        "duplicate-column",
        tab(lambda t: ["--data", csv(t, rows(), header="a,a,y")]),
        ["column 'a' twice"],
    ),
    (
        "short-row",
        tab(lambda t: ["--data", csv(t, [*rows(), "1.5,0"])]),
        ["row 42 has 2 fields; the first line has 3"],
    ),
    # 4. finite values that scaling makes non-finite, named by row and column
    (
        "huge-value-in-train",
        tab(with_value_in("train")),
        ["row ", "column 'a'", "1e+300", "overflow"],
    ),
    ("huge-value-in-val", tab(with_value_in("val")), ["row ", "column 'a'", "beyond float32"]),
    ("huge-value-in-test", tab(with_value_in("test")), ["row ", "column 'a'", "beyond float32"]),
    # 5. files that are not UTF-8 text, no --data, a folder
    (
        "latin-1-csv",
        tab(lambda t: ["--data", _bytes(t, b"a,b,y\n1,2,caf\xe9\n3,4,no\n")]),
        ["not UTF-8 text", "byte 0xe9 at byte offset 13, line 2"],
    ),
    (
        "binary-csv",
        tab(lambda t: ["--data", _bytes(t, b"PK\x03\x04\x00\x00binary")]),
        ["not a text file", "NUL byte at byte offset 4"],
    ),
    (
        "latin-1-text",
        lambda t: ["train", "char-lm", "--path", _bytes(t, b"caf\xe9 au lait\n" * 50)],
        ["not UTF-8 text", "byte offset 3, line 1"],
    ),
    ("no-data", tab(lambda t: []), ["give the CSV with --data FILE"]),
    ("data-is-a-folder", tab(lambda t: ["--data", str(t)]), ["is a folder, not a file"]),
    ("text-is-a-folder", lambda t: ["train", "char-lm", "--path", str(t)], ["is a folder"]),
    # 6. missing-label markers
    (
        "label-none-is-missing-by-default",
        tab(lambda t: ["--data", csv(t, rows(label=lambda i: ["none", "some"][i % 2]))]),
        ["row 2, column 'y': missing label", "--na-values"],
    ),
    # 9. meaningless model and text values
    ("tabular-hidden-0", tab(lambda t: [*good(t), "--hidden", "0"]), ["--hidden", ">= 1"]),
    (
        "tabular-hidden-negative",
        tab(lambda t: [*good(t), "--hidden", "64,-1"]),
        ["--hidden", ">= 1", "64,-1"],
    ),
    (
        "tabular-dropout-negative",
        tab(lambda t: [*good(t), "--dropout", "-0.1"]),
        ["--dropout", "[0, 1)", "-0.1"],
    ),
    (
        "tabular-dropout-1.5",
        tab(lambda t: [*good(t), "--dropout", "1.5"]),
        ["--dropout", "[0, 1)", "1.5"],
    ),
    (
        "digits-activation-foo",
        lambda t: ["train", "digits-mlp", "--activation", "foo"],
        ["--activation", "relu, gelu, tanh, silu", "'foo'"],
    ),
    ("digits-hidden-0", lambda t: ["train", "digits-mlp", "--hidden", "0"], ["--hidden", ">= 1"]),
    ("vae-latent-0", lambda t: ["train", "digits-vae", "--latent", "0"], ["--latent", ">= 1"]),
    (
        "char-block-size-0",
        lambda t: ["train", "char-lm", "--path", CHAR, "--block-size", "0"],
        ["--block-size", ">= 1", "got 0"],
    ),
    (
        "char-hidden-0",
        lambda t: ["train", "char-lm", "--path", CHAR, "--hidden", "0"],
        ["--hidden", ">= 1"],
    ),
    (
        "char-embed-0",
        lambda t: ["train", "char-lm", "--path", CHAR, "--embed", "0"],
        ["--embed", ">= 1"],
    ),
    (
        "char-max-chars-negative",
        lambda t: ["train", "char-lm", "--path", CHAR, "--max-chars", "-1"],
        ["--max-chars", ">= 0", "got -1"],
    ),
    # 10. book steps given data of the wrong shape
    ("step05-1d", book("step05", "1.0\n2.0\n3.0\n"), ["1 number a line", "expected 2 numbers"]),
    ("step04-1d", book("step04", "1.0\n2.0\n3.0\n"), ["1 number a line", "expected 2 numbers"]),
    ("step02-one-value", book("step02", "170.5\n"), ["1 line(s)", "at least 2"]),
    ("step02-2d", book("step02", "170 60\n180 70\n"), ["2 numbers a line", "expected 1 number"]),
    ("step03-1d", book("step03", "170\n180\n"), ["1 number a line", "height and weight"]),
    ("step05-not-numbers", book("step05", "a b\nc d\n"), ["not a file of numbers"]),
]


def _bytes(tmp: Path, payload: bytes) -> str:
    path = tmp / "raw.bin"
    path.write_bytes(payload)
    return str(path)


@pytest.mark.parametrize(("make", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_one_line_error(tmp_path, capsys, make, words):
    argv = make(tmp_path)
    if argv[0] == "train":
        argv += ["--runs_dir", str(tmp_path / "runs"), "--progress", "false"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("mlenv: error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not list((tmp_path / "runs").rglob("*.pt"))  # nothing trained


# ---- --save-split: files that must survive are byte-identical afterwards ----------------------


def snapshot(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()
    }


def save_split(tmp: Path, target: Path, *extra: str) -> int:
    data = csv(tmp, rows())
    return main(["check", "labels", "--data", data, "--save-split", str(target), *extra])


def test_save_split_refuses_a_folder_that_is_not_a_split(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "train.csv").write_text("my own train.csv\n")
    (folder / "notes.txt").write_text("keep\n")
    before = snapshot(folder)
    assert save_split(tmp_path, folder) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--save-split" in err and "not empty" in err
    assert snapshot(folder) == before


def test_save_split_refuses_a_file(tmp_path, capsys):
    target = tmp_path / "split"
    target.write_text("a file\n")
    assert save_split(tmp_path, target) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert target.read_text() == "a file\n"


def test_save_split_replaces_a_previous_split_only_with_force(tmp_path, capsys):
    folder = tmp_path / "split"
    data = csv(tmp_path, rows())
    # a first split with a validation part
    load_split(data, seed=0, val_size=0.2, save_split=str(folder))
    (folder / "notes.txt").write_text("keep\n")
    assert (folder / "val.csv").is_file()
    before = snapshot(folder)
    # a second one without validation: refused without force, nothing touched
    with pytest.raises(DataError, match="holds a previous split; give --save-split-force"):
        load_split(data, seed=1, val_size=0.0, save_split=str(folder))
    assert snapshot(folder) == before
    code = main(["check", "data", "--data", data, "--val-size", "0", "--save-split", str(folder)])
    assert code == 2 and "--save-split-force" in capsys.readouterr().err
    assert snapshot(folder) == before
    # with force the whole set is replaced: no stale val.csv beside the new train.csv
    load_split(data, seed=1, val_size=0.0, save_split=str(folder), save_split_force=True)
    after = snapshot(folder)
    assert "val.csv" not in after and "val_scaled.csv" not in after
    assert after["notes.txt"] == before["notes.txt"]  # not a split file: kept
    assert after["train.csv"] != before["train.csv"]


# ---- the same checks called directly ----------------------------------------------------------


def test_val_size_zero_means_no_validation(tmp_path):
    bundle = tabular_csv(seed=0, data=csv(tmp_path, rows()), val_size=0.0)
    assert bundle.val is None
    assert bundle.info["sizes"] == {"train": 32, "val": 0, "test": 8}


def test_prediction_rejects_unknown_labels_and_other_feature_counts(tmp_path):
    from mlenv.data.tabular import read_for_prediction

    state = tabular_csv(seed=0, data=csv(tmp_path, rows())).state
    other = csv(tmp_path, [*rows(), "0.1,0.2,2"], "new.csv")
    with pytest.raises(DataError) as info:
        read_for_prediction(other, state, no_header=False)
    assert "row 42, column 'y': label '2' was not seen in training" in str(info.value)
    assert "known labels: '0', '1'" in str(info.value)
    three = csv(tmp_path, ["1,2,3,0", "2,3,4,1"], "three.csv", header=None)
    with pytest.raises(DataError, match="has 4 columns; the model was trained on 2 features"):
        read_for_prediction(three, state, no_header=True)
    huge = csv(tmp_path, ["1e300,0.5,1", "0.1,0.2,0"], "huge.csv")
    with pytest.raises(DataError, match=r"row 2, column 'a': value 1e\+300 .* beyond float32"):
        read_for_prediction(huge, state, no_header=False)


def test_check_same_columns_names_the_feature_counts(tmp_path):
    trained = tabular_csv(seed=0, data=csv(tmp_path, rows())).state
    lines = [f"{r.rsplit(',', 1)[0]},{i % 5},{i % 2}" for i, r in enumerate(rows())]
    wider = tabular_csv(seed=0, data=csv(tmp_path, lines, "w.csv", header="a,b,c,y")).state
    with pytest.raises(DataError, match="has 3 feature columns; the model was trained on 2"):
        check_same_columns(wider, trained)
    check_same_columns(trained, trained)


def test_builders_raise_config_errors_directly():
    from mlenv.models import create_model

    for name, kwargs, words in [
        ("mlp", {"in_features": 4, "hidden": [0]}, "--hidden"),
        ("mlp", {"in_features": 4, "dropout": 1.0}, "--dropout"),
        ("mlp", {"in_features": 4, "activation": "foo"}, "--activation"),
        ("binary-mlp", {"in_features": 4, "output": "probit"}, "--output"),
        ("rnn-lm", {"vocab_size": 5, "cell": "rnn"}, "--cell"),
        ("rnn-lm", {"vocab_size": 5, "layers": 0}, "--layers"),
        ("vae", {"in_features": 4, "hidden": 0}, "--hidden"),
    ]:
        with pytest.raises(ConfigError, match=words):
            create_model(name, **kwargs)


def test_a_header_of_column_positions_is_a_header(tmp_path):
    """pandas writes 0,1,2 as the header of a frame made from an array: names, not data."""
    table = read_table(csv(tmp_path, rows(), header="0,1,2"))
    assert table.columns == ["0", "1"] and table.target == "2" and len(table.labels) == 40


def test_na_values_lets_none_be_a_label(tmp_path, capsys):
    data = csv(tmp_path, rows(label=lambda i: ["none", "some"][i % 2]))
    table = read_table(data, na_values="")
    assert table.label_values == ["none", "some"]
    assert np.bincount(table.labels).tolist() == [20, 20]
    assert main(["check", "labels", "--data", data, "--na-values", ""]) == 0
    assert "none" in capsys.readouterr().out
    # the markers are also the feature columns' missing values
    text = csv(tmp_path, [*rows()[:-1], "-,0.5,1"], "dash.csv")
    with pytest.raises(DataError, match="non-numeric value '-'"):
        read_table(text)
    with pytest.raises(DataError, match="row 41, column 'a': missing value"):
        read_table(text, na_values="-")
