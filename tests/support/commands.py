"""The project's commands as a user (or a compose service) runs them, resolved on this machine.

``WORKER_COMMAND`` and ``SERVE_COMMAND`` are the service entry points exactly as
docker-compose.yml's ``command:`` lines spell them; the worker fleet and the test servers start
them with the same argv, and tests/test_compose.py checks the two agree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ENCODEQ = [shutil.which("encodeq") or "encodeq"]
#: The worker service's entry point (compose's worker ``command:``, less its options).
WORKER_COMMAND = ["python", "-m", "worker"]
#: The HTTP service's entry point (compose's uploader ``command:``, less its options).
SERVE_COMMAND = ["python", "-m", "uploader.web"]


def resolve(argv: list[str]) -> list[str]:
    """``argv`` with its program found here: ``encodeq`` the installed script, ``python`` this
    interpreter (a container's ``python`` is the one the project is installed in)."""
    program, *rest = argv
    if program == "encodeq":
        return [ENCODEQ[0], *rest]
    if program in ("python", "python3"):
        return [sys.executable, *rest]
    return [shutil.which(program) or program, *rest]


def log_path(what: str) -> Path:
    """Where a subprocess's output goes: TMPDIR, named after it and this test process."""
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"encodeq-{what}-{os.getpid()}.log"


def encodeq(
    *args: str, timeout: float = 300, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``encodeq ARGS``: its exit code, stdout and stderr (text)."""
    return subprocess.run(
        [*ENCODEQ, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env={**os.environ, **(env or {})},
    )


def upload_job(path: Path, *options: str, env: dict[str, str] | None = None) -> str:
    """``encodeq upload PATH``: the job id, without waiting for the job."""
    result = encodeq("upload", str(path), *options, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def upload_and_wait(
    *paths: Path, options: tuple[str, ...] = (), timeout: float = 240
) -> list[dict]:
    """``encodeq upload --wait --json``: the final manifest of every job."""
    wait = ["--wait", "--json", "--timeout", str(timeout)]
    result = encodeq("upload", *map(str, paths), *wait, *options, timeout=timeout + 60)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    doc = json.loads(result.stdout)
    return doc if isinstance(doc, list) else [doc]


def dlq(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Any:
    """``encodeq dlq ...`` as a user runs it, stdin not a terminal."""
    return subprocess.run(
        [*ENCODEQ, "dlq", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def dlq_json(*args: str, env: dict[str, str] | None = None) -> Any:
    """``encodeq dlq ... --json``, parsed (exit 0 asserted)."""
    result = dlq(*args, "--json", env=env)
    assert result.returncode == 0, f"dlq {args}: {result.returncode}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)
