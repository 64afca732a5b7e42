"""What a `python -m tests.warm_probe <status>` process sees (tests/test_warm_cli.py compares warm and fresh runs)."""

import json
import os
import sys

if __name__ == "__main__":
    seen = {
        "argv": sys.argv[1:],
        "cwd": os.getcwd(),
        "path0": sys.path[0],
        "probe_env": os.environ.get("WARM_PROBE"),
        "project_preloaded": sorted(m for m in sys.modules if m.split(".")[0] in ("bench", "method", "baselines")),
        "main": __name__,
    }
    print(json.dumps(seen))
    print("to stderr", file=sys.stderr)
    status = sys.argv[1]
    if status == "raise":
        raise RuntimeError("probe failure")
    sys.exit(int(status) if status.isdigit() else status)
