"""Metrics shared by training, evaluation and the benchmarks."""
