"""Throughput benchmarks: where the time of a training step goes (data path, step, ceilings)."""
