"""Step 10: conditional diffusion and classifier-free guidance on MNIST.

Training (recipe ``mnist-cfg-book``: images in [0, 1], t = 1 .. T, as the book's code; ``mnist-cfg``
is the [-1, 1] form): step 9's DDPM with the UNet told which digit to draw, a label
embedding added to the step embedding. Classifier-free guidance trains one network for both
questions: each training label is replaced by a learned "no label" (index 10) with probability
``p_uncond = 0.1``. (The book's ``cfg.py`` drops the labels of a whole batch and has no learned
null label; here the dropping is per image, as in Ho & Salimans 2022.)

Sampling mixes the two predictions, ``eps = eps_uncond + w (eps_cond - eps_uncond)``, guidance
``w = 3`` by default (``--guidance``); ``w = 1`` is the plain conditional model. A trained MNIST
classifier (``mlenv.book.judge``) then reads every sample: the fraction read as the digit asked
for, per digit and overall, with and without guidance, from the same starting noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mlenv.book._common import BookOptions, save_grid, train_recipe, write_results
from mlenv.book.step09 import (
    book_options,
    draw_samples,
    make_sampler,
    sampler_name,
    trained_run,
    write_training_results,
)
from mlenv.errors import ConfigError
from mlenv.runtime.device import choose_device

RECIPE = "mnist-cfg-book"
GUIDANCE = 3.0
PER_DIGIT = 10  # samples of each digit: the 10 x 10 grid, and what the judge reads


def judge(
    images: torch.Tensor, labels: torch.Tensor, options: BookOptions, **judge_args: Any
) -> dict[str, Any]:
    """The judge's verdict on samples (see ``mlenv.book.judge.judge_samples``)."""
    from mlenv.book.judge import judge_samples

    return judge_samples(images, labels, options, **judge_args)


def sample_and_judge(
    loaded: Any, folder: Path, options: BookOptions, judge_args: dict[str, Any] | None = None
) -> dict[str, Any]:
    """From a trained conditional run: ``PER_DIGIT`` samples of each digit with guidance and
    without (w = 1), from the same starting noise; both grids, and the judge's verdicts."""
    guidance = GUIDANCE if options.guidance is None else options.guidance
    if getattr(loaded.model, "null_label", None) is None:
        raise ConfigError(
            f"{loaded.checkpoint_path}: the model takes no labels; step10 samples a conditional "
            "run (mlenv train mnist-cfg-book)"
        )
    scheduler = make_sampler(loaded.task.scheduler, options.sample_steps)
    labels = torch.arange(10).repeat_interleave(PER_DIGIT)  # (100,): row d of the grid is digit d
    name = sampler_name(options)
    scales = {"guided": guidance, "conditional": 1.0}
    titles = {
        "guided": f"guidance {guidance:g}, {name}: row d asks for digit d",
        "conditional": f"no guidance (w = 1), {name}: row d asks for digit d",
    }
    images, seconds, verdicts, plots = {}, {}, {}, {}
    for key, scale in scales.items():
        images[key], _, seconds[key] = draw_samples(
            loaded, scheduler, options, labels, scale, count=len(labels)
        )
        verdicts[key] = judge(images[key], labels, options, **(judge_args or {}))
        grid = folder / f"samples_{key}.png"
        plots[key] = save_grid(images[key], grid, PER_DIGIT, titles[key])
    for key, scale in scales.items():
        verdict = verdicts[key]
        digits = " ".join(f"{d}:{v:.2f}" for d, v in verdict["per_digit"].items())
        print(
            f"judged as the digit asked for, guidance {scale:g}: {verdict['overall']:.3f} "
            f"({digits}); sampling {seconds[key]:.1f} s"
        )
    return {
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "p_uncond": loaded.task.p_uncond,
        "precision": loaded.config.train.precision,
        "device": str(choose_device(options.device)),
        "sampler": name,
        "sample_steps": len(scheduler.timesteps),
        "guidance": guidance,
        "samples_per_digit": PER_DIGIT,
        "judged_guided": verdicts["guided"],
        "judged_conditional": verdicts["conditional"],
        "sampling_seconds": seconds,
        "plots": plots,
    }


def run(
    folder: Path,
    data: str | None,
    options: BookOptions,
    judge_args: dict[str, Any] | None = None,
    **recipe_values: Any,
) -> dict[str, Any]:
    """Train, sample with and without guidance, judge. ``judge_args`` go to the judge
    (``path``, ``min_accuracy``) and ``recipe_values`` override the recipe's (tests: a brief
    judge and a narrow UNet)."""
    options = book_options(options, data)
    # the judge first: a missing or refused judge is an error before the training, not after it
    # (with no judge anywhere one is trained here, as judging needs)
    from mlenv.book.judge import mnist_judge

    mnist_judge(options, **(judge_args or {}))
    result, loaded = train_recipe(RECIPE, folder, options, **recipe_values)
    losses = [row["train_loss"] for row in result.history]
    print(f"conditional UNet parameters: {sum(p.numel() for p in loaded.model.parameters()):,}")
    print(f"loss: epoch 1 {losses[0]:.5f}, epoch {len(losses)} {losses[-1]:.5f}")
    drawn = sample_and_judge(loaded, folder, options, judge_args)
    return write_training_results(folder, result, drawn, "conditional DDPM loss (MSE)")


def judge_run(
    run_dir: str | Path,
    folder: Path,
    options: BookOptions,
    judge_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample and judge again from a conditional run trained before (no training): another
    guidance (``options.guidance``) or sampler (``options.sample_steps``), same network.

    >>> judge_run("book-out/step10/runs/mnist-cfg-book/<id>", Path("w5"), BookOptions(guidance=5))  # doctest: +SKIP
    """
    folder.mkdir(parents=True, exist_ok=True)
    loaded = trained_run(run_dir)
    results = {"run_dir": str(run_dir), **sample_and_judge(loaded, folder, options, judge_args)}
    write_results(folder, results)
    return results
