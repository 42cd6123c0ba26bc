"""The inspector's broker connection: raw py-amqp channels under kombu's URL handling.

The inspector works below Celery and kombu's Producer on purpose: it must copy messages without
re-serialising them, hold deliveries unacked while it looks, and see publisher confirms and
``basic.return`` itself. Existence checks use a throwaway channel, since a failed passive declare
closes the channel it ran on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from amqp.exceptions import NotFound
from kombu import Connection

from config.settings import get_settings
from config.topology import declare_topology


@contextmanager
def connect(url: str | None = None, declare: bool = True) -> Iterator[Any]:
    """A connected py-amqp ``Connection``; the topology (DLQ, parked queue) declared first."""
    conn = Connection(url or get_settings().broker_url, heartbeat=0)
    try:
        conn.ensure_connection(max_retries=3)
        if declare:
            declare_topology(conn)
        yield conn.connection
    finally:
        conn.release()


def queue_size(conn: Any, queue: str) -> int | None:
    """Ready messages in ``queue``, or None when it does not exist."""
    channel = conn.channel()
    try:
        _, count, _ = channel.queue_declare(queue, passive=True)
    except NotFound:
        return None
    channel.close()
    return int(count)


def exchange_exists(conn: Any, exchange: str) -> bool:
    if exchange == "":
        return True  # the default exchange always exists
    channel = conn.channel()
    try:
        channel.exchange_declare(exchange, "topic", passive=True)
    except NotFound:
        return False
    channel.close()
    return True
