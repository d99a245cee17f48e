"""Benchmarks: `python -m bench.ingest` (ingestion throughput) and `python -m bench.model` (the sentiment model)."""
