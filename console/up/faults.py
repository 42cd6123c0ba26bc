"""The faults ``encodeq up`` injects from the page: S3 cut for a while, RabbitMQ restarted.

Both are real: the S3 link is a TCP proxy (console/tcp_proxy.py, the one the tests cut) that
drops every connection and refuses new ones, so workers see what they would see if MinIO died;
the broker restart is ``rabbitmqctl stop_app`` / ``start_app`` on the local node, so every
connection drops and the durable quorum queues come back with what they held. What follows is
the system's own doing (retries with backoff, redeliveries, reconnects), and the page shows it.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from console.tcp_proxy import TcpProxy
from uploader.web.fleet import FleetError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
#: rabbitmqctl's own waits, bounded so a stuck broker shows as an error, not a hung button.
RABBITMQCTL_TIMEOUT_S = 120


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


class StorageLink:
    """The proxy every client of ``up`` reaches S3 through; ``cut(seconds)`` then restores."""

    def __init__(self, proxy: TcpProxy, kind: str) -> None:
        self.proxy = proxy
        self.kind = kind
        self.cut_until: datetime | None = None
        self._timer: threading.Timer | None = None

    def cut(self, seconds: float) -> dict[str, Any]:
        if self._timer is not None:
            raise FleetError(409, "already_cut", "S3 is already cut; wait for it to come back")
        self.proxy.cut()
        self.cut_until = datetime.now(UTC) + timedelta(seconds=seconds)
        self._timer = threading.Timer(seconds, self.restore)
        self._timer.daemon = True
        self._timer.start()
        return {"cut_for_s": seconds, "until": _iso(self.cut_until)}

    def restore(self) -> None:
        self.proxy.restore()
        self.cut_until, self._timer = None, None

    def describe(self) -> dict[str, Any]:
        until = self.cut_until
        return {
            "kind": self.kind,
            "endpoint": self.proxy.endpoint,
            "cut_until": _iso(until) if until else None,
        }

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.proxy.cut()


class BrokerRestart:
    """Restarts the local RabbitMQ node with rabbitmqctl; refused where ``up`` may not."""

    def __init__(self, broker_url: str) -> None:
        self.host = urlsplit(broker_url.split(";")[0]).hostname or "127.0.0.1"
        self.state = "up"
        self.detail = ""
        self._lock = threading.Lock()

    def refusal(self) -> str | None:
        """Why this broker cannot be restarted from here, or None."""
        if self.host not in LOOPBACK:
            return f"the broker runs on {self.host}, not on this machine"
        if shutil.which("rabbitmqctl") is None:
            return "rabbitmqctl is not installed here"
        return None

    def start(self) -> dict[str, Any]:
        reason = self.refusal()
        if reason:
            raise FleetError(409, "broker_not_restartable", reason)
        with self._lock:
            if self.state == "restarting":
                raise FleetError(409, "already_restarting", "the broker is restarting already")
            self.state, self.detail = "restarting", ""
        threading.Thread(target=self._restart, name="encodeq-broker-restart", daemon=True).start()
        return {"broker": "restarting"}

    def _restart(self) -> None:
        started = time.monotonic()
        for step in (["stop_app"], ["start_app"], ["await_startup"]):
            done = subprocess.run(
                ["rabbitmqctl", "-q", *step],
                capture_output=True,
                text=True,
                timeout=RABBITMQCTL_TIMEOUT_S,
                check=False,
            )
            if done.returncode != 0:
                self.state = "error"
                self.detail = f"rabbitmqctl {step[0]}: {done.stderr.strip()[-300:]}"
                return
        self.state = "up"
        self.detail = f"restarted in {time.monotonic() - started:.1f}s"

    def describe(self) -> dict[str, Any]:
        return {"state": self.state, "detail": self.detail, "refusal": self.refusal()}
