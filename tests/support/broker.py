"""The one broker-admin helper: vhosts (``rabbitmqctl``), connections and queue depths.

Every test run, private-vhost test and benchmark gets a RabbitMQ vhost of its own through
``add_vhost``/``scratch_vhost``; queue depths come from ``core.monitor.queue_depths`` (what the
watch view and the dashboard show), never from a second implementation here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

from kombu import Connection

from config.brokers import split_broker_urls
from config.settings import Settings, get_settings
from config.topology import ENCODE_QUEUE_NAME
from core.queue_depths import queue_depths

#: Where the broker is when nothing says otherwise (RabbitMQ's own default user).
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    """``rabbitmqctl -q ARGS`` on this machine's node; its output (raises on failure)."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=timeout
    )
    return out.stdout


def vhost_url(vhost: str, like: str | None = None) -> str:
    """The URL of ``vhost`` on the broker (host, port, user) of ``like``: by default the one this
    process is pointed at (``ENCODEQ_BROKER_URL``), else RabbitMQ's default on 127.0.0.1."""
    base = urlsplit(first_url(like or os.environ.get("ENCODEQ_BROKER_URL") or DEFAULT_BROKER_URL))
    return urlunsplit((base.scheme, base.netloc, f"/{vhost}", "", ""))


def first_url(url: str) -> str:
    """The first URL of a failover list (``a;b``): the node ``rabbitmqctl`` here stands for."""
    return split_broker_urls(url)[0]


def vhost_of(url: str) -> str:
    return urlsplit(first_url(url)).path[1:]


def add_vhost(vhost: str, like: str | None = None) -> str:
    """Create ``vhost`` and give the URL's user every permission on it; returns its URL."""
    url = vhost_url(vhost, like)
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, urlsplit(url).username or "guest", *[".*"] * 3)
    return url


def delete_vhost(vhost: str) -> None:
    """Delete ``vhost`` and all in it (cleanup: never raises)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rabbitmqctl("delete_vhost", vhost)


@contextmanager
def scratch_vhost(prefix: str) -> Iterator[str]:
    """A vhost ``<prefix>-<random>`` for the block; yields its URL, deletes it afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    url = add_vhost(name)
    try:
        yield url
    finally:
        delete_vhost(name)


@contextmanager
def private_vhost(name: str) -> Iterator[str]:
    """A RabbitMQ vhost of its own, made this process's (and its subprocesses') broker while in
    use: its work queues hold nobody else's messages, so a test may kill messages in them and
    count what arrives where. Yields its URL. The process-wide settings are read again on the way
    in and out, so nothing in this process keeps the URL of a vhost that no longer exists."""
    previous = os.environ.get("ENCODEQ_BROKER_URL")
    with scratch_vhost(f"{vhost_of(Settings().broker_url)}-{name}") as url:
        os.environ["ENCODEQ_BROKER_URL"] = url
        get_settings.cache_clear()
        try:
            yield url
        finally:
            if previous is None:
                os.environ.pop("ENCODEQ_BROKER_URL", None)
            else:
                os.environ["ENCODEQ_BROKER_URL"] = previous
            get_settings.cache_clear()


def list_queues(*columns: str, url: str | None = None) -> list[list[str]]:
    """``rabbitmqctl list_queues`` of the vhost of ``url`` (default: this process's broker):
    one row of ``columns`` per queue. For what AMQP cannot tell (unacked counts, every name)."""
    name = vhost_of(url or Settings().broker_url)
    rows = [
        line.split("\t") for line in rabbitmqctl("list_queues", "-p", name, *columns).splitlines()
    ]
    return [row for row in rows if row != list(columns) and row != [""]]  # no header, no blank


def broker(url: str | None = None) -> Connection:
    """A kombu connection to this process's broker (or ``url``), not yet connected."""
    return Connection(url or Settings().broker_url)


def queue_state(name: str, url: str | None = None) -> tuple[int, int]:
    """(ready messages, consumers) of a queue, by a passive declare (0, 0 while it is missing)."""
    with broker(url) as conn:
        [depth] = queue_depths(conn, (name,))
    return depth.messages or 0, depth.consumers or 0


def consumers(name: str = ENCODE_QUEUE_NAME, url: str | None = None) -> int:
    """Consumers of a queue now (0 while it is missing or the broker does not answer)."""
    try:
        return queue_state(name, url)[1]
    except Exception:
        return 0


def event_queues() -> list[str]:
    """Names of the private queues subscribed to ``encodeq.events`` in this run's vhost."""
    return [row[0] for row in list_queues("name") if row[0].startswith("encodeq.events.")]


def unacked(queue: str) -> int:
    """Messages delivered to consumers and not yet acked, as RabbitMQ reports them."""
    counts = {row[0]: int(row[1]) for row in list_queues("name", "messages_unacknowledged")}
    return counts.get(queue, 0)


#: Celery's native delayed-delivery queues (one per bit of the delay).
DELAYED_QUEUES = tuple(f"celery_delayed_{level}" for level in range(28))


def delayed_messages() -> int:
    """Messages held by Celery's native delayed-delivery queues (a retry's countdown)."""
    with broker() as conn:
        return sum(depth.messages or 0 for depth in queue_depths(conn, DELAYED_QUEUES))
