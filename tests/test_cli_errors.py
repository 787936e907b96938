"""Every mistake a user can make on the command line is one line on stderr and a non-zero exit,
never a traceback, and never a lost file: one table row per case."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mlenv.cli import COMMANDS, main
from mlenv.track.store import Store

MLENV = [sys.executable, "-m", "mlenv.cli"]


@pytest.fixture()
def ws(tmp_path, monkeypatch):
    """A workspace of files the commands read or must not overwrite; the current folder is
    ``ws/cwd`` and ``ws/outside`` is not below it."""
    from safetensors.numpy import save_file

    (tmp_path / "cwd").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "bad.yaml").write_text("recipe: digits-mlp\nepochs: [1, 2\nlr: 0.1\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "data.csv").write_bytes(b"a,b,label\n1,2,0\n3,4,1\n")
    os.symlink(tmp_path / "data.csv", tmp_path / "data-symlink.csv")
    os.link(tmp_path / "data.csv", tmp_path / "data-hardlink.csv")
    (tmp_path / "exists.csv").write_bytes(b"keep me\n")
    (tmp_path / "notes.txt").write_bytes(b"not a store\n")
    os.mkfifo(tmp_path / "fifo")
    # a reader keeps the FIFO open, so a command that wrongly writes to it goes on (and the test
    # sees the bytes) instead of blocking forever
    reader = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    for name in ("golden", "other"):
        (tmp_path / name).mkdir()
        weights = {"layer.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
        save_file(weights, str(tmp_path / name / "weights.safetensors"))
    (tmp_path / "golden" / "manifest.json").write_text(json.dumps({"activations": {"order": []}}))
    (tmp_path / "empty").mkdir()
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "mine.txt").write_bytes(b"mine\n")
    run = tmp_path / "runs" / "exp" / "20260101-000000-abcdef"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"checkpoint bytes")
    (run / "config.yaml").write_text("recipe: digits-mlp\n")
    (run / "summary.json").write_text(json.dumps({"run_id": run.name, "status": "finished"}))
    Store(tmp_path / "mlenv.db").close()
    (tmp_path / "corrupt.db").write_bytes(b"SQLite format 3\0" + b"garbage" * 200)
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "project").mkdir()  # one run-folder marker alone: a user's project, not a run
    (tmp_path / "project" / "config.yaml").write_text("mine: 1\n")
    monkeypatch.chdir(tmp_path / "cwd")
    yield tmp_path
    os.close(reader)


def fifo_untouched(path: Path) -> bool:
    """Still a FIFO, and nothing was written into it."""
    if not stat.S_ISFIFO(os.lstat(path).st_mode):
        return False
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        return os.read(fd, 1) == b""
    except BlockingIOError:  # a writer still holds it open, with nothing written
        return True
    finally:
        os.close(fd)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every regular file's bytes (not the FIFO, not SQLite's side files)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and not p.name.endswith(("-wal", "-shm"))
    }


RUN = "{ws}/runs/exp/20260101-000000-abcdef"
STORE = ["--store", "{ws}/mlenv.db"]
PREDICT = ["predict", "--weights", RUN, "--data", "{ws}/data.csv", "--out"]
GOLDEN = ["export", "golden", "--weights", RUN, "--out"]
ONNX = ["export", "onnx", "--weights", RUN, "--out"]
BENCH = ["bench", "mlp", "--input-shape", "20"]

# (case id, argv with {ws} for the workspace, exit code, words the message must hold)
CASES = [
    ("unknown-command", ["frob"], 2, ["unknown command 'frob'"]),
    ("config-invalid-yaml", ["args", "--config", "{ws}/bad.yaml"], 2, ["not valid YAML", "line"]),
    ("config-not-mapping", ["args", "--config", "{ws}/list.yaml"], 2, ["not a mapping"]),
    ("config-missing", ["train", "--config", "{ws}/nope.yaml"], 2, ["no such file"]),
    ("list-unknown", ["list", "things"], 2, ["accepts models, datasets"]),
    ("bench-batch-size-0", [*BENCH, "--batch-sizes", "0"], 2, ["--batch-sizes", ">= 1"]),
    ("bench-batch-negative", [*BENCH, "--batch-sizes", "1,-4"], 2, ["--batch-sizes", ">= 1"]),
    ("bench-batch-text", [*BENCH, "--batch_sizes", "1,x"], 2, ["--batch_sizes", "integers"]),
    ("bench-threads-0", [*BENCH, "--threads", "0"], 2, ["--threads", ">= 1"]),
    ("bench-threads-text", [*BENCH, "--threads", "many"], 2, ["--threads", "integer"]),
    ("bench-shape-trailing-comma", ["bench", "mlp", "--input-shape", "20,"], 2, ["--input-shape"]),
    ("bench-shape-zero", ["bench", "mlp", "--input-shape", "0"], 2, ["--input-shape", ">= 1"]),
    ("bench-shape-text", ["bench", "mlp", "--input_shape", "x"], 2, ["--input_shape"]),
    ("bench-out-not-jsonl", [*BENCH, "--out", "{ws}/data.csv"], 2, ["not a JSON-lines"]),
    ("bench-out-fifo", [*BENCH, "--out", "{ws}/fifo"], 2, ["not a regular file"]),
    ("bench-out-folder", [*BENCH, "--out", "{ws}/empty"], 2, ["is a folder"]),
    (
        "parity-negative-rtol",
        ["parity", "{ws}/golden", "{ws}/other", "--rtol", "-1"],
        2,
        ["--rtol"],
    ),
    (
        "parity-negative-atol",
        ["parity", "{ws}/golden", "{ws}/other", "--atol=-1e-3"],
        2,
        ["--atol"],
    ),
    ("parity-nan-atol", ["parity", "{ws}/golden", "{ws}/other", "--atol", "nan"], 2, ["--atol"]),
    ("parity-equal", ["parity", "{ws}/golden", "{ws}/other"], 0, []),
    ("parity-empty-folder", ["parity", "{ws}/golden", "{ws}/empty"], 1, ["no tensor compared"]),
    ("parity-missing-folder", ["parity", "{ws}/golden", "{ws}/nope"], 2, ["no such folder"]),
    ("parity-missing-first", ["parity", "{ws}/nope", "{ws}/other"], 2, ["no such folder"]),
    ("parity-not-golden", ["parity", "{ws}/empty", "{ws}/other"], 2, ["no manifest.json"]),
    ("store-is-folder", ["runs", "list", "--store", "{ws}"], 2, ["--store", "is a folder"]),
    ("store-not-sqlite", ["runs", "list", "--store", "{ws}/notes.txt"], 2, ["not an experiment"]),
    ("store-corrupt", ["runs", "list", "--store", "{ws}/corrupt.db"], 2, ["not a database"]),
    (
        "store-before-action",
        ["runs", "--store", "{ws}/notes.txt", "list"],
        2,
        ["not an experiment"],
    ),
    ("config-is-folder", ["args", "{ws}/folder.yaml"], 2, ["folder.yaml", "is a folder"]),
    ("store-missing", ["compare", "a", "b", "--store", "{ws}/nope.db"], 2, ["does not exist"]),
    ("compare-one-group", ["compare", "a", *STORE], 2, ["at least two groups"]),
    ("compare-alpha", ["compare", "a", "b", "--alpha", "2", *STORE], 2, ["--alpha", "(0, 1)"]),
    ("compare-plot-folder", ["compare", "a", "b", *STORE, "--plot", "{ws}/empty"], 2, ["folder"]),
    (
        "compare-plot-is-store",
        ["compare", "a", "b", *STORE, "--plot", "{ws}/mlenv.db"],
        2,
        ["reads"],
    ),
    ("predict-out-is-data", [*PREDICT, "{ws}/data.csv", "--force"], 2, ["data.csv", "reads"]),
    ("predict-out-symlink", [*PREDICT, "{ws}/data-symlink.csv", "--force"], 2, ["reads"]),
    ("predict-out-hardlink", [*PREDICT, "{ws}/data-hardlink.csv", "--force"], 2, ["reads"]),
    ("predict-out-fifo", [*PREDICT, "{ws}/fifo", "--force"], 2, ["not a regular file"]),
    ("predict-out-folder", [*PREDICT, "{ws}/empty", "--force"], 2, ["is a folder"]),
    ("predict-out-exists", [*PREDICT, "{ws}/exists.csv"], 2, ["exists.csv", "--force"]),
    ("predict-out-in-run", [*PREDICT, f"{RUN}/preds.csv", "--force"], 2, ["run folder"]),
    (
        "predict-out-checkpoint",
        [*PREDICT, f"{RUN}/checkpoints/last.pt", "--force"],
        2,
        ["run folder"],
    ),
    ("predict-out-no-folder", [*PREDICT, "{ws}/outside/a/b.csv"], 2, ["does not exist", "--mkdir"]),
    ("predict-out-under-file", [*PREDICT, "{ws}/exists.csv/p.csv"], 2, ["not a folder"]),
    ("predict-missing-flags", ["predict", "--weights", RUN], 2, ["required", "--data"]),
    ("predict-bad-switch", [*PREDICT, "p.csv", "--no-header", "maybe"], 2, ["true or false"]),
    ("golden-out-is-file", [*GOLDEN, "{ws}/exists.csv"], 2, ["not a folder"]),
    ("golden-out-not-empty", [*GOLDEN, "{ws}/nonempty"], 2, ["not empty", "--force"]),
    (
        "golden-out-is-run",
        ["export", "golden", "--weights", "{ws}/golden", "--out", RUN, "--force"],
        2,
        ["run folder"],
    ),
    ("golden-out-holds-input", [*GOLDEN, "{ws}/runs", "--force"], 2, ["reads"]),
    ("golden-batch-size-0", [*GOLDEN, "g", "--batch-size", "0"], 2, ["--batch-size", ">= 1"]),
    ("onnx-out-folder", [*ONNX, "{ws}/empty", "--force"], 2, ["is a folder"]),
    ("onnx-out-exists", [*ONNX, "{ws}/exists.csv"], 2, ["--force"]),
    ("onnx-out-is-checkpoint", [*ONNX, f"{RUN}/checkpoints/last.pt", "--force"], 2, ["run folder"]),
    ("book-unknown-step", ["book", "step99"], 2, ["unknown book step"]),
    ("book-out-is-file", ["book", "step01", "--out", "{ws}/exists.csv"], 2, ["not a folder"]),
    (
        "book-out-holds-data",
        ["book", "step05", "--out", "{ws}", "--data", "{ws}/data.csv", "--force"],
        2,
        ["reads"],
    ),
    ("cv-one-fold", ["cv", "digits-mlp", "--folds", "1"], 2, ["--folds", ">= 2"]),
    ("repeat-no-seeds", ["repeat", "digits-mlp"], 2, ["--seeds"]),
    ("runs-unknown-action", ["runs", "frob", *STORE], 2, ["invalid choice"]),
    ("runs-show-short-prefix", ["runs", "show", "2026", *STORE], 2, ["at least 6"]),
    ("check-unknown", ["check", "frob"], 2, ["invalid choice"]),
    ("check-loss-extra", ["check", "loss", "--frob"], 2, ["no arguments"]),
]


@pytest.mark.parametrize(
    ("argv", "code", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_one_line_error_and_nothing_changed(ws, capsys, argv, code, words):
    before = snapshot(ws)
    got = main([a.format(ws=ws) for a in argv])
    out, err = capsys.readouterr()
    assert got == code, (out, err)
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("mlenv: error: ")
    for word in words:
        assert word in out + err, (word, err)
    assert snapshot(ws) == before  # no file changed, created or lost
    assert fifo_untouched(ws / "fifo")
    assert not (ws / "outside" / "a").exists()


HELP = [
    *[[c] for c in COMMANDS],
    ["train", "digits-mlp"],
    ["args", "digits-mlp"],
    ["check", "data"],
    ["check", "labels"],
    ["check", "loss"],
    ["export", "golden"],
    ["export", "onnx"],
    ["runs", "list"],
    ["runs", "show"],
    ["runs", "delete"],
]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("command", HELP, ids=" ".join)
def test_every_command_has_help(command, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no store, no runs: help needs neither
    assert main([*command, flag]) == 0
    out = capsys.readouterr().out
    assert "usage: mlenv " + command[0] in out
    assert not list(tmp_path.iterdir())  # help writes nothing


def test_help_names_every_flag(capsys):
    for argv, flags in (
        (["predict"], ["--weights", "--data", "--out", "--no-header", "--force", "--mkdir"]),
        (["bench"], ["--batch-sizes", "--input-shape", "--threads", "--device", "--out"]),
        (["compare"], ["--metric", "--alpha", "--unpaired", "--plot", "--store", "--force"]),
        (["runs", "delete"], ["--yes", "--force", "--store", "prefix"]),
        (["parity"], ["--rtol", "--atol", "DIR_A", "DIR_B"]),
    ):
        assert main([*argv, "--help"]) == 0
        out = capsys.readouterr().out
        assert all(f in out for f in flags), (argv, out)


def test_write_refusals_are_overridable_where_safe(ws, capsys):
    """--force replaces an existing plain file; --mkdir creates folders outside the current one;
    a folder missing below the current one is created without asking."""
    from mlenv.track.outputs import check_output_dir, check_output_file

    assert check_output_file(ws / "exists.csv", force=True) == ws / "exists.csv"
    assert (ws / "exists.csv").read_bytes() == b"keep me\n"  # checked, not touched
    deep = ws / "outside" / "x" / "y" / "p.csv"
    assert check_output_file(deep, mkdir=True) == deep and deep.parent.is_dir()
    assert check_output_file("below/here/p.csv") == Path("below/here/p.csv")
    assert Path("below/here").is_dir()
    assert check_output_file(ws / "project" / "preds.csv") == ws / "project" / "preds.csv"
    assert check_output_dir(ws / "nonempty", force=True) == ws / "nonempty"
    assert check_output_dir(ws / "outside" / "new") == ws / "outside" / "new"
    assert (ws / "nonempty" / "mine.txt").read_bytes() == b"mine\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real tabular run, so that a missing check would really overwrite the file."""
    folder = tmp_path_factory.mktemp("trained")
    rows = "".join(f"{i},{(i * 7) % 11},{i % 3},{'yes' if i % 2 else 'no'}\n" for i in range(60))
    (folder / "data.csv").write_text("a,b,c,label\n" + rows)
    argv = ["train", "tabular-binary", "--data", str(folder / "data.csv"), "--epochs", "2"]
    assert main([*argv, "--runs_dir", str(folder / "runs"), "--progress", "false"]) == 0
    (run,) = (folder / "runs" / "tabular-binary").iterdir()
    os.symlink(folder / "data.csv", folder / "data-symlink.csv")
    os.link(folder / "data.csv", folder / "data-hardlink.csv")
    return folder, run


def test_predict_never_overwrites_its_input_or_a_run(trained, capsys, monkeypatch):
    folder, run = trained
    monkeypatch.chdir(folder)
    before = snapshot(folder)
    predict = ["predict", "--weights", str(run), "--data", str(folder / "data.csv"), "--force"]
    for out in (
        folder / "data.csv",
        folder / "data-symlink.csv",
        folder / "data-hardlink.csv",
        run / "summary.json",
        run / "checkpoints" / "last.pt",
    ):
        assert main([*predict, "--out", str(out)]) == 2, out
        assert "mlenv: error: --out" in capsys.readouterr().err
    golden = ["export", "golden", "--weights", str(run), "--force", "--out"]
    assert main([*golden, str(run)]) == 2
    assert main([*golden, str(run / "plots")]) == 2
    onnx = ["export", "onnx", "--weights", str(run), "--force", "--out"]
    assert main([*onnx, str(run / "checkpoints" / "best.pt")]) == 2
    assert main([*onnx, str(run / "model.safetensors")]) == 2
    capsys.readouterr()
    assert snapshot(folder) == before  # byte for byte
    assert main([*predict, "--out", "preds.csv"]) == 0  # the same command does write elsewhere
    assert (folder / "preds.csv").read_text().startswith("line,")


def test_compare_passes_unpaired(ws, capsys):
    store = Store(ws / "mlenv.db")
    for name, seeds, base in (("a", range(5), 0.9), ("b", range(5, 10), 0.8)):
        group = store.create_group(name, "repeat", "synthetic", {"seeds": list(seeds)})
        for i, seed in enumerate(seeds):
            store.start_run(f"{name}-{seed}", name, {}, group_id=group, member=f"seed={seed}")
            store.finish_run(f"{name}-{seed}", "finished", {"test_acc": base + 0.01 * i})
    store.close()
    argv = ["compare", "a", "b", "--store", str(ws / "mlenv.db")]
    assert main(argv) == 2
    assert "--unpaired" in capsys.readouterr().err
    assert main([*argv, "--unpaired"]) == 0
    assert "unpaired" in capsys.readouterr().out


# -- through a real process: closed pipes, closed stdin, Ctrl-C --------------------------------
def test_closed_pipe_ends_quietly(ws):
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head` that has already exited
    proc = subprocess.run(
        [*MLENV, "runs", "list", "--store", str(ws / "mlenv.db")],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    os.close(write_end)
    assert proc.returncode == 141
    assert proc.stderr == ""


def _in_main(pid: int) -> bool:
    """True once the process maps torch's library: ``main`` is importing it (or past that)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    proc = subprocess.Popen(
        [*MLENV, "train", "digits-mlp", "--runs_dir", str(tmp_path), "--progress", "false"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not _in_main(proc.pid) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    if not Path(f"/proc/{proc.pid}").exists() and proc.poll() is None:
        time.sleep(1.0)  # no /proc: give the interpreter time to reach main()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlenv: "), err
