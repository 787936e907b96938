"""Book step 6: autograd, Rosenbrock descent, linear regression and the 1-10-1 network reproduce
the book's printed numbers; the same network through ``mlenv train book-sine`` equals the plain
loop started from the same weights."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from mlenv.book import step06
from mlenv.book._common import BookOptions
from mlenv.cli import main
from mlenv.data import DATASETS
from mlenv.data.synthetic import line_data, sine_data
from mlenv.errors import ConfigError
from mlenv.train.tasks import TASKS

BOOK = step06.BOOK
SHORT_EPOCHS = 2  # x 100 full-batch steps: the network's part of the short run


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """``mlenv book step06 --epochs 2``: the Rosenbrock and regression parts at the book's
    length, the network (plain and Trainer) for 200 steps."""
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("book06") / "step06"
    printed = io.StringIO()
    argv = ["book", "step06", "--out", str(out), "--epochs", str(SHORT_EPOCHS), "--threads", "1"]
    with contextlib.redirect_stdout(printed):
        code = main(argv)
    torch.set_num_threads(threads)
    assert code == 0
    return out, json.loads((out / "results.json").read_text()), printed.getvalue()


def test_results_and_plots_written(short_run):
    out, results, printed = short_run
    for key in ("W", "b", "loss"):
        assert isinstance(results[key], float)
    assert isinstance(results["network"]["loss"], float)
    assert set(results["plots"]) == {"rosenbrock", "regression", "network", "network_loss"}
    for name, path in results["plots"].items():
        assert path == str(out / f"{name}.png")
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp*"))  # atomic writes leave no temporary files
    assert "plots and results.json in" in printed


def test_rosenbrock_reproduces_the_book(short_run):
    _, results, printed = short_run
    r = results["rosenbrock"]
    assert r["gradient_at_start"] == [-2.0, 400.0]
    # float32 all the way: the book's printed end point to the last digit (1e-7 for other CPUs)
    assert r["end"] == pytest.approx(BOOK["rosenbrock_end"], abs=1e-7)
    assert r["path_every_1000"][0] == [0.0, 2.0]
    assert r["path_every_1000"][1] == pytest.approx([0.6815015077590942, 0.46292299032211304])
    assert f"x0 = {r['end'][0]!r}" in printed


def test_rosenbrock_gradient_is_the_analytic_one():
    """Autograd's gradient at a few points against the hand-derived formula (float64)."""
    for p in [(0.0, 2.0), (1.0, 1.0), (-1.5, 0.3), (0.7, -0.4)]:
        x0 = torch.tensor(p[0], dtype=torch.float64, requires_grad=True)
        x1 = torch.tensor(p[1], dtype=torch.float64, requires_grad=True)
        step06.rosenbrock(x0, x1).backward()
        assert (x0.grad.item(), x1.grad.item()) == pytest.approx(
            step06.rosenbrock_gradient(*p), rel=1e-12, abs=1e-12
        )
    assert step06.rosenbrock_gradient(0.0, 2.0) == (-2.0, 400.0)
    assert step06.rosenbrock_gradient(1.0, 1.0) == (0.0, 0.0)  # the minimum


def test_linear_regression_reproduces_the_book(short_run):
    _, results, printed = short_run
    assert results["W"] == pytest.approx(BOOK["W"], abs=1e-6)
    assert results["b"] == pytest.approx(BOOK["b"], abs=1e-6)
    assert results["loss"] == pytest.approx(BOOK["regression_loss"], abs=1e-7)
    assert results["regression"]["losses_every_10"][0] == pytest.approx(41.89796447753906)
    assert f"W = {results['W']!r}" in printed


def test_linear_regression_against_least_squares():
    """The same points: the closed form by hand, numpy's lstsq, and gradient descent run long
    enough to converge all give the same line; the book's 100 steps are not there yet."""
    torch.manual_seed(0)
    x, y = line_data(100)
    xs, ys = x.double().numpy()[:, 0], y.double().numpy()[:, 0]
    W = ((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum()
    b = ys.mean() - W * xs.mean()
    exact = step06.least_squares_line(x, y)
    assert (exact["W"], exact["b"]) == pytest.approx((W, b), rel=1e-10)
    assert exact["loss"] == pytest.approx(np.mean((ys - W * xs - b) ** 2), rel=1e-10)
    assert (W, b) == pytest.approx((2.154005, 5.383873), abs=1e-6)  # 2x + 5 + mean noise 0.5

    converged = step06.fit_line(x, y, lr=0.5, steps=1000)
    assert converged["W"] == pytest.approx(W, abs=1e-4)
    assert converged["b"] == pytest.approx(b, abs=1e-4)
    book_length = step06.fit_line(x, y)  # 100 steps: still 0.13 off in W
    assert book_length["W"] - W == pytest.approx(0.1324, abs=1e-3)
    assert exact["loss"] < book_length["loss"] < exact["loss"] + 0.002


def test_network_starts_as_the_book():
    """Same data and same initial weights as the book: its first printed losses exactly."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x, y = sine_data(100)
        model = step06.book_network()
    fit = step06.fit_network(model, x, y, step06.NETWORK_LR, 1001)
    assert fit["losses"][0] == pytest.approx(0.7643452286720276, abs=1e-7)
    assert fit["losses"][1000] == pytest.approx(0.23656320571899414, abs=1e-7)


def test_trainer_equals_the_plain_loop(short_run):
    """``mlenv train book-sine`` and the hand-written loop from the run's initial weights: the
    same 200 full-batch SGD steps, the same final training MSE."""
    out, results, printed = short_run
    t = results["network"]["mlenv_train"]
    assert t["epochs"] == SHORT_EPOCHS and t["steps"] == SHORT_EPOCHS * 100
    assert t["final_mse"] == pytest.approx(t["plain_loop_same_start"]["final_mse"], abs=1e-6)
    assert t["final_mse"] == pytest.approx(0.2412, abs=1e-3)  # on the plateau before the bend
    assert results["network"]["steps"] == SHORT_EPOCHS * 100
    # the plain loop starts from the book's data and weights: the book's first printed loss
    assert results["network"]["losses_every_1000"] == [pytest.approx(0.7643452286720276)]
    run = out / "runs" / "book-sine"
    (run_dir,) = run.iterdir()
    assert str(run_dir) == t["run_dir"]
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "plots" / "fit.png").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["test_loss"] == pytest.approx(t["test_loss"])
    assert "the plain loop from the same start" in printed


def test_book_sine_dataset():
    bundle = DATASETS.create("book-sine", seed=0, steps_per_epoch=3)
    x, y = bundle.train
    assert x.shape == y.shape == (3, 100, 1)  # the full batch, three times
    torch.manual_seed(0)
    book_x, book_y = sine_data(100)  # the book's draws
    for copy in range(3):
        assert torch.equal(x[copy], book_x) and torch.equal(y[copy], book_y)
    val_x, _ = bundle.val
    test_x, _ = bundle.test
    assert val_x.shape == test_x.shape == (1, 100, 1)
    assert not torch.equal(val_x[0], book_x) and not torch.equal(val_x, test_x)
    assert bundle.model_kwargs == {"in_features": 1, "out_features": 1}
    other = DATASETS.create("book-sine", seed=1)
    assert not torch.equal(other.train[0][0], book_x)


def test_book_sine_dataset_rejects_bad_sizes():
    with pytest.raises(ConfigError, match=r"--steps-per-epoch: accepts an integer >= 1, got 0"):
        DATASETS.create("book-sine", seed=0, steps_per_epoch=0)
    with pytest.raises(ConfigError, match=r"--val-samples: accepts an integer >= 1, got -1"):
        DATASETS.create("book-sine", seed=0, val_samples=-1)


def test_regression_task_is_mse():
    task = TASKS.create("regression")
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.bias.fill_(1.0)
    x = torch.tensor([[[0.0], [1.0], [2.0]]])  # (1, 3, 1): one batch of three points
    y = torch.tensor([[[1.0], [4.0], [7.0]]])  # errors 0, -1, -2
    loss, prediction = task.forward_pass(model, (x, y), task.get_criterion())
    assert loss.item() == pytest.approx((0 + 1 + 4) / 3)
    assert prediction.shape == (1, 3, 1)


def test_step06_rejects_flags_it_does_not_use(tmp_path):
    with pytest.raises(ConfigError, match="--data: step06 draws the book's synthetic data"):
        step06.run(tmp_path, "some.txt", BookOptions())
    with pytest.raises(ConfigError, match="--limit: applies to steps 07-10, not step06"):
        step06.run(tmp_path, None, BookOptions(limit=10))
    assert not list(tmp_path.iterdir())  # nothing written before the check
    with pytest.raises(ConfigError, match="device: accepts auto, cpu, cuda, cuda:N or mps"):
        step06.run(tmp_path, None, BookOptions(device="tpu"))  # before the long loops
    assert not list(tmp_path.glob("*.png"))
