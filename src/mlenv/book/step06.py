"""Step 6: tensors and autograd, gradient descent written out by hand, then the same network
trained by the mlenv Trainer.

Four small programs, run as the book runs them so that its printed numbers come out again:

1. autograd on y = 3x^2 at x = 5: y = 75, dy/dx = 30.
2. gradient descent on the Rosenbrock function y = 100 (x1 - x0^2)^2 + (x0 - 1)^2 from (0, 2),
   lr 1e-3, 10,000 steps, towards the minimum at (1, 1). The book prints the gradient at the start
   and does not zero it, so its first step uses twice that gradient; we keep that quirk, since
   the book's printed path depends on it.
3. linear regression y = xW + b on x ~ U(0, 1), y = 5 + 2x + U(0, 1) (torch.manual_seed(0),
   100 points), W and b from zero, the mean squared error, lr 0.1, 100 steps; checked against the
   closed-form least-squares line of the same points.
4. a 1-10-1 network (Linear, sigmoid, Linear) on y = sin(2 pi x) + U(0, 1) (torch.manual_seed(0)),
   full-batch SGD, lr 0.2, 10,000 steps.

Then the network once more as a packaged recipe, ``mlenv train book-sine`` (same data, same
optimizer, 100 epochs of 100 full-batch steps): a normal run with its folder, checkpoints and
store row. Its initial weights are the ones every mlenv model gets (``init_weights`` after
seeding), not the book's, so its loss is compared with the hand-written loop started from those
same weights: the two agree to float rounding.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlenv.book._common import BookOptions, pyplot, save, train_recipe, write_results
from mlenv.data.synthetic import NOISE_VARIANCE, line_data, sine_data
from mlenv.errors import ConfigError

ROSENBROCK_START, ROSENBROCK_LR, ROSENBROCK_STEPS = (0.0, 2.0), 1e-3, 10_000
REGRESSION_LR, REGRESSION_STEPS = 0.1, 100
NETWORK_HIDDEN, NETWORK_LR = 10, 0.2
STEPS_PER_EPOCH, BOOK_EPOCHS = 100, 100  # the recipe's epochs: 100 x 100 = the book's 10,000 steps

# What the book's programs print (its notebooks/06_pytorch.ipynb), for seed 0.
BOOK = {
    "rosenbrock_gradient": (-2.0, 400.0),
    "rosenbrock_end": (0.9944759607315063, 0.9889602065086365),
    "regression_loss": 0.07987643033266068,
    "W": 2.2863590717315674,
    "b": 5.3144850730896,
    "network_loss": 0.07945814728736877,
}


# ---------------------------------------------------------------------------------------------
# 1. autograd


def autograd_demo() -> dict[str, float]:
    """y = 3x^2 at x = 5, and dy/dx by backward()."""
    x = torch.tensor(5.0, requires_grad=True)
    y = 3 * x**2
    y.backward()
    return {"x": 5.0, "y": y.item(), "dy_dx": x.grad.item()}


# ---------------------------------------------------------------------------------------------
# 2. gradient descent on the Rosenbrock function


def rosenbrock(x0: Any, x1: Any) -> Any:
    """100 (x1 - x0^2)^2 + (x0 - 1)^2: tensors or numpy arrays; the minimum is 0 at (1, 1)."""
    return 100 * (x1 - x0**2) ** 2 + (x0 - 1) ** 2


def rosenbrock_gradient(x0: float, x1: float) -> tuple[float, float]:
    """The analytic gradient: (-400 x0 (x1 - x0^2) + 2 (x0 - 1), 200 (x1 - x0^2))."""
    return -400 * x0 * (x1 - x0**2) + 2 * (x0 - 1), 200 * (x1 - x0**2)


def descend_rosenbrock(
    start: tuple[float, float] = ROSENBROCK_START,
    lr: float = ROSENBROCK_LR,
    steps: int = ROSENBROCK_STEPS,
) -> dict[str, Any]:
    """Plain gradient descent with autograd; ``path`` holds the point before every step and the
    end point, (steps + 1, 2)."""
    x0 = torch.tensor(start[0], requires_grad=True)
    x1 = torch.tensor(start[1], requires_grad=True)
    rosenbrock(x0, x1).backward()
    first_gradient = (x0.grad.item(), x1.grad.item())
    # The book does not zero these gradients, so the first step below adds to them.
    path = []
    for _ in range(steps):
        path.append((x0.item(), x1.item()))
        y = rosenbrock(x0, x1)
        y.backward()
        with torch.no_grad():  # the update is not part of the graph
            x0 -= lr * x0.grad
            x1 -= lr * x1.grad
        x0.grad.zero_()
        x1.grad.zero_()
    path.append((x0.item(), x1.item()))
    return {"gradient_at_start": first_gradient, "path": np.array(path), "end": path[-1]}


# ---------------------------------------------------------------------------------------------
# 3. linear regression


def fit_line(
    x: torch.Tensor, y: torch.Tensor, lr: float = REGRESSION_LR, steps: int = REGRESSION_STEPS
) -> dict[str, Any]:
    """y = xW + b by gradient descent on the mean squared error, from W = 0, b = 0. ``losses[i]``
    is the loss before step i; W and b are the values after the last step."""
    W = torch.zeros(1, 1, requires_grad=True)  # (1, 1)
    b = torch.zeros(1, requires_grad=True)  # (1,)
    losses = []
    for _ in range(steps):
        y_hat = x @ W + b  # (N, 1)
        loss = torch.sum((y - y_hat) ** 2) / len(y)
        loss.backward()
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad
        W.grad.zero_()
        b.grad.zero_()
        losses.append(loss.item())
    return {"W": W.item(), "b": b.item(), "loss": losses[-1], "losses": losses}


def least_squares_line(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The exact minimiser of the mean squared error, by numpy's lstsq on [x, 1] in float64."""
    xs, ys = x.double().numpy()[:, 0], y.double().numpy()[:, 0]
    design = np.stack([xs, np.ones_like(xs)], axis=1)  # (N, 2)
    (W, b), *_ = np.linalg.lstsq(design, ys, rcond=None)
    return {"W": float(W), "b": float(b), "loss": float(np.mean((ys - (W * xs + b)) ** 2))}


# ---------------------------------------------------------------------------------------------
# 4. the 1-10-1 network


def book_network(hidden: int = NETWORK_HIDDEN) -> nn.Module:
    """Linear(1, hidden) -> sigmoid -> Linear(hidden, 1), built in the book's order (so the
    same RNG state gives the book's initial weights)."""
    return nn.Sequential(nn.Linear(1, hidden), nn.Sigmoid(), nn.Linear(hidden, 1))


def fit_network(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int
) -> dict[str, Any]:
    """Full-batch SGD on the mean squared error. ``losses[i]`` is the loss before step i (what
    the book prints); ``final_mse`` is the loss of the weights after the last step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        y_pred = model(x)  # (N, 1)
        loss = F.mse_loss(y_pred, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        final_mse = F.mse_loss(model(x), y).item()
    return {"loss": losses[-1], "final_mse": final_mse, "losses": losses}


def train_recipe_network(
    folder: Path, options: BookOptions, x: torch.Tensor, y: torch.Tensor, steps: int
) -> dict[str, Any]:
    """The network as ``mlenv train book-sine``; then the hand-written loop from the run's own
    initial weights (``create_model`` with the run's seed builds them again) on the same points."""
    from mlenv.models import create_model

    result, loaded = train_recipe("book-sine", folder, options, steps_per_epoch=STEPS_PER_EPOCH)
    cfg = loaded.config
    with torch.no_grad():
        trainer_mse = F.mse_loss(loaded.model(x), y).item()
    same_start = create_model(
        cfg.model, seed=cfg.train.seed, in_features=1, out_features=1, **cfg.model_args
    )
    plain = fit_network(same_start, x, y, NETWORK_LR, steps)  # the book's lr: the recipe's too
    summary = result.summary
    return {
        "run_dir": str(result.run_dir),
        "epochs": summary["epochs"],
        "steps": summary["steps_run"],
        "final_mse": trainer_mse,
        "val_loss": summary.get("val_loss"),
        "test_loss": summary.get("test_loss"),
        "plain_loop_same_start": {"final_mse": plain["final_mse"], "loss": plain["loss"]},
        "difference": abs(trainer_mse - plain["final_mse"]),
        "model": loaded.model,
        "losses_same_start": plain["losses"],
    }


# ---------------------------------------------------------------------------------------------
# plots


def plot_rosenbrock(path: np.ndarray, out: Path) -> str:
    plt = pyplot()
    g0, g1 = np.meshgrid(np.linspace(-2, 2, 300), np.linspace(-1, 3, 300))
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.contour(g0, g1, rosenbrock(g0, g1), levels=np.logspace(-1, 3.5, 20), cmap="viridis")
    ax.plot(path[:, 0], path[:, 1], color="red", lw=1.5, label="gradient descent")
    ax.plot(*path[0], "o", color="red", label=f"start ({path[0, 0]:g}, {path[0, 1]:g})")
    ax.plot(*path[-1], "x", color="black", ms=9, label=f"after {len(path) - 1} steps")
    ax.plot(1, 1, "*", color="gold", ms=14, mec="black", label="minimum (1, 1)")
    ax.set(xlabel="x0", ylabel="x1", title="Rosenbrock: gradient descent, lr 1e-3")
    ax.legend(loc="upper left", fontsize=8)
    return save(fig, out / "rosenbrock.png")


def plot_regression(x, y, fit: dict[str, Any], exact: dict[str, float], out: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(x[:, 0], y[:, 0], s=10, label="data: y = 5 + 2x + U(0, 1)")
    ends = np.array([0.0, 1.0])
    ax.plot(ends, fit["W"] * ends + fit["b"], color="red", label="gradient descent, 100 steps")
    ax.plot(ends, exact["W"] * ends + exact["b"], "--", color="black", label="least squares")
    ax.set(xlabel="x", ylabel="y", title="linear regression")
    ax.legend(fontsize=8)
    return save(fig, out / "regression.png")


def plot_network(x, y, models: dict[str, nn.Module], out: Path) -> str:
    plt = pyplot()
    grid = torch.linspace(0, 1, 200).reshape(-1, 1)  # (200, 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(x[:, 0], y[:, 0], s=10, label="data: y = sin(2 pi x) + U(0, 1)")
    ax.plot(
        grid[:, 0],
        torch.sin(2 * torch.pi * grid[:, 0]) + 0.5,
        ":",
        color="gray",
        label="E[y | x] = sin(2 pi x) + 0.5",
    )
    with torch.no_grad():
        for (label, model), color in zip(models.items(), ("red", "green"), strict=False):
            ax.plot(grid[:, 0], model(grid)[:, 0], color=color, label=label)
    ax.set(xlabel="x", ylabel="y", title="1-10-1 sigmoid network")
    ax.legend(fontsize=8)
    return save(fig, out / "network.png")


def plot_network_losses(curves: dict[str, list[float]], out: Path) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, losses in curves.items():
        ax.plot(range(len(losses)), losses, label=label)
    ax.axhline(NOISE_VARIANCE, ls=":", color="gray", label="noise variance 1/12")
    ax.set(xlabel="step", ylabel="MSE (log scale)", yscale="log", title="network loss")
    ax.legend(fontsize=8)
    return save(fig, out / "network_loss.png")


# ---------------------------------------------------------------------------------------------


def check_options(data: str | None, options: BookOptions) -> None:
    if data is not None:
        raise ConfigError("--data: step06 draws the book's synthetic data itself; leave it out")
    for flag, value in (
        ("--limit", options.limit),
        ("--sample-steps", options.sample_steps),
        ("--guidance", options.guidance),
    ):
        if value is not None:
            raise ConfigError(f"{flag}: applies to steps 07-10, not step06")


def run(out: Path, data: str | None, options: BookOptions) -> dict[str, Any]:
    """All four programs and the Trainer run; ``options.epochs`` sets the network's length in
    epochs of 100 full-batch steps (the book: 100, that is 10,000 steps)."""
    check_options(data, options)
    seed = options.seed
    network_steps = (options.epochs or BOOK_EPOCHS) * STEPS_PER_EPOCH
    with torch.random.fork_rng(devices=[]):  # the book seeds the global RNG; leave ours be
        torch.manual_seed(seed)
        x_line, y_line = line_data(100)  # (100, 1) each
        torch.manual_seed(seed)
        x, y = sine_data(100)  # (100, 1) each: the same draws as the book-sine training split
        model = book_network()  # the book's initial weights: the draws right after the data
    # The Trainer's run first: a flag it refuses (--device, --precision) fails before the loops.
    recipe_options = dataclasses.replace(options, epochs=options.epochs or BOOK_EPOCHS)
    trained = train_recipe_network(out, recipe_options, x, y, network_steps)
    autograd = autograd_demo()
    descent = descend_rosenbrock()
    line = fit_line(x_line, y_line)
    exact = least_squares_line(x_line, y_line)
    network = fit_network(model, x, y, NETWORK_LR, network_steps)

    plots = {
        "rosenbrock": plot_rosenbrock(descent["path"], out),
        "regression": plot_regression(x_line, y_line, line, exact, out),
        "network": plot_network(
            x,
            y,
            {"plain loop (book's start)": model, "mlenv train book-sine": trained["model"]},
            out,
        ),
        "network_loss": plot_network_losses(
            {
                "plain loop, book's initial weights": network["losses"],
                "plain loop, the recipe's initial weights": trained["losses_same_start"],
            },
            out,
        ),
    }
    every = 1000
    results: dict[str, Any] = {
        "seed": seed,
        "book": BOOK,
        "autograd": autograd,
        "rosenbrock": {
            "start": ROSENBROCK_START,
            "lr": ROSENBROCK_LR,
            "steps": ROSENBROCK_STEPS,
            "gradient_at_start": descent["gradient_at_start"],
            "analytic_gradient_at_start": rosenbrock_gradient(*ROSENBROCK_START),
            "path_every_1000": descent["path"][::every],
            "end": descent["end"],
        },
        # the keys: the linear regression's W, b and final loss at the top level
        "W": line["W"],
        "b": line["b"],
        "loss": line["loss"],
        "regression": {
            "lr": REGRESSION_LR,
            "steps": REGRESSION_STEPS,
            "losses_every_10": line["losses"][::10],
            "least_squares": exact,
        },
        "network": {
            "lr": NETWORK_LR,
            "steps": network_steps,
            "loss": network["loss"],
            "final_mse": network["final_mse"],
            "losses_every_1000": network["losses"][::every],
            "mlenv_train": {
                k: v for k, v in trained.items() if k not in ("model", "losses_same_start")
            },
        },
        "plots": plots,
    }
    write_results(out, results)
    report(results)
    return results


def report(r: dict[str, Any]) -> None:
    """The key numbers, ours next to the book's (the book's are for seed 0 and 10,000 steps)."""
    book, rb, net, t = r["book"], r["rosenbrock"], r["network"], r["network"]["mlenv_train"]
    a = r["autograd"]
    print(f"autograd: y = 3x^2 at x = 5: y = {a['y']:g}, dy/dx = {a['dy_dx']:g} (book: 75, 30)")
    g, exact_g = rb["gradient_at_start"], rb["analytic_gradient_at_start"]
    print(
        f"Rosenbrock gradient at (0, 2): ({g[0]:g}, {g[1]:g}), analytic ({exact_g[0]:g}, "
        f"{exact_g[1]:g})"
    )
    print(f"Rosenbrock after {rb['steps']} steps: x0 = {rb['end'][0]!r}, x1 = {rb['end'][1]!r}")
    print(
        f"                          book: x0 = {book['rosenbrock_end'][0]!r}, "
        f"x1 = {book['rosenbrock_end'][1]!r}"
    )
    print(f"linear regression: loss = {r['loss']!r}, W = {r['W']!r}, b = {r['b']!r}")
    print(
        f"             book: loss = {book['regression_loss']!r}, W = {book['W']!r}, "
        f"b = {book['b']!r}"
    )
    ls = r["regression"]["least_squares"]
    print(f"    least squares: loss = {ls['loss']:.6f}, W = {ls['W']:.6f}, b = {ls['b']:.6f}")
    print(
        f"1-10-1 network after {net['steps']} steps: loss = {net['loss']!r} "
        f"(book: {book['network_loss']!r})"
    )
    same = t["plain_loop_same_start"]
    print(
        f"mlenv train book-sine ({t['epochs']} epochs, {t['steps']} steps): training MSE "
        f"{t['final_mse']:.6f}, val_loss {t['val_loss']:.6f}, test_loss {t['test_loss']:.6f}; "
        f"the plain loop from the same start: {same['final_mse']:.6f} (difference "
        f"{t['difference']:.2g})"
    )
    print(f"run folder: {t['run_dir']}")
