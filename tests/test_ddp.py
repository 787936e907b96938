"""`mlenv train --devices N`: real torchrun launches of real gloo process groups on the CPU.

Two processes train the weights one process trains with the same global batch and data order;
only rank 0 writes; a process killed outright ends the run with a status that names it, and the
run resumes from its last checkpoint with two processes again.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlenv.cli import main
from mlenv.data.batching import DatasetBatches, TensorBatches, epoch_permutation
from mlenv.errors import ConfigError
from mlenv.runtime import distributed
from mlenv.runtime.distributed import check_devices
from mlenv.train.parallel import ShardedBatches, merge_gathered, shard_of

QUIET = ["--threads", "1"]
LAUNCH_TIMEOUT = 240


def mlenv(
    cwd: Path, *argv: str, wait: bool = True
) -> subprocess.CompletedProcess | subprocess.Popen:
    """``mlenv ARGV`` in a fresh process (the launcher), as a user types it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "mlenv", *argv]
    if not wait:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT
    )


def only_run(runs: Path, experiment: str) -> Path:
    (run,) = [p for p in (runs / experiment).iterdir() if p.is_dir()]
    return run


def files(run: Path) -> list[str]:
    """The run folder's files; TensorBoard event files by folder (their names hold a pid)."""
    names = []
    for p in sorted(run.rglob("*")):
        if p.is_file():
            rel = p.relative_to(run)
            name = str(rel).split("-val_loss=")[0]  # top-k names hold the metric's 6 digits
            names.append(f"{rel.parent}/EVENTS" if rel.name.startswith("events.") else name)
    return sorted(names)


def store_rows(db: Path, sql: str, *args: object) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def last_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


# ----------------------------------------------------------------------------------------------
# Sharding: each global batch split over the processes, in the single process's order.


def test_shares_of_every_batch_make_up_the_global_batch_in_order():
    x = torch.arange(23.0)
    y = torch.arange(23) * 10
    single = TensorBatches((x, y), batch_size=8, shuffle=True, seed=3)
    shards = [ShardedBatches(TensorBatches((x, y), 8, True, 3), r, 2) for r in range(2)]
    for epoch in (0, 1):
        single.set_epoch(epoch)
        for s in shards:
            s.set_epoch(epoch)
        for whole, *parts in zip(single, *shards, strict=True):
            assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
            assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])
    assert [len(b[0]) for b in shards[1]] == [4, 4, 3]  # the last batch of 7 splits 4 + 3
    # the order is the epoch's permutation: a later epoch is another order
    shards[0].set_epoch(1)
    first = next(iter(shards[0]))[0]
    assert torch.equal(first, x[epoch_permutation(23, 3, 1)][:4])
    assert not torch.equal(first, x[epoch_permutation(23, 3, 0)][:4])


def test_a_batch_smaller_than_the_processes_gives_a_stand_in_row_of_weight_zero():
    batch = {"x": torch.tensor([[1.0], [2.0]]), "y": torch.tensor([0, 1])}
    shares = [shard_of(batch, r, 3) for r in range(3)]
    assert [rows for _, rows in shares] == [1, 1, 0]
    assert torch.equal(shares[2][0]["x"], batch["x"][:1])  # stand-in: the first row


def test_a_dataset_is_sharded_by_indices_in_the_same_order():
    data = torch.utils.data.TensorDataset(torch.arange(10.0), torch.arange(10))
    single = DatasetBatches(data, batch_size=4, seed=1)
    shards = [ShardedBatches(DatasetBatches(data, 4, seed=1), r, 2) for r in range(2)]
    for s in (single, *shards):
        s.set_epoch(2, start=1)  # a resumed epoch: from its second batch
    for whole, *parts in zip(single, *shards, strict=True):
        assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert [s.rows for s in shards] == [1, 1]  # the last batch: 2 rows, one each


def test_validation_predictions_are_merged_in_row_order():
    a0, a1, b0 = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([3.0])
    parts = [
        ({"loss": 2.0}, 2, [(a0, a0), (b0, b0)]),
        ({"loss": 4.0, "acc": 1.0}, 1, [(a1, a1), None]),
    ]
    totals, count, collected = merge_gathered(parts)
    assert totals == {"loss": 6.0, "acc": 1.0} and count == 3
    assert [p.item() for p, _ in collected] == [1.0, 2.0, 3.0]


# ----------------------------------------------------------------------------------------------
# Bad input: one line naming the flag, exit 2, nothing launched or written.


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--devices", "0"], "devices: accepts a number > 0, got 0"),
        (["--devices", "64", "--device", "cuda"], "--devices 64: this machine has"),
        (["--devices", "2", "--device", "cuda:1"], "--device cuda:1: names one GPU"),
        (["--strategy", "fsdp"], "--strategy fsdp: shards the model over processes"),
        (["--strategy", "zero"], 'Parser key "strategy"'),
    ],
)
def test_bad_devices_or_strategy_is_one_line(tmp_path, capsys, flags, message):
    runs = tmp_path / "runs"
    code = main(["train", "digits-mlp", "--runs-dir", str(runs), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert not runs.exists()


def test_more_processes_than_gpus_is_refused():
    with pytest.raises(ConfigError, match=r"--devices 3: this machine has 1 CUDA device\(s\)"):
        check_devices(3, "cuda", cuda_count=1)
    with pytest.raises(ConfigError, match="does not run on Apple's MPS"):
        check_devices(2, "mps")
    check_devices(2, "cuda", cuda_count=2)
    check_devices(2, "cpu", "fsdp")


# ----------------------------------------------------------------------------------------------
# Real launches.

ARGS = ["digits-mlp", "--batch-size", "48", *QUIET]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    """digits-mlp trained 3 epochs in one process: the reference the launches must match."""
    runs = tmp_path_factory.mktemp("single") / "runs"
    assert main(["train", *ARGS, "--epochs", "3", "--runs-dir", str(runs)]) == 0
    return only_run(runs, "digits-mlp")


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one_and_only_rank0_writes(tmp_path, single_run):
    work = tmp_path / "work"
    work.mkdir()
    done = mlenv(work, "train", *ARGS, "--epochs", "3", "--devices", "2", "--runs-dir", "runs")
    assert done.returncode == 0, done.stderr
    runs = work / "runs"
    single, ddp = single_run, only_run(runs, "digits-mlp")
    one = single.parent.parent

    # the same optimizer steps: weights equal to 1e-6 (the sum of two half-batch gradients
    # differs from one whole-batch gradient in the last float bits)
    a, b = last_checkpoint(single), last_checkpoint(ddp)
    assert a["state"]["global_step"] == b["state"]["global_step"] == 3 * 27
    diff = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    assert diff < 1e-6, diff
    # every metric is the global batch's (reduced over both processes), as one process has it
    for row_a, row_b in zip(a["state"]["history"], b["state"]["history"], strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert row_b[key] == pytest.approx(row_a[key], rel=1e-6, abs=1e-9), key
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["processes"] == 2
    # each process computed on its half of every batch: 1257 rows a epoch, 27 batches of
    # 48 (the last of 9) split 24/24 and 5/4
    assert summary["rows_per_process"] == [3 * (26 * 24 + 5), 3 * (26 * 24 + 4)]
    assert len(b["rng_ranks"]) == 2  # each process's RNG stream, for an exact resume
    # seeded seed + rank: the processes draw different dropout masks (one stream would repeat
    # the same mask on both halves of every batch)
    assert not torch.equal(b["rng_ranks"][0]["torch"], b["rng_ranks"][1]["torch"])

    # only rank 0 wrote: one run folder with the files a single run has, one TensorBoard
    # stream, nothing else in the working folder, each store row once, each line printed once
    assert sorted(os.listdir(work)) == ["runs"]
    assert sorted(os.listdir(runs)) == ["digits-mlp", "mlenv.db"]
    assert files(ddp) == files(single)
    assert len(list((ddp / "tensorboard").iterdir())) == 1
    assert store_rows(runs / "mlenv.db", "SELECT status FROM runs") == [("finished",)]
    epoch_rows = "SELECT step, name FROM metrics WHERE name NOT LIKE 'step/%' ORDER BY 1, 2"
    assert store_rows(runs / "mlenv.db", epoch_rows) == store_rows(one / "mlenv.db", epoch_rows)
    assert done.stdout.count("epoch 1/3") == 1 and done.stdout.count("test_acc") == 1
    assert done.stdout.startswith("torchrun: 2 processes\n")


@pytest.mark.slow
def test_fsdp_resumes_a_single_process_checkpoint_and_trains_the_same_weights(tmp_path, single_run):
    """FSDP2 on gloo: it loads a single process's checkpoint into shards, trains the weights
    one process trains, and saves model and optimizer as one process does."""
    two = tmp_path / "two"
    assert (
        main(["train", *ARGS, "--epochs", "2", "--progress", "false", "--runs-dir", str(two)]) == 0
    )
    single, run = single_run, only_run(two, "digits-mlp")
    done = mlenv(
        tmp_path,
        "train",
        "--resume-run",
        str(run),
        "--epochs",
        "3",
        "--devices",
        "2",
        "--strategy",
        "fsdp",
        *QUIET,
    )
    assert done.returncode == 0, done.stderr
    assert "at epoch 3, batch 0 (optimizer step 54)" in done.stdout
    a, b = last_checkpoint(single), last_checkpoint(run)
    assert b["config"]["strategy"] == "fsdp" and b["state"]["global_step"] == 81
    diff = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    assert diff < 1e-6, diff
    groups = [json.dumps(c["optimizer"]["param_groups"]) for c in (a, b)]  # tuples as lists
    assert groups[0] == groups[1]
    moments = [
        (a["optimizer"]["state"][i][k] - b["optimizer"]["state"][i][k]).abs().max().item()
        for i in a["optimizer"]["state"]
        for k in ("exp_avg", "exp_avg_sq", "step")
    ]
    assert max(moments) < 1e-6, moments
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["rows_per_process"] == [629, 628]
    assert summary["test_acc"] == pytest.approx(
        json.loads((single / "summary.json").read_text())["test_acc"]
    )


@pytest.mark.slow
def test_an_error_inside_the_processes_is_printed_once_by_the_launcher(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,0\n3,x,1\n")
    done = mlenv(tmp_path, "train", "tabular-binary", "--data", str(bad), "--devices", "2")
    assert done.returncode == 2
    assert done.stderr == f"mlenv: error: {bad}: row 3, column 'b': non-numeric value 'x'\n"
    assert not (tmp_path / "runs").exists()


def _worker_pid(launcher: int, rank: int) -> int | None:
    """The pid of the process of ``rank`` that the launcher started (its child with RANK set)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == launcher and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def _epochs_done(run: Path) -> int:
    try:
        return len((run / "metrics.csv").read_text().strip().splitlines()) - 1
    except OSError:
        return 0


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds ranks through /proc")
def test_a_killed_process_ends_the_run_as_killed_and_resume_continues_it_exactly(tmp_path):
    """With dropout (each process draws its own masks from its own RNG stream): a run whose
    rank 1 is killed, resumed with two processes, ends with the weights of a run never killed."""
    common = ["digits-mlp", "--dropout", "0.2", "--runs-dir", "runs", *QUIET, "--devices", "2"]
    (tmp_path / "ref").mkdir()
    reference = mlenv(tmp_path / "ref", "train", *common, "--epochs", "8", wait=False)
    launcher = mlenv(tmp_path, "train", *common, "--epochs", "300", wait=False)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        run = None
        while time.monotonic() < deadline:
            folder = tmp_path / "runs" / "digits-mlp"
            run = next(iter(folder.iterdir()), None) if folder.is_dir() else None
            if run is not None and _epochs_done(run) >= 3:  # epoch 2's checkpoint is saved
                break
            assert launcher.poll() is None, launcher.communicate()
            time.sleep(0.05)
        rank1 = _worker_pid(launcher.pid, 1)
        assert rank1 is not None
        os.kill(rank1, signal.SIGKILL)
        _, err = launcher.communicate(timeout=LAUNCH_TIMEOUT)
        reference.communicate(timeout=LAUNCH_TIMEOUT)
    finally:
        for process in (launcher, reference):
            if process.poll() is None:
                process.kill()
    assert reference.returncode == 0
    assert launcher.returncode == 2, err
    assert f"process 1 of 2 (pid {rank1}) was killed by SIGKILL" in err
    assert f"mlenv train --resume-run {run}" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "killed"
    assert summary["stop_reason"] == f"process 1 of 2 (pid {rank1}) was killed by SIGKILL"
    (row,) = store_rows(tmp_path / "runs" / "mlenv.db", "SELECT status, error FROM runs")
    assert row == ("killed", summary["stop_reason"])

    saved = last_checkpoint(run)["state"]
    done = saved["epoch"]
    assert 2 <= done < 8 and saved["batch_in_epoch"] == 0
    resumed = mlenv(tmp_path, "train", "--resume-run", str(run), "--epochs", "8", *QUIET)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("torchrun: 2 processes\n")  # the run's own --devices 2
    assert f"at epoch {done + 1}, batch 0 (optimizer step {saved['global_step']})" in (
        resumed.stdout
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 8
    # it restarted at the checkpoint: 40 steps an epoch from there, the history continuous
    left = 8 - done
    assert summary["steps_run"] == left * 40
    assert summary["rows_per_process"] == [left * 629, left * 628]
    epochs = [int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().split()[1:]]
    assert epochs == list(range(1, 9))
    db = tmp_path / "runs" / "mlenv.db"
    assert store_rows(db, "SELECT status, error FROM runs") == [("finished", None)]
    logged = store_rows(db, "SELECT step FROM metrics WHERE name = 'val_loss' ORDER BY step")
    assert logged == [(e,) for e in range(1, 9)]
    # exactly where the uninterrupted run is: every process continued its own RNG stream
    expected = last_checkpoint(only_run(tmp_path / "ref" / "runs", "digits-mlp"))["model"]
    got = last_checkpoint(run)["model"]
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_tasks_see_the_model_inside_ddp_and_compile(tmp_path):
    """Under --devices N the Trainer hands tasks a DistributedDataParallel: the binary task's
    output mode and the diffusion task's null label must still be the model's own (else a
    conditional model silently trains without its labels, and sigmoid outputs go through the
    sigmoid twice)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mlenv.models import create_model
    from mlenv.train.base import unwrap_model
    from mlenv.train.tasks import BinaryTask
    from mlenv.train.tasks_diffusion import null_label_of

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        unet = create_model("unet-conditional", seed=0, channels=(4, 8, 8), time_dim=8)
        wrapped = DistributedDataParallel(unet)
        assert null_label_of(wrapped) == 10
        binary = create_model("binary-mlp", seed=0, in_features=3, output="sigmoid")
        ddp_binary = DistributedDataParallel(binary)
        assert BinaryTask().output_of(ddp_binary) == "sigmoid"
        assert unwrap_model(DistributedDataParallel(torch.nn.Linear(2, 2))).in_features == 2
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_batchnorm_on_the_cpu_under_devices_is_warned_once(tmp_path, shared_data, capfd):
    """Without CUDA there is no SyncBatchNorm: each process normalises its own half of the
    batch, so the result is not one process's; the run says so (once, from rank 0)."""
    code = main(
        [
            *("train", "mnist-cnn", "--source", str(shared_data / "mnist")),
            *("--root", str(tmp_path / "root"), "--runs-dir", str(tmp_path / "runs")),
            *("--limit", "256", "--epochs", "1", "--devices", "2", "--widths", "[4,8]"),
            *("--hidden", "8", "--progress", "false", "--threads", "1"),
        ]
    )
    assert code == 0
    captured = capfd.readouterr()  # the processes write to the file descriptors
    text = captured.out + captured.err
    assert text.count("warning: BatchNorm on the CPU under --devices 2") == 1


# ----------------------------------------------------------------------------------------------
# Tasks whose loss is not a mean over rows (masked-lm: a mean over the masked tokens) are exact
# under --devices too: the shares are weighted by their tokens, evaluation masks are per row.


def _tiny_bert():
    from mlenv.models import create_model

    return create_model("bert", seed=0, vocab_size=11, block_size=16, n_layer=1, n_embd=16)


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_masked_lm_shares_weighted_by_their_tokens_give_the_whole_batchs_loss_and_gradient():
    """Two shares of a batch of 7 (4 + 3 rows), each masked alone and combined with
    ``share_weight`` as DDP combines them (gradient mean over 2 processes), give the loss,
    gradient and accuracy of the whole batch in one process."""
    from mlenv.train.parallel import share_weight
    from mlenv.train.tasks_mlm import IGNORE, MaskedLMTask

    model = _tiny_bert().eval()  # evaluation masks: the same for a row in any share
    task = MaskedLMTask(mask_rate=0.3)
    criterion = task.get_criterion(model)
    tokens = torch.randint(11, (7, 16), generator=torch.Generator().manual_seed(0))
    loss, whole = task.forward_pass(model, (tokens,), criterion)
    loss.backward()
    expected_grads = _grads(model)
    acc = task.batch_metrics(whole, (tokens,))["acc"].item()

    shares = []
    for r in range(2):
        model.zero_grad()
        share, rows = shard_of((tokens,), r, 2)
        share_loss, predictions = task.forward_pass(model, share, criterion)
        share_loss.backward()
        weight = int(task.batch_weight(predictions, share))
        share_acc = task.batch_metrics(predictions, share)["acc"].item()
        shares.append((rows, weight, share_loss.item(), share_acc, _grads(model), predictions))
    assert [rows for rows, *_ in shares] == [4, 3]
    # each row is masked as in the whole batch, and the weights are the masked tokens
    assert torch.equal(torch.cat([s[-1].targets for s in shares]), whole.targets)
    total = sum(s[1] for s in shares)
    assert total == int((whole.targets != IGNORE).sum()) > 0
    assert shares[0][1] != shares[1][1] * 4 / 3  # tokens are not in proportion to rows here
    combined = sum(w * share_loss for _, w, share_loss, *_ in shares) / total
    assert combined == pytest.approx(loss.item(), rel=1e-6)
    assert sum(w * a for _, w, _, a, *_ in shares) / total == pytest.approx(acc, rel=1e-6)
    for i, expected in enumerate(expected_grads):
        got = sum(share_weight(s[1], total, 2) * s[4][i] for s in shares) / 2  # DDP's mean
        assert (got - expected).abs().max().item() < 1e-6


def test_share_weight_is_the_units_share_times_the_processes():
    from mlenv.train.parallel import share_weight

    assert share_weight(3, 8, 2) == 0.75
    assert share_weight(5, 8, 2) == 1.25
    assert share_weight(2, 6, 3) == 1.0
    assert share_weight(0, 0, 2) == 0.0  # a global batch without units: loss 0, no gradient


def _train_masked_lm() -> dict:
    """A tiny BERT trained one epoch with SGD on 10 windows (global batches of 7 and 3), the
    same masks at training as at evaluation so that only the combination can differ."""
    from mlenv.train.tasks_mlm import MaskedLMTask
    from mlenv.train.trainer import Trainer

    class FixedMasks(MaskedLMTask):
        def masks(self, tokens, training):
            return super().masks(tokens, training=False)

    g = torch.Generator().manual_seed(1)
    train, val = torch.randint(11, (10, 16), generator=g), torch.randint(11, (5, 16), generator=g)
    trainer = Trainer(
        model=_tiny_bert(),
        task=FixedMasks(mask_rate=0.3),
        epochs=1,
        batch_size=7,
        lr=0.5,
        optimizer="sgd",
        momentum=0.0,
        threads=1,
        progress=False,
    )
    trainer.fit((train,), (val,))
    weights = {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}
    return {"history": trainer.history, "weights": weights}


def _masked_lm_process(rank: int, store_path: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        result = _train_masked_lm()
        if rank == 0:
            torch.save(result, out)
        w = distributed.world()  # LOCAL_* unset: one machine, the whole group on it
        place = [w.rank, w.size, w.local_rank, w.local_size, distributed.is_main_process()]
        torch.save(place, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_masked_lm_in_two_processes_trains_and_scores_as_one(tmp_path):
    """Real gloo, two processes: the same weights after two SGD steps (to 1e-6) and the same
    train and validation loss and accuracy as one process."""
    import torch.multiprocessing as mp

    one = _train_masked_lm()
    out = tmp_path / "two.pt"
    mp.spawn(_masked_lm_process, args=(str(tmp_path / "store"), str(out)), nprocs=2)
    two = torch.load(out, weights_only=True)
    moved = max(
        (one["weights"][k] - _tiny_bert().state_dict()[k]).abs().max() for k in two["weights"]
    )
    assert moved > 1e-3  # the steps changed the weights
    diff = max((one["weights"][k] - two["weights"][k]).abs().max() for k in one["weights"])
    assert diff < 1e-6, diff
    (a,), (b,) = one["history"], two["history"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    places = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    assert places == [[0, 2, 0, 2, True], [1, 2, 1, 2, False]]
