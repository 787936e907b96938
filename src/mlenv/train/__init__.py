"""Trainer loop, BaseModel contract, losses, schedules, checkpoints, callbacks."""

from mlenv.train.base import BaseModel
from mlenv.train.trainer import FitResult, Trainer, TrainingInterrupted

__all__ = ["BaseModel", "FitResult", "Trainer", "TrainingInterrupted"]
