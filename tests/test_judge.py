"""The judge of generated digits (mlenv.book.judge) with a real mnist-cnn, trained briefly here by
the mlenv Trainer on a slice of MNIST: it reads real test digits about as well as its recorded test
accuracy says, reads noise as chance, survives the safetensors cache unchanged, and a judge below
the required accuracy (this brief one) or with swapped weights is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mlenv.book._common import BookOptions
from mlenv.book.judge import (
    judge_path,
    judge_samples,
    load_judge,
    mnist_judge,
    record_path,
    save_judge,
)
from mlenv.data.vision import load_mnist_uint8
from mlenv.errors import CheckpointError, DataError

LOW = 0.5  # the accuracy the brief judge is held to here (the real one: 0.99)


@pytest.fixture(scope="module")
def options(tmp_path_factory, mnist_root):
    runs = tmp_path_factory.mktemp("judge-runs")
    return BookOptions(device="cpu", data_dir=str(mnist_root), runs_dir=str(runs), threads=1)


@pytest.fixture(scope="module")
def test_digits(mnist_root):
    """The last 2,000 MNIST test digits in [0, 1] (pixels, what the book steps draw), labels."""
    images, labels = load_mnist_uint8(mnist_root, "test")
    x = images[-2000:].float().unsqueeze(1) / 255.0  # (2000, 1, 28, 28)
    return x, labels[-2000:]


def test_judge_reads_real_digits_as_its_test_accuracy_says(brief_judge, options, test_digits):
    path, record = brief_judge
    assert record["model"] == "simple-cnn" and record["scale"] == "unit"
    assert record["trained_with"]["widths"] == [8, 16]  # the recipe values it was trained with
    assert 0.8 < record["test_accuracy"] < 0.99  # measured on all 10,000 test digits
    images, labels = test_digits
    result = judge_samples(images, labels, options, min_accuracy=LOW, path=path)
    assert result["judge_test_acc"] == record["test_accuracy"]
    # 2,000 of the same test digits: within 3 points of the whole set's accuracy
    assert abs(result["overall"] - record["test_accuracy"]) < 0.03
    assert sorted(result["per_digit"]) == [str(d) for d in range(10)]
    counts = torch.bincount(labels, minlength=10).float()
    per_digit = torch.tensor([result["per_digit"][str(d)] for d in range(10)])
    assert float((per_digit * counts).sum() / counts.sum()) == pytest.approx(result["overall"])
    # the per-digit fraction is of the digits asked for: only 7s asked, all read as asked
    sevens = labels == 7
    only = judge_samples(images[sevens], labels[sevens], options, min_accuracy=LOW, path=path)
    assert list(only["per_digit"]) == ["7"]
    assert only["overall"] == pytest.approx(result["per_digit"]["7"])


def test_wrong_labels_and_noise_get_low_accuracy(brief_judge, options, test_digits):
    path, _ = brief_judge
    images, labels = test_digits
    shifted = judge_samples(images, (labels + 1) % 10, options, min_accuracy=LOW, path=path)
    assert shifted["overall"] < 0.1
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(500, 1, 28, 28, generator=g)
    asked = torch.arange(500) % 10
    result = judge_samples(noise, asked, options, min_accuracy=LOW, path=path)
    assert result["overall"] < 0.3  # chance is 0.1
    blank = judge_samples(torch.full((100, 1, 28, 28), 0.0), asked[:100], options, LOW, path)
    assert blank["overall"] <= 0.2  # one answer for every blank image: right for one digit


def test_cache_round_trip_gives_the_runs_predictions(brief_judge, options, test_digits, tmp_path):
    from mlenv.train.run import load_run

    record = brief_judge[1]
    images, _ = test_digits
    run_model = load_run(record["run_dir"]).model  # the trained run, from its checkpoint
    with torch.no_grad():
        expected = run_model(images)  # the run learned [0, 1] pixels
    # the default cache: $MLENV_CACHE/judges/mnist-cnn.safetensors, built from the run folder
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLENV_CACHE", str(tmp_path / "cache"))
        mp.delenv("MLENV_JUDGE", raising=False)
        cached = judge_path()
        assert cached == tmp_path / "cache" / "judges" / "mnist-cnn.safetensors"
        saved = save_judge(record["run_dir"], data_dir=options.data_dir)
        assert saved["test_accuracy"] == record["test_accuracy"]
        assert cached.is_file() and record_path(cached).is_file()
        model = mnist_judge(options, min_accuracy=LOW)
        with torch.no_grad():
            assert torch.equal(model(images), expected)
    # $MLENV_JUDGE names a ready file elsewhere, and wins over the cache (spoilt here)
    moved = tmp_path / "elsewhere" / "judge.safetensors"
    moved.parent.mkdir()
    shutil.copy(cached, moved)
    shutil.copy(record_path(cached), record_path(moved))
    record_path(cached).write_text(json.dumps({**saved, "test_accuracy": 0.1}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLENV_CACHE", str(tmp_path / "cache"))
        mp.setenv("MLENV_JUDGE", str(moved))
        model = mnist_judge(options, min_accuracy=LOW)
        with torch.no_grad():
            assert torch.equal(model(images[:50]), expected[:50])
    assert json.loads(record_path(moved).read_text())["weights_sha256"] == saved["weights_sha256"]


def test_low_accuracy_or_swapped_judge_is_refused(brief_judge, options, test_digits, tmp_path):
    path = brief_judge[0]
    images, labels = test_digits
    with pytest.raises(CheckpointError, match=r"test accuracy 0\.\d+ is below 0\.99"):
        mnist_judge(options, path=path)
    with pytest.raises(CheckpointError, match=r"below 0\.99"):
        judge_samples(images[:10], labels[:10], options, path=path)
    # weights that are not the recorded ones (another model's, same shapes) are refused
    swapped = tmp_path / "swapped.safetensors"
    shutil.copy(record_path(path), record_path(swapped))
    from safetensors.torch import save_file

    model, _ = load_judge(path, LOW)
    save_file({k: torch.zeros_like(v) for k, v in model.state_dict().items()}, swapped)
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        load_judge(swapped, LOW)
    with pytest.raises(CheckpointError, match="no recorded test accuracy"):
        load_judge(shutil.copy(path, tmp_path / "bare.safetensors"), LOW)
    with pytest.raises(CheckpointError, match="no judge there"):
        load_judge(tmp_path / "absent.safetensors", LOW)


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (torch.zeros(4, 784), torch.zeros(4, dtype=torch.long), r"images \(N, 1, 28, 28\)"),
        (torch.zeros(4, 1, 28, 28), torch.zeros(3, dtype=torch.long), "one label per image"),
        (torch.zeros(2, 1, 28, 28), torch.tensor([3, 10]), r"digits 0\.\.9"),
        (torch.full((2, 1, 28, 28), float("nan")), torch.tensor([3, 4]), "not finite"),
    ],
)
def test_bad_samples_are_one_line_errors(brief_judge, options, images, labels, message):
    with pytest.raises(DataError, match=message) as info:
        judge_samples(images, labels, options, min_accuracy=LOW, path=brief_judge[0])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "args, message",
    [
        ({"widths": []}, "--widths: accepts one or more"),
        ({"widths": [8, 0]}, "--widths: accepts one or more"),
        ({"widths": [8] * 5}, "halve a 28-pixel image 5 times, to nothing; give at most 4"),
        ({"dropout": 1.0}, "--dropout"),
        ({"head_dropout": -0.1}, "--head-dropout"),
        ({"hidden": 0}, "--hidden"),
    ],
)
def test_simple_cnn_bad_arguments_are_one_line_errors(args, message):
    from mlenv.errors import ConfigError
    from mlenv.models import create_model

    with pytest.raises(ConfigError, match=message):
        create_model("simple-cnn", **args)


def test_simple_cnn_shapes():
    from mlenv.errors import ConfigError
    from mlenv.models import create_model

    model = create_model("simple-cnn", in_channels=3, image_size=32, widths=[4, 8, 8])
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert model.head[1].in_features == 8 * 4 * 4  # three blocks: 32 -> 16 -> 8 -> 4
    with pytest.raises(ConfigError, match=r"expects images \(B, 3, 32, 32\)"):
        model(torch.zeros(2, 3 * 32 * 32))


def test_a_judge_trains_on_a_machine_without_the_cache_folder(tmp_path, mnist_root, monkeypatch):
    """A new machine has no ~/.cache/mlenv: training the judge makes its own cache folder (it
    stopped with "--runs-dir: the folder .../judges does not exist") and saves the judge there."""
    from conftest import BRIEF_JUDGE
    from mlenv.book.judge import train_judge

    torch.set_num_threads(1)
    monkeypatch.setenv("MLENV_CACHE", str(tmp_path / "new-machine" / "cache"))
    monkeypatch.delenv("MLENV_JUDGE", raising=False)
    options = BookOptions(device="cpu", data_dir=str(mnist_root), threads=1)
    assert not (tmp_path / "new-machine").exists()
    record = train_judge(options, None, **{**BRIEF_JUDGE, "limit": 500, "epochs": 1})
    assert judge_path().is_file() and judge_path().is_relative_to(tmp_path / "new-machine")
    assert record_path(judge_path()).is_file() and record["model"] == "simple-cnn"
