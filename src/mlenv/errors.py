"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


class MlenvError(Exception):
    """Base of every error that is the user's input, not a bug in mlenv."""


class ConfigError(MlenvError):
    """A configuration field is unknown, of the wrong type or out of range."""


class DataError(MlenvError):
    """A data file or data set cannot be used as given."""


class CheckpointError(MlenvError):
    """A checkpoint file is missing, truncated, corrupt or does not fit the model."""


class TrainingError(MlenvError):
    """Training cannot go on (for example, a loss that is NaN or infinite)."""


class OutputError(MlenvError):
    """An output path cannot be written safely (it would replace an input, a run's files, or
    something that is not a regular file)."""
