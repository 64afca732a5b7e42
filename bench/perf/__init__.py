"""Benchmark scripts: `python -m bench.perf [all|throughput|gradsam|toy]` (see __main__.py). Figures, not tests."""
