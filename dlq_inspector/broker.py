"""The inspector's broker connection: raw py-amqp channels under kombu's URL handling.

The inspector works below Celery and kombu's Producer on purpose: it must copy messages without
re-serialising them, hold deliveries unacked while it looks, and see publisher confirms and
``basic.return`` itself. Existence checks use a throwaway channel, since a failed passive declare
closes the channel it ran on.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from amqp.exceptions import NotFound
from kombu import Connection

from config.brokers import connect_retries
from config.retry_policy import broker_retry
from config.settings import get_settings
from config.topology import declare_topology

#: Connection attempts after the first before a command gives up (on the shared schedule; as
#: many rounds over a failover list).
CONNECT_RETRIES = 3


@contextmanager
def connect(url: str | None = None, declare: bool = True) -> Iterator[Any]:
    """A connected py-amqp ``Connection``; the topology (DLQ, parked queue) declared first."""
    # A failover list (``;``): kombu tries the next node when one refuses. A node lost in the
    # middle of a command ends the command with the error (nothing is acked before a confirm, so
    # nothing is lost): run it again and it connects to a node that answers.
    url = url or get_settings().broker_url
    conn = Connection(url, heartbeat=0)
    try:
        conn.ensure_connection(**broker_retry(max_retries=connect_retries(url, CONNECT_RETRIES)))
        if declare:
            declare_topology(conn)
        read_ahead(conn.connection)
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


#: How long a command waits for the deliveries it held to be back in their queue.
RETURN_WAIT_S = 5.0


def await_ready(conn: Any, queue: str, count: int, timeout: float = RETURN_WAIT_S) -> None:
    """Until ``queue`` has ``count`` messages ready again (or ``timeout`` passed).

    Deliveries a closed channel held are back in a classic queue before the close completes; in
    a quorum queue (the DLQ on a cluster) a moment later, once its leader has logged their
    return. A command waits for them, so the next one (a replay right after a list) sees them.
    """
    deadline = time.monotonic() + timeout
    while (queue_size(conn, queue) or 0) < count and time.monotonic() < deadline:
        time.sleep(0.02)


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


#: Bytes asked of the socket per read once read-ahead is on.
READ_AHEAD_BYTES = 16 * 1024


def read_ahead(conn: Any) -> None:
    """Let py-amqp read the socket in chunks instead of exactly one frame part at a time.

    py-amqp asks ``recv`` for exactly the bytes it needs (a 7-byte frame header, then the
    payload): three frames per message, two reads each. Its reader keeps whatever ``recv`` returns
    beyond what it asked for in its own buffer (``transport._read``), so asking for more turns six
    system calls per message into a fraction of one. Plain TCP transports only.
    """
    transport = conn.transport
    sock = getattr(transport, "sock", None)
    if sock is None or not hasattr(transport, "_quick_recv") or hasattr(sock, "getpeercert"):
        return
    recv = sock.recv
    transport._quick_recv = lambda n: recv(max(n, READ_AHEAD_BYTES))


def open_channel(conn: Any) -> Any:
    """A channel that hands over bodies as the bytes that arrived.

    py-amqp decodes a body to ``str`` when the message has a ``content_encoding`` (its
    ``auto_decode``); re-encoding that would not give the same bytes back for every encoding, and
    the inspector promises byte-for-byte copies.
    """
    channel = conn.channel()
    channel.auto_decode = False
    return channel
