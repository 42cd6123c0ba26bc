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

from config.brokers import split_broker_urls
from console.rabbitmq_cli import LOOPBACK, local_amqp_ports, rabbitmqctl
from console.tcp_proxy import TcpProxy
from uploader.web.fleet import FleetError

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
        self._lock = threading.Lock()

    def cut(self, seconds: float) -> dict[str, Any]:
        with self._lock:
            if self._timer is not None:
                raise FleetError(409, "already_cut", "S3 is already cut; wait for it to come back")
            self.proxy.cut()
            self.cut_until = datetime.now(UTC) + timedelta(seconds=seconds)
            self._timer = threading.Timer(seconds, self.restore)
            self._timer.daemon = True
            self._timer.start()
        return {"cut_for_s": seconds, "until": _iso(self.cut_until)}

    def restore(self) -> dict[str, Any]:
        """S3 back now (the cut's timer calls this too; restoring a link that is up is a no-op)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            try:
                self.proxy.restore()
            except OSError as exc:  # the port was taken while cut: say so, stay cut
                raise FleetError(409, "restore_failed", f"S3's port is taken: {exc}") from None
            self.cut_until, self._timer = None, None
        return {"storage": "up"}

    def describe(self) -> dict[str, Any]:
        until = self.cut_until
        return {
            "kind": self.kind,
            "endpoint": self.proxy.endpoint,
            "cut_until": _iso(until) if until else None,
        }

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self.proxy.cut()


class BrokerRestart:
    """Restarts the local RabbitMQ node with rabbitmqctl; refused where ``up`` may not."""

    def __init__(self, broker_url: str) -> None:
        url = urlsplit((split_broker_urls(broker_url) or [""])[0])  # the node tried first
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 5672
        self.state = "up"
        self.detail = ""
        self._lock = threading.Lock()
        #: The AMQP ports the local node serves (rabbitmqctl talks to that node, not to a URL):
        #: asked once, in the background, as it takes a second or two.
        self._ports: set[int] | None = None
        if self.host in LOOPBACK and shutil.which("rabbitmq-diagnostics"):
            asking = threading.Thread(target=self._ask_ports, name="encodeq-ports", daemon=True)
            asking.start()

    def _ask_ports(self) -> None:
        self._ports = local_amqp_ports()

    def refusal(self) -> str | None:
        """Why this broker cannot be restarted from here, or None."""
        if self.host not in LOOPBACK:
            return f"the broker runs on {self.host}, not on this machine"
        if shutil.which("rabbitmqctl") is None:
            return "rabbitmqctl is not installed here"
        if self._ports is None:
            return "asking the local RabbitMQ node which ports it serves"
        if self.port not in self._ports:
            return f"the local RabbitMQ node does not serve port {self.port}: not the one up uses"
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
        try:
            try:
                rabbitmqctl("stop_app", timeout=RABBITMQCTL_TIMEOUT_S)
            finally:  # stopped or not, started again: never leave the broker down
                rabbitmqctl("start_app", timeout=RABBITMQCTL_TIMEOUT_S)
                rabbitmqctl("await_startup", timeout=RABBITMQCTL_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
            self.state, self.detail = "error", str(exc)[-300:]
            return
        self.state = "up"
        self.detail = f"restarted in {time.monotonic() - started:.1f}s"

    def describe(self) -> dict[str, Any]:
        return {"state": self.state, "detail": self.detail, "refusal": self.refusal()}
