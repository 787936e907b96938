"""Data sets by registry name. A builder returns a ``DataBundle`` of splits and the model
arguments the data determines (``in_features``, ``out_features``, ``vocab_size``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlenv.registry import Registry

DATASETS = Registry(
    "dataset",
    (
        "mlenv.data.sklearn_sets",
        "mlenv.data.text",
        "mlenv.data.tabular",
        "mlenv.data.vision",
        "mlenv.data.synthetic",
    ),
)
register_dataset = DATASETS.register


@dataclass
class DataBundle:
    """Splits (tensors, a Dataset or a DataLoader) and what the model needs to know of the data."""

    train: Any
    val: Any = None
    test: Any = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    # what prediction needs to repeat the preprocessing (tensors and plain data; saved in
    # every checkpoint), e.g. a fitted scaler and the label mapping
    state: dict[str, Any] = field(default_factory=dict)


__all__ = ["DATASETS", "DataBundle", "register_dataset"]
