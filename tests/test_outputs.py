"""outputs.py's refusals called directly: never an input (also through links, whatever its place
in the list), never inside a run folder (also through a link), never a non-regular file; an
existing file or a non-empty folder only with --force; missing folders below the current one or
with --mkdir. And a run folder's own files are written by rename, never through a link."""

from __future__ import annotations

import json
import os

import pytest

from mlenv.errors import OutputError
from mlenv.track.outputs import check_output_dir, check_output_file, run_folder_of
from mlenv.track.run import Run


@pytest.fixture()
def ws(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "data.csv").write_text("a,b\n1,2\n")
    run = work / "runs" / "exp" / "20261202-000000-abcdef"
    (run / "checkpoints").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    return work


def test_an_input_is_refused_wherever_it_is_in_the_list_and_through_links(ws):
    os.symlink(ws / "data.csv", ws / "link.csv")
    os.link(ws / "data.csv", ws / "hard.csv")
    for out in ("data.csv", "link.csv", "hard.csv"):
        with pytest.raises(OutputError, match="which this command reads"):
            check_output_file(ws / out, inputs=[None, "other.csv", ws / "data.csv"], force=True)
    with pytest.raises(OutputError, match="which this command reads"):
        check_output_file(ws / "new.csv", inputs=[None, ws / "new.csv"])  # not there yet
    assert check_output_file(ws / "new.csv", inputs=[None, ws / "data.csv"]) == ws / "new.csv"


def test_an_existing_file_needs_force_or_append_and_never_a_non_regular_one(ws):
    existing = ws / "results.jsonl"
    existing.write_text("{}\n")
    with pytest.raises(OutputError, match="exists; pass --force"):
        check_output_file(existing)
    assert check_output_file(existing, force=True) == existing
    assert check_output_file(existing, append=True) == existing
    os.mkfifo(ws / "fifo")
    with pytest.raises(OutputError, match="not a regular file"):
        check_output_file(ws / "fifo", force=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(ws / "runs", force=True)
    os.symlink(ws / "nowhere", ws / "dangling")
    with pytest.raises(OutputError, match="symbolic link to nothing"):
        check_output_file(ws / "dangling", force=True)
    assert existing.read_text() == "{}\n"  # checks only: nothing written


def test_a_run_folder_is_two_markers_and_is_refused_through_a_link(ws):
    run = ws / "runs" / "exp" / "20261202-000000-abcdef"
    assert run_folder_of(run / "checkpoints" / "last.pt") == run
    project = ws / "project"  # a user's folder with one marker only is not a run folder
    project.mkdir()
    (project / "config.yaml").write_text("lr: 1\n")
    assert run_folder_of(project / "out.csv") is None
    (project / "checkpoints").mkdir()
    assert run_folder_of(project / "out.csv") == project
    with pytest.raises(OutputError, match="inside the run folder"):
        check_output_file(run / "preds.csv", force=True)
    os.symlink(run, ws / "alias")
    with pytest.raises(OutputError, match="inside the run folder"):
        check_output_file(ws / "alias" / "preds.csv", force=True)
    with pytest.raises(OutputError, match="inside the run folder"):
        check_output_dir(ws / "alias", force=True)
    os.symlink(run / "summary.json", ws / "summary-link.json")  # a file's link into a run
    with pytest.raises(OutputError, match="inside the run folder"):
        check_output_file(ws / "summary-link.json", force=True)


def test_missing_folders_are_made_below_the_current_one_or_with_mkdir(ws, tmp_path):
    assert check_output_file(ws / "a" / "b" / "p.csv") == ws / "a" / "b" / "p.csv"
    assert (ws / "a" / "b").is_dir()
    outside = tmp_path / "outside" / "x" / "p.csv"
    with pytest.raises(OutputError, match="does not exist; create it, or pass --mkdir"):
        check_output_file(outside)
    assert not (tmp_path / "outside").exists()
    assert check_output_file(outside, mkdir=True) == outside and outside.parent.is_dir()
    with pytest.raises(OutputError, match="--mkdir"):
        check_output_dir(tmp_path / "elsewhere" / "golden")
    assert check_output_dir(tmp_path / "elsewhere" / "golden", mkdir=True).is_dir()


def test_an_output_folder_never_holds_an_input_and_a_full_one_needs_force(ws):
    with pytest.raises(OutputError, match=r"holds .*data\.csv"):
        check_output_dir(ws, inputs=[None, ws / "data.csv"], force=True)
    inner = ws / "golden"
    assert check_output_dir(inner, inputs=[ws / "data.csv"]) == inner  # beside, not holding
    assert check_output_dir(inner) == inner  # empty: fine without --force
    (inner / "manifest.json").write_text("{}")
    with pytest.raises(OutputError, match="not empty; pass --force"):
        check_output_dir(inner)
    assert check_output_dir(inner, force=True) == inner
    with pytest.raises(OutputError, match="not a folder"):
        check_output_dir(ws / "data.csv", force=True)


def test_a_run_writes_its_files_by_rename_never_through_a_link(tmp_path):
    run = Run(tmp_path / "exp" / "run-1")
    run.path.mkdir(parents=True)
    outside = tmp_path / "precious.json"
    outside.write_text("keep me")
    os.symlink(outside, run.path / "summary.json")
    run.write_summary({"status": "running", "loss": float("inf"), "nan": float("nan")})
    assert outside.read_text() == "keep me"
    assert not (run.path / "summary.json").is_symlink()
    text = (run.path / "summary.json").read_text()
    # strict JSON (no Infinity/NaN tokens): the non-finite values are strings
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON {c}")) == {
        "run_id": "run-1",
        "status": "running",
        "loss": "inf",
        "nan": "nan",
    }
    assert [p.name for p in run.path.iterdir()] == ["summary.json"]  # no temporary left
