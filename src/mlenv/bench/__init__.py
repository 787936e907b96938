"""Measurement and statistics: repeats and cross-validation, significance tests, model benchmarks."""
