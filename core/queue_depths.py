"""How many messages wait in each work queue, and how many consumers take them.

Read by passive ``queue_declare``, which neither creates a queue nor disturbs its messages; the
live views, the demo, the tests and the benches all count the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from amqp.exceptions import NotFound

from config.topology import (
    CONTROL_QUEUE_NAME,
    DEAD_LETTER_QUEUE_NAME,
    ENCODE_EXPRESS_QUEUE_NAME,
    ENCODE_HIGH_QUEUE_NAME,
    ENCODE_QUEUE_NAME,
)

#: The queues a view shows, in the order the work flows.
WATCHED_QUEUES = (
    CONTROL_QUEUE_NAME,
    ENCODE_HIGH_QUEUE_NAME,
    ENCODE_EXPRESS_QUEUE_NAME,
    ENCODE_QUEUE_NAME,
    DEAD_LETTER_QUEUE_NAME,
)


@dataclass
class QueueDepth:
    name: str
    #: Ready messages (None: the queue does not exist); unacked ones are with the workers.
    messages: int | None
    consumers: int | None


def queue_depths(connection: Any, names: tuple[str, ...] = WATCHED_QUEUES) -> list[QueueDepth]:
    """Depths by passive ``queue_declare`` on a kombu connection; a missing queue is None."""
    depths = []
    for name in names:
        channel = connection.channel()
        try:
            _, messages, consumers = channel.queue_declare(name, passive=True)
        except NotFound:  # the broker closed this channel; the next name gets a fresh one
            depths.append(QueueDepth(name, None, None))
            continue
        channel.close()
        depths.append(QueueDepth(name, int(messages), int(consumers)))
    return depths
