"""ONNX export with torch's exporter, verified against onnxruntime on the golden batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mlenv.errors import MlenvError

FP32_TOLERANCE = 1e-5


def export_onnx(weights: str, out: str | Path, batch_size: int = 8, seed: int = 0) -> float:
    """Write ``out`` and return the largest absolute difference between onnxruntime and torch
    on a fixed batch of real rows; above 1e-5 (fp32) is an error."""
    import onnxruntime

    from mlenv.export.golden import fixed_batch
    from mlenv.train.checkpoint import atomic_write_bytes, load_model_state
    from mlenv.train.run import build, load_trained

    trainer, cfg, state, path = load_trained(weights, prog="mlenv export onnx")
    bundle, _, _ = build(cfg)
    x = fixed_batch(cfg, bundle, batch_size, seed)["x"]
    trainer.setup(x, 1)
    load_model_state(trainer.raw_model, state["model"], path)
    model = trainer.raw_model.eval()
    program = torch.onnx.export(
        model,
        (x,),
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        dynamo=True,
        verbose=False,
    )
    data = program.model_proto.SerializeToString()
    out = Path(out)
    atomic_write_bytes(out, data)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x)
    expected = expected if isinstance(expected, tuple | list) else (expected,)
    got = session.run(None, {"input": x.numpy()})
    difference = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True))
    print(
        f"wrote {out}; onnxruntime vs torch on {len(x)} rows: max |difference| = {difference:.3e}"
    )
    if difference > FP32_TOLERANCE:
        raise MlenvError(
            f"{out}: onnxruntime differs from torch by {difference:.3e} "
            f"(more than {FP32_TOLERANCE:g} for fp32)"
        )
    return difference
