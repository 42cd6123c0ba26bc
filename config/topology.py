"""The RabbitMQ topology, declared the same way by whoever connects first.

    exchange encodeq (topic) --control--> encodeq.control  (quorum: probe, join, finalize, watchdog)
                             --encode---> encodeq.encode   (quorum: the bulk lane: long jobs)
                             --encode.express> encodeq.encode.express (quorum: short jobs)
                             --encode.high> encodeq.encode.high (quorum: high-priority encodes)
    each work queue dead-letters (at-least-once, delivery limit) to
    exchange encodeq.dlx (fanout) --> encodeq.dlq (classic, durable: browsing it costs nothing;
                                      quorum on a cluster, ENCODEQ_QUORUM_REPLICAS > 1)
    exchange encodeq.events (topic): job.*, rendition.* and chunk.* lifecycle events, pub-sub

Topic, not direct, exchanges: Celery's native delayed delivery (retry countdowns held by the broker,
not in worker memory) only binds topic exchanges. The DLQ is a classic queue on purpose: a quorum
queue counts every returned delivery against its delivery limit, so browsing it could drop messages.

On a cluster (``quorum_replicas``) every quorum queue asks for that many replicas and a leader on
the node with the fewest leaders (``balanced``, RabbitMQ 3.10+), so a node's loss stops no queue
and no node leads them all. A classic DLQ would live on one node: lost with it, dead letters could
be neither listed nor replayed until it came back. So there the DLQ (and the parked queue) is a
quorum queue too, with a delivery limit no browsing reaches: RabbitMQ 3.10 counts every return of
a held delivery (the inspector's peek), 4.x caps quorum queues at 20 deliveries unless told, and -1
("no limit" on 4.x) would dead-letter at the first return on 3.10.
"""

from __future__ import annotations

from kombu import Connection, Exchange, Queue

from config.settings import get_settings

WORK_EXCHANGE = Exchange("encodeq", type="topic", durable=True)
DEAD_LETTER_EXCHANGE = Exchange("encodeq.dlx", type="fanout", durable=True)
EVENTS_EXCHANGE = Exchange("encodeq.events", type="topic", durable=True)

CONTROL_QUEUE_NAME = "encodeq.control"
ENCODE_QUEUE_NAME = "encodeq.encode"
#: The encodes' other lanes (worker/lanes.py): short jobs; high-priority jobs.
ENCODE_EXPRESS_QUEUE_NAME = "encodeq.encode.express"
ENCODE_HIGH_QUEUE_NAME = "encodeq.encode.high"
#: The encode lanes, most urgent first. A worker that consumes the encode queue consumes them
#: all, one node each (worker/nodes.py).
ENCODE_LANES = (ENCODE_HIGH_QUEUE_NAME, ENCODE_EXPRESS_QUEUE_NAME, ENCODE_QUEUE_NAME)
DEAD_LETTER_QUEUE_NAME = "encodeq.dlq"
#: Where the DLQ inspector parks messages replayed too often (durable, no consumers; the DLQ's
#: queue type).
PARKED_QUEUE_NAME = "encodeq.dlq.parked"


def with_lanes(queues: list[str]) -> list[str]:
    """The queues a worker is asked to consume, the encode queue bringing every encode lane."""
    wanted = list(dict.fromkeys(q for q in queues if q))
    if ENCODE_QUEUE_NAME in wanted:
        wanted += [lane for lane in ENCODE_LANES if lane not in wanted]
    return wanted


#: Our own message header (not ``x-``: RabbitMQ reserves those): how often the DLQ inspector
#: replayed a message. Workers read it too: a replayed task of a failed job reopens the job.
REPLAY_COUNT_HEADER = "encodeq-replay-count"

#: The first task of every job: the uploader publishes it by name (it never imports the worker), and
#: so does the janitor for a job left queued.
PROBE_TASK = "encodeq.probe"
#: One rung from the whole source (per-rung mode's every task; chunked mode's lowest rung, which
#: chunked mode publishes by name: the modes never import each other).
ENCODE_RUNG_TASK = "encodeq.encode"

#: Work queue -> its routing key on the work exchange.
#: A worker's node per queue (worker/nodes.py) is named ``NAME@host.<suffix>``, and its process
#: ``encodeq-<suffix>``; a node of any other queue is ``.node``.
NODE_SUFFIXES: dict[str, str] = {
    CONTROL_QUEUE_NAME: "control",
    ENCODE_HIGH_QUEUE_NAME: "high",
    ENCODE_QUEUE_NAME: "bulk",
    ENCODE_EXPRESS_QUEUE_NAME: "express",
}
OTHER_NODE_SUFFIX = "node"

WORK_QUEUE_KEYS: dict[str, str] = {
    CONTROL_QUEUE_NAME: "control",
    ENCODE_QUEUE_NAME: "encode",
    ENCODE_EXPRESS_QUEUE_NAME: "encode.express",
    ENCODE_HIGH_QUEUE_NAME: "encode.high",
}

#: Celery task name -> (queue name, routing key). The one routing table (an encode whose job
#: belongs in another lane is sent there by name: worker/lanes.py).
TASK_ROUTES: dict[str, tuple[str, str]] = {
    PROBE_TASK: (CONTROL_QUEUE_NAME, "control"),
    "encodeq.finalize": (CONTROL_QUEUE_NAME, "control"),
    ENCODE_RUNG_TASK: (ENCODE_QUEUE_NAME, "encode"),
    "encodeq.encode_chunk": (ENCODE_QUEUE_NAME, "encode"),
    "encodeq.encode_audio": (ENCODE_QUEUE_NAME, "encode"),
    # Light work: concatenation and checks, and the watchdog that rescues a stuck chunk. A worker
    # consumes each queue on a node of its own (worker/nodes.py), so none of these waits
    # behind an encode held by a busy node.
    "encodeq.join": (CONTROL_QUEUE_NAME, "control"),
    "encodeq.watch_chunks": (CONTROL_QUEUE_NAME, "control"),
}


#: The DLQ's delivery limit when it is a quorum queue: the largest a signed 32-bit argument holds,
#: two billion browses of one message (RabbitMQ 4.x would otherwise drop it after 20).
QUORUM_DLQ_DELIVERY_LIMIT = 2**31 - 1


def replication_arguments(replicas: int | None = None) -> dict[str, object]:
    """A quorum queue's replicas and leader placement; none when ``quorum_replicas`` is 0, so the
    queues of a broker that has them already keep exactly the arguments they were declared with."""
    replicas = get_settings().quorum_replicas if replicas is None else replicas
    if replicas <= 0:
        return {}
    return {"x-quorum-initial-group-size": replicas, "x-queue-leader-locator": "balanced"}


def work_queue_arguments(delivery_limit: int | None = None) -> dict[str, object]:
    """Arguments of every work queue: quorum, dead-lettered at least once, crash loops capped."""
    limit = get_settings().delivery_limit if delivery_limit is None else delivery_limit
    return {
        # Celery detects quorum queues only from this argument in its own queue config.
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
        # at-least-once needs reject-publish overflow, else RabbitMQ silently uses at-most-once.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": limit,
        **replication_arguments(),
    }


def dead_letter_queue_arguments() -> dict[str, object]:
    """The DLQ's (and the parked queue's) arguments: classic, unless replicated on a cluster."""
    replicas = get_settings().quorum_replicas
    if replicas <= 1:
        return {"x-queue-type": "classic"}
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": QUORUM_DLQ_DELIVERY_LIMIT,
        **replication_arguments(replicas),
    }


def work_queues() -> list[Queue]:
    """The work queues, as Celery's task_queues."""
    args = work_queue_arguments()
    return [
        Queue(name, WORK_EXCHANGE, routing_key=key, queue_arguments=args)
        for name, key in WORK_QUEUE_KEYS.items()
    ]


def dead_letter_queue() -> Queue:
    return Queue(
        DEAD_LETTER_QUEUE_NAME,
        DEAD_LETTER_EXCHANGE,
        routing_key="",
        durable=True,
        queue_arguments=dead_letter_queue_arguments(),
    )


def declare_topology(connection: Connection) -> None:
    """Declare exchanges and queues idempotently.

    The DLX and DLQ come first: RabbitMQ drops, silently, a message dead-lettered to an exchange
    that does not exist.
    """
    channel = connection.default_channel
    for exchange in (DEAD_LETTER_EXCHANGE, WORK_EXCHANGE, EVENTS_EXCHANGE):
        exchange.bind(channel).declare()
    dead_letter_queue().bind(channel).declare()
    parked_queue().bind(channel).declare()
    for queue in work_queues():
        queue.bind(channel).declare()


def parked_queue() -> Queue:
    """Messages the inspector will not replay again without ``--force``: bound to no exchange,
    reached through the default exchange by name, so nothing routes there by accident."""
    return Queue(
        PARKED_QUEUE_NAME,
        exchange=None,
        durable=True,
        queue_arguments=dead_letter_queue_arguments(),
    )
