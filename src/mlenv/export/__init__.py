"""Porting parity: golden vectors, ONNX export, and a comparison that finds the first divergence."""
