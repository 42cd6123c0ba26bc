"""What the page of ``encodeq up`` controls, in one object (uploader/web/fleet.py's protocol):
the workers, the S3 link, the broker, and the broker's own count of who consumes."""

from __future__ import annotations

import threading
from typing import Any

from kombu import Connection

from config.topology import WORK_QUEUE_KEYS
from console.up.faults import BrokerRestart, StorageLink
from console.up.supervisor import Supervisor
from core.queue_depths import queue_depths


class ConsumerCount:
    """Consumers of every work queue as RabbitMQ reports them: the truth about who competes (a
    process that runs is not yet a consumer, one stopping warm may still be one). One
    connection, reopened after a broker loss; None while the broker does not answer."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, int | None] | None:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = Connection(self.broker_url, connect_timeout=2)
                    self._conn.ensure_connection(max_retries=1)
                depths = queue_depths(self._conn, tuple(WORK_QUEUE_KEYS))
            except Exception:  # broker away (restarting, cut): unknown, asked again next time
                self.close()
                return None
        return {d.name: d.consumers for d in depths}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.release()
            self._conn = None


class UpControl:
    def __init__(self, fleet: Supervisor, storage: StorageLink, broker: BrokerRestart) -> None:
        self.fleet, self.storage, self.broker = fleet, storage, broker

    def describe(self) -> dict[str, Any]:
        return {
            **self.fleet.describe(),
            "storage": self.storage.describe(),
            "broker": self.broker.describe(),
        }

    def scale(self, workers: int) -> dict[str, Any]:
        return self.fleet.scale(workers)

    def kill(self, name: str) -> dict[str, Any]:
        return self.fleet.kill(name)

    def cut_storage(self, seconds: float) -> dict[str, Any]:
        return self.storage.cut(seconds)

    def restore_storage(self) -> dict[str, Any]:
        return self.storage.restore()

    def restart_broker(self) -> dict[str, Any]:
        return self.broker.start()
