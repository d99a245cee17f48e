"""Benchmarks, each run as `python -m bench.<name>`; their figures go to docs/benchmarks.md."""
