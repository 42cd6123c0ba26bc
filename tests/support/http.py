"""The HTTP service for tests: a server subprocess, and requests to it with the standard library."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from console.s3server import free_port
from support.commands import SERVE_COMMAND, log_path, resolve
from support.waiting import wait_for


class Server:
    """An HTTP service subprocess, where it answers and its token (``ENCODEQ_API_TOKEN``, or
    the one it generated and printed in its ``#token=`` link)."""

    def __init__(self, proc: subprocess.Popen, base: str, log: Path) -> None:
        self.proc, self.base, self.log = proc, base, log
        self.token = ""
        self.link: str | None = None

    @property
    def auth(self) -> dict[str, str]:
        """The header every ``/api/*`` call but health needs."""
        return {"Authorization": f"Bearer {self.token}"}

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.returncode


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request; HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def http_json(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    status, _, data = http(method, url, **kwargs)
    return status, json.loads(data) if data else None


def multipart(filename: str, data: bytes, field: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body with one file part: (body, content type)."""
    boundary = "encodeq-test-" + os.urandom(8).hex()
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def serve_argv(port: int, host: str = "127.0.0.1") -> list[str]:
    """The HTTP service's command line as compose's, on ``host``:``port``."""
    return [*SERVE_COMMAND, "--host", host, "--port", str(port)]


def start_server(
    argv: list[str] | None = None, env: dict[str, str] | None = None, port: int | None = None
) -> Server:
    """The HTTP service (or ``argv`` exactly as given); returns once it answers and follows the
    events exchange."""
    port = port or free_port()
    log = log_path(f"serve-{port}")
    proc = subprocess.Popen(
        resolve(argv or serve_argv(port)),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    server = Server(proc, f"http://127.0.0.1:{port}", log)

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        try:
            status, doc = http_json("GET", f"{server.base}/api/health", timeout=2)
        except OSError:
            return False
        return status == 200 and doc["events"]

    wait_for(ready, 60, f"the HTTP service on port {port}")
    if proc.poll() is not None:
        raise AssertionError(f"the server exited {proc.returncode}:\n{server.output()[-3000:]}")
    token = {**os.environ, **(env or {})}.get("ENCODEQ_API_TOKEN", "")
    found = re.search(r"(http://\S+/)#token=(\S+)", server.output())
    if found:  # printed before uvicorn starts: there once /api/health answers
        server.link, server.token = found.group(0), found.group(2)
    else:
        server.token = token
    return server
