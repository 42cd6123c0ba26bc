"""Looking at a queue without changing it: every delivery is held unacked, then the channel closes.

A classic queue puts returned messages back in their original places and counts nothing against
them, so ``list``, ``show``, ``stats`` and ``export`` leave the DLQ exactly as they found it.
Nothing is ever acked or rejected here. On a cluster the DLQ is a quorum queue (config/topology.py):
returns keep their order but count towards a delivery limit set out of reach, and come back a
moment after the close, which the peek waits for.
"""

from __future__ import annotations

from typing import Any

from dlq_inspector.broker import await_ready, open_channel, queue_size
from dlq_inspector.message import DeadLetter

#: Ready messages arrive back to back; this long without one means another consumer took them.
IDLE_TIMEOUT_S = 1.0


def peek(conn: Any, queue: str) -> list[DeadLetter]:
    """Every message ready in ``queue`` when called, in queue order, left in place."""
    expected = queue_size(conn, queue)
    if not expected:
        return []
    found: list[DeadLetter] = []
    channel = open_channel(conn)
    try:
        channel.basic_qos(0, 0, False)  # no prefetch limit: holding everything is the point
        channel.basic_consume(
            queue, no_ack=False, callback=lambda m: found.append(DeadLetter.from_amqp(m))
        )
        while len(found) < expected:
            try:
                conn.drain_events(timeout=IDLE_TIMEOUT_S)
            except TimeoutError:  # socket.timeout is an alias
                break
    finally:
        channel.close()  # every held delivery goes back, in order
    await_ready(conn, queue, len(found))
    return found[:expected]
