"""The book path steps 1-5: each writes its plots and results.json and reproduces the numbers."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SklearnGMM

from mlenv.book._common import book_file
from mlenv.cli import main
from mlenv.errors import DataError


@pytest.fixture(autouse=True)
def book_data(shared_data, monkeypatch, tmp_path):
    monkeypatch.setenv("MLENV_BOOK_DATA", str(shared_data / "dlfs5"))
    monkeypatch.setenv("MLENV_CACHE", str(tmp_path / "cache"))


def run(step, tmp_path, capsys, *extra):
    out = tmp_path / step
    assert main(["book", step, "--out", str(out), *extra]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    for plot in results["plots"].values():
        with open(plot, "rb") as f:
            assert f.read(4) == b"\x89PNG"
    return results, printed


def test_step01_central_limit(tmp_path, capsys):
    results, printed = run("step01", tmp_path, capsys)
    for n in ("1", "2", "4", "10"):
        r = results["average"][n]
        assert r["mean"] == pytest.approx(0.5, abs=0.01)
        assert r["std"] == pytest.approx(r["theory_std"], rel=0.03)
        s = results["sum"][n]
        assert s["mean"] == pytest.approx(int(n) / 2, rel=0.02)
    assert "sample average N=10" in printed


def test_step02_mle_of_heights(tmp_path, capsys, shared_data):
    results, printed = run(
        "step02", tmp_path, capsys, "--data", str(shared_data / "dlfs5" / "height.txt")
    )
    heights = np.loadtxt(shared_data / "dlfs5" / "height.txt")
    assert results["mu"] == pytest.approx(heights.mean(), rel=1e-12)
    assert results["sigma"] == pytest.approx(heights.std(), rel=1e-12)
    assert results["mu"] == pytest.approx(172.702509, abs=1e-6)
    assert results["sigma"] == pytest.approx(4.830167, abs=1e-6)
    assert results["p_le_160"] == pytest.approx(0.004271, abs=1e-6)
    assert results["p_gt_180"] == pytest.approx(0.065418, abs=1e-6)
    assert "mu = 172.702509, sigma = 4.830167" in printed


def test_step03_multivariate(tmp_path, capsys, shared_data):
    results, _ = run("step03", tmp_path, capsys)
    check = results["pdf_check"]
    assert check["by_hand"] == pytest.approx(check["scipy"], rel=1e-12)
    xs = np.loadtxt(shared_data / "dlfs5" / "height_weight.txt")
    np.testing.assert_allclose(results["mu"], xs.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(results["cov_mle"], np.cov(xs.T, ddof=0), rtol=1e-10)
    np.testing.assert_allclose(results["cov_unbiased"], np.cov(xs.T, ddof=1), rtol=1e-10)


def test_step04_fixed_mixture(tmp_path, capsys):
    results, _ = run("step04", tmp_path, capsys)
    assert sum(results["samples_per_component"]) == 500
    assert results["samples_per_component"][0] == pytest.approx(0.35 * 500, abs=35)
    assert results["mean_log_likelihood"] == pytest.approx(-4.159367, abs=1e-6)


def test_step05_em_as_the_book(tmp_path, capsys, shared_data):
    results, printed = run("step05", tmp_path, capsys)
    lls = results["log_likelihoods"]
    assert lls[0] == pytest.approx(-16.538, abs=5e-4)  # before the first update
    assert printed.splitlines()[:3] == ["-16.538", "-4.415", "-4.357"]
    assert results["iterations"] == 9
    assert abs(results["final_log_likelihood"] - lls[-1]) < 1e-4
    assert all(b >= a for a, b in itertools.pairwise(lls))
    np.testing.assert_allclose(results["phis"], [0.355951, 0.644049], atol=1e-6)
    # the same fixed point as scikit-learn's EM (no regularisation) from the same start
    xs = np.loadtxt(shared_data / "dlfs5" / "old_faithful.txt")
    reference = SklearnGMM(
        2,
        weights_init=results["phis"],
        means_init=results["mus"],
        precisions_init=np.linalg.inv(results["covs"]),
        reg_covar=0.0,
        max_iter=1,
    ).fit(xs)
    np.testing.assert_allclose(reference.means_, results["mus"], atol=1e-2)
    kl = results["kl"]
    assert kl["monte_carlo"] == pytest.approx(kl["closed_form"], abs=5e-3)
    # the book's kl.py prints 0.02160085414354654, 0.5826853020432394 and 0.0
    book = [pair["kl"] for pair in kl["book_discrete"]]
    assert book == pytest.approx([0.02160085414354654, 0.5826853020432394, 0.0], abs=1e-15)
    assert "KL([0.7, 0.3] || [0.2, 0.8]) = 0.58268530204323" in printed


def test_book_data_download_from_a_url_with_checksum(tmp_path, shared_data, monkeypatch):
    monkeypatch.delenv("MLENV_BOOK_DATA")
    mirror = tmp_path / "mirror" / "step02"
    mirror.mkdir(parents=True)
    shutil.copy(shared_data / "dlfs5" / "height.txt", mirror / "height.txt")
    path = book_file("height.txt", base_url=(tmp_path / "mirror").as_uri())
    assert path == tmp_path / "cache" / "dlfs5" / "height.txt"
    assert path.read_bytes() == (shared_data / "dlfs5" / "height.txt").read_bytes()
    assert book_file("height.txt", base_url="http://127.0.0.1:9") == path  # cached: no fetch
    path.unlink()
    (mirror / "height.txt").write_text("170.0\n")
    with pytest.raises(DataError, match="checksum does not match"):
        book_file("height.txt", base_url=(tmp_path / "mirror").as_uri())
    with pytest.raises(DataError, match="pass the file with --data FILE"):
        book_file("height.txt", base_url="http://127.0.0.1:9")


@pytest.mark.parametrize(
    "flags",
    [
        ["--device", "cuda"],
        ["--seed", "3"],
        ["--threads", "2"],
        ["--precision", "bf16"],
        ["--epochs", "2"],
        ["--guidance", "3"],
    ],
)
def test_training_flags_on_steps_1_to_5_are_refused_not_ignored(flags, tmp_path, capsys):
    from mlenv.cli import main

    assert main(["book", "step01", *flags, "--out", str(tmp_path / "o")]) == 2
    assert f"{flags[0]}: applies to steps 06-10 only, not step01" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
