"""Benchmark harness: runs, datasets, metrics, records, reporting (above the kernel bench.sd)."""
