"""``encodeq up`` as a user runs it, in a subprocess: started, asked, interrupted (Ctrl-C)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from console.s3server import free_port
from support.commands import ENCODEQ, log_path
from support.http import http_json
from support.waiting import wait_for


class Up:
    def __init__(self, data_dir: Path, workers: int, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.log = log_path(f"up-{self.port}")
        argv = [*ENCODEQ, "up", "--data-dir", str(data_dir), "--workers", str(workers)]
        self.proc = subprocess.Popen(
            [*argv, "--port", str(self.port)],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # a Ctrl-C here is ours to send, to up alone
        )
        try:
            self.state: dict[str, Any] = wait_for(self._published, 90, "encodeq up's up.json")
            wait_for(self._answers, 60, "encodeq up's dashboard")
        except BaseException:
            self.proc.send_signal(signal.SIGINT)  # a failed start leaves nothing running
            self.proc.wait(timeout=90)
            raise

    def _answers(self) -> bool:
        try:
            return http_json("GET", f"{self.base}/api/health", timeout=2)[0] == 200
        except OSError:
            return False

    def _published(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"encodeq up exited {self.proc.returncode}:\n{self.output()}")
        try:
            state = json.loads((self.data_dir / "up.json").read_text())
        except (OSError, ValueError):
            return None
        return state if state.get("pid") == self.proc.pid else None  # not a killed one's

    @property
    def base(self) -> str:
        return self.state["url"].rstrip("/")

    @property
    def link(self) -> str:
        return f"{self.state['url']}#token={self.state['token']}"

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.state['token']}"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        return http_json(method, self.base + path, body=data, headers=headers, timeout=30)

    def api_raw(self, method: str, path: str, body: bytes, content_type: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.state['token']}", "Content-Type": content_type}
        return http_json(method, self.base + path, body=body, headers=headers, timeout=60)

    def fleet(self) -> dict[str, Any]:
        status, doc = self.api("GET", "/api/fleet")
        assert status == 200, doc
        return doc

    def running(self, count: int) -> list[dict[str, Any]] | None:
        """The workers, once exactly ``count`` run and the broker sees ``count`` consumers."""
        doc = self.fleet()
        running = [w for w in doc["workers"] if w["state"] == "running"]
        counts = set((doc["consumers_by_queue"] or {None: None}).values())
        if len(doc["workers"]) == len(running) == count and counts == {count}:
            return running
        return None

    def interrupt(self, timeout: float = 90) -> int:
        """Ctrl-C, as a terminal sends it to the foreground process, and its exit code."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()  # never left running: its workers would take the next test's tasks
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def output(self) -> str:
        return self.log.read_text(errors="replace")
