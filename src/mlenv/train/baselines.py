"""Baselines that beat the model by a wide margin: one line for the run's summary, pointing at
``mlenv doctor``. (The baselines themselves are fitted by the binary task's report.)"""

from __future__ import annotations

BASELINE_GAP = 0.05  # a baseline this much more accurate than the model: something is off
BASELINE_NAMES = {"logreg": "LogisticRegression", "hgb": "HistGradientBoosting"}


def baseline_warning(accuracy: float, baselines: dict[str, float]) -> str | None:
    """One line when the best baseline's test accuracy beats the model's (``accuracy``) by more
    than ``BASELINE_GAP``, pointing at ``mlenv doctor``; else None."""
    scores = {
        k[len("baseline_") : -len("_test_acc")]: v
        for k, v in baselines.items()
        if k.startswith("baseline_") and k.endswith("_test_acc")
    }
    if not scores:
        return None
    name, best = max(scores.items(), key=lambda kv: kv[1])
    if best - accuracy <= BASELINE_GAP:
        return None
    return (
        f"{BASELINE_NAMES.get(name, name)} reaches {best:.4f} test accuracy, the model {accuracy:.4f}"
        f" ({best - accuracy:+.3f}): something in the data or the training is off; "
        "`mlenv doctor RECIPE` with the same flags says what"
    )
