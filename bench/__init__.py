"""Benchmark harness: configs, runs, records, metrics and tables."""

from bench import config as _config  # noqa: F401  (registers the OmegaConf resolvers)
