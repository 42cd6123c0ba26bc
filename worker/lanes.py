"""The encode lanes: which queue a job's encodes wait in, and how much CPU each lane gets.

Why lanes: a job's window (worker/window.py) bounds how much of it waits in a queue, but a clip
still waits for a worker to finish the task in hand, and a task of a long job holds a worker
for up to a chunk's encode. So the work is split by urgency, a quorum queue each (RabbitMQ 3.10's
quorum queues have no message priorities):

- ``encodeq.encode.high``: every encode of a ``--priority high`` job;
- ``encodeq.encode.express``: every encode of a normal job no longer than ``express_max_s``;
- ``encodeq.encode``: the bulk lane, every encode of a longer normal job (its lowest rung, encoded
  whole in chunked mode, goes first: on an idle fleet the job plays seconds after the upload).

A worker consumes each lane on a node of its own (worker/nodes.py), so every lane has a free
process on every worker at all times, and each node runs at its lane's niceness (nice_high 0,
nice_express 10, nice_bulk 19 by default): when lanes compete for the cores, Linux's scheduler
gives the urgent one nearly all of them at once, with no wait for a task to end; alone, a lane
gets every core. Preemption without stopping anything: the bulk encode slows down, it is not
killed or requeued, and it keeps a small share (nice 19 against nice 0 is 15 to 1024 in CFS
weights), so no lane starves for ever.
"""

from __future__ import annotations

import logging

from kombu.exceptions import OperationalError

from config.settings import Settings, get_settings
from config.topology import (
    ENCODE_EXPRESS_QUEUE_NAME,
    ENCODE_HIGH_QUEUE_NAME,
    ENCODE_QUEUE_NAME,
)
from core.job_model import Manifest, Priority
from core.queue_depths import queue_depths
from worker.app import app

logger = logging.getLogger(__name__)


def lane_of(manifest: Manifest) -> str:
    """The queue of the job's encodes."""
    probe = manifest.source.probe
    assert probe is not None  # the probe recorded it before any encode was published
    return lane_for(manifest.priority, probe.duration)


def lane_for(priority: Priority, duration: float) -> str:
    """The queue of the encodes of a job of this priority and length."""
    if priority == "high":
        return ENCODE_HIGH_QUEUE_NAME
    short = duration <= get_settings().express_max_s
    return ENCODE_EXPRESS_QUEUE_NAME if short else ENCODE_QUEUE_NAME


def niceness(queue: str, settings: Settings) -> int:
    """The niceness a node consuming ``queue`` runs at (0: not an encode lane)."""
    return {
        ENCODE_HIGH_QUEUE_NAME: settings.nice_high,
        ENCODE_EXPRESS_QUEUE_NAME: settings.nice_express,
        ENCODE_QUEUE_NAME: settings.nice_bulk,
    }.get(queue, 0)


def encode_consumers(queue: str) -> int:
    """How many consumers take the lane's queue now, as the broker counts them; 1 when the
    broker cannot say (a plan for one still works)."""
    with app.connection_for_read() as connection:
        errors = (OperationalError, *connection.connection_errors, *connection.channel_errors)
        try:
            [depth] = queue_depths(connection, (queue,))
        except errors as exc:
            logger.warning("the broker did not count the consumers of %s (%s): 1 it is", queue, exc)
            return 1
    return max(1, depth.consumers or 0)
