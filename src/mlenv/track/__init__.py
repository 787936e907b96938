"""Run folders, metric files, TensorBoard and plots: everything a run leaves on disk."""

from mlenv.track.run import Run

__all__ = ["Run"]
