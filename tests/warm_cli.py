"""The tests' CLI runs as real processes forked from a warm interpreter (a zygote), not started from nothing.

Why: every `python -m bench.run ...` a test starts spends 7-9 s importing torch, diffusers and transformers (all of
diffusers' model modules and torch._dynamo come with one UNet class) before its first line of work, and the suite
starts dozens. The zygote imports those third-party libraries once per pytest worker; each CLI run is then a
`fork()` of it that sets its own argv, environment, working folder, stdout and stderr, and runs the module as
`python -m` does (`runpy`, run_name "__main__"). The child imports every `bench`, `method` and `baselines` module
itself, so a broken import in them still fails the run; its exit status, stdout and stderr are its own.

What differs from a fresh interpreter: warnings the preloaded libraries print at import time are not in the
child's stderr, and their import-time reads of the environment are the worker's (HF_HUB_OFFLINE=1, the same
thread settings). So the one-line-error tests that care keep `fresh=True`, and every run that bench's own
launchers start (`bench.reproduce`, `bench.attribution`, Popen-based tests) is still a fresh interpreter.
`BENCH_TESTS_FRESH=1` runs every test CLI call as a fresh interpreter.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]  # not bench.config: the zygote imports no project module

# Third-party modules only: the child must import the project's own code itself.
PRELOAD = (
    "torch",
    "numpy",
    "pandas",
    "PIL.Image",
    "omegaconf",
    "hydra",
    "hydra.utils",
    "diffusers.models.unets.unet_2d_condition",
    "diffusers.models.autoencoders.autoencoder_kl",
    "diffusers.schedulers",
    "transformers.models.clip.modeling_clip",
    "open_clip",
)
READY = b"ready\n"


def fresh_only() -> bool:
    return os.environ.get("BENCH_TESTS_FRESH") == "1" or sys.platform != "linux"


class WarmInterpreter:
    """One zygote process (started on first use, stopped at exit); `run` forks it for one CLI command."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bench-zygote-"))
        self.socket_path = self.folder / "socket"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        command = [sys.executable, "-m", "tests.warm_cli", str(self.socket_path)]
        self.proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE)
        if self.proc.stdout.readline() != READY:
            raise RuntimeError(f"the tests' warm interpreter did not start (exit {self.proc.wait()})")

    def run(self, module: str, args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of `python -m module args` run in `cwd` with environment `env`."""
        out, err = self.folder / f"{time.monotonic_ns()}.out", self.folder / f"{time.monotonic_ns()}.err"
        request = {"module": module, "args": args, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(self.socket_path))
            conn.sendall(json.dumps(request).encode() + b"\n")
            reader = conn.makefile("rb")
            pid = int(reader.readline())
            conn.settimeout(timeout)
            try:
                status = int(reader.readline())
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired([module, *args], timeout) from None
        texts = out.read_text(), err.read_text()
        out.unlink()
        err.unlink()
        return status, *texts

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for path in self.folder.iterdir():
            path.unlink()
        self.folder.rmdir()


_WARM: WarmInterpreter | None = None


def run_python_module(
    module: str, args: list[str], cwd: Path, env: dict[str, str], timeout: float, fresh: bool = False
) -> subprocess.CompletedProcess:
    """`python -m module args` with `env` in `cwd`: forked from the warm interpreter, or (fresh) a new one."""
    global _WARM
    if fresh or fresh_only():
        command = [sys.executable, "-m", module, *args]
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if _WARM is None or _WARM.proc.poll() is not None:
        _WARM = WarmInterpreter()
    status, stdout, stderr = _WARM.run(module, args, cwd, env, timeout)
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], status, stdout, stderr)


def stop() -> None:
    """Stop the zygote (pytest_sessionfinish)."""
    global _WARM
    if _WARM is not None:
        _WARM.close()
        _WARM = None


# -- the zygote ---------------------------------------------------------------------------------------------------


def child(request: dict) -> None:
    """In the forked process: become `python -m <module> <args>` and exit as that interpreter would."""
    import atexit
    import runpy
    import threading
    import traceback

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 - the process's own stdout
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    # `python -m`: the working folder first on the path, then PYTHONPATH's entries, then the rest.
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [os.getcwd(), *extra, *[p for p in sys.path[1:] if p not in extra]]
    sys.argv = [request["module"], *request["args"]]
    code = 0
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - as the interpreter does: the traceback, then status 1
        traceback.print_exc()
        code = 1
    finally:
        threading._shutdown()  # noqa: SLF001 - wait for non-daemon threads, as interpreter exit does
        atexit._run_exitfuncs()  # noqa: SLF001
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(socket_path: str) -> None:
    """Import PRELOAD, then fork one child per request, answering its pid and then its exit status."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    server.listen(8)
    server.settimeout(5.0)
    parent = os.getppid()
    sys.stdout.buffer.write(READY)
    sys.stdout.flush()
    while os.getppid() == parent:  # a worker that died without stopping it: the zygote goes too
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        conn.settimeout(None)
        with conn:
            request = json.loads(conn.makefile("rb").readline())
            pid = os.fork()
            if pid == 0:
                server.close()
                conn.close()
                child(request)
            conn.sendall(f"{pid}\n".encode())
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):  # the test went away (a timeout): nothing to answer
                conn.sendall(f"{code}\n".encode())


if __name__ == "__main__":
    serve(sys.argv[1])
