"""Tiny models trained on the toy world (bench/toy/world.py), shipped in models/toy/.

`python -m bench.toy.train` retrains them (`make toy-models`); `python -m bench.toy.evaluate`
prints the quality bars; bench/toy/metrics.py scores samples against the world's known truth.
"""

from bench.config import REPO_ROOT

MODEL_DIR = REPO_ROOT / "models" / "toy"
