"""`python -m bench.perf [all|throughput|gradsam|toy|gpu] [options]`: performance benchmarks -> results/perf/.

    throughput  bench.perf.throughput: samples/s per method on the tiny model, Inception images/s,
                a second aggregation on warm caches, peak memory, the machine (perf.csv, perf.md)
    gradsam     bench.perf.gradsam: the Grad-SAM Jacobian benchmark, the general path's two sides per layer
                set (gradsam_modes.md); `--scale sd15`: at SD1.5's size (gradsam_sd15.md)
    toy         bench.perf.toy: a toy UNet training step at 8 attention heads against the shipped 2
    gpu         bench.perf.gpu: the prepared GPU measurement at SD1.5's size (gpu.md; needs a CUDA device,
                or `--device cpu --size tiny` for its CPU test)
    all         throughput, gradsam and toy (the default; `make perf`)
Options after the name go to that benchmark, e.g. `python -m bench.perf throughput --samples 8`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys

BENCHMARKS = {
    "throughput": "bench.perf.throughput",
    "gradsam": "bench.perf.gradsam",
    "toy": "bench.perf.toy",
    "gpu": "bench.perf.gpu",
}
ALL = ("throughput", "gradsam", "toy")  # `all`: what runs on any machine


def run_benchmark_module(name: str, argv: list[str]) -> bool:
    """Run one benchmark's main(argv); False (with a note) when its module does not exist."""
    module_name = BENCHMARKS[name]
    if importlib.util.find_spec(module_name) is None:
        print(f"perf: skipped {name}: {module_name} does not exist in this checkout.", file=sys.stderr)
        return False
    main = importlib.import_module(module_name).main
    main(argv) if inspect.signature(main).parameters else main()
    return True


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    what, rest = (argv[0], argv[1:]) if argv else ("all", [])
    if what not in (*BENCHMARKS, "all"):
        sys.exit(f"usage: python -m bench.perf [all|{'|'.join(BENCHMARKS)}] [options]\n\n{__doc__}")
    for name in ALL if what == "all" else [what]:
        run_benchmark_module(name, rest if what != "all" else [])


if __name__ == "__main__":
    main()
