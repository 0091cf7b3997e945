"""Benchmarks, each a pipeline stage: `python -m pipeline_src bench-*`."""
