"""Lesson 'durability': in memory, persisted, replicated, shown by killing a broker node.

Three RabbitMQ nodes of the lesson's own (console/local_cluster.py: never the broker your jobs
use) form a cluster. On node A, one message each goes into a non-durable queue (transient: in
memory), a durable classic queue (persistent: on A's disk) and a quorum queue replicated on every
node. Node A is then SIGKILLed, asked about from node B while it is down, and started again. What
survives is read back from the broker, never assumed: passive declares (message counts) and a
``basic.get`` of each message that should be there.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import amqp
from amqp.exceptions import AMQPError

from console.learn.lesson import LessonContext, Outcome, Scenario
from console.learn.scenarios.kit import body_of, connect, message
from console.learn.scratch import ScratchError
from console.local_cluster import Cluster, cluster_unavailable, running_cluster

IN_MEMORY, ON_DISK, REPLICATED = (
    "durability.in-memory",
    "durability.on-disk",
    "durability.replicated",
)
QUEUES = (IN_MEMORY, ON_DISK, REPLICATED)
#: The lesson's nodes: names and ports of their own, clear of the cluster tier's (5701-5703).
NODE_NAMES, FIRST_PORT = ("eqlearn-a", "eqlearn-b", "eqlearn-c"), 5711
#: How long a quorum queue may take to elect a new leader after its leader's node dies.
ELECTION_S = 30.0


def _declare_and_publish(url: str, replicas: int, persistent: bool) -> None:
    """The three queues on node A (the quorum queue's leader too), one message each, confirmed."""
    with connect(url) as connection:
        channel = connection.channel()
        channel.confirm_select()
        channel.queue_declare(IN_MEMORY, durable=False, auto_delete=False)
        channel.queue_declare(
            ON_DISK, durable=True, auto_delete=False, arguments={"x-queue-type": "classic"}
        )
        channel.queue_declare(
            REPLICATED,
            durable=True,
            auto_delete=False,
            arguments={
                "x-queue-type": "quorum",
                "x-quorum-initial-group-size": replicas,
                "x-queue-leader-locator": "client-local",
            },
        )
        modes = {IN_MEMORY: 1, ON_DISK: 2 if persistent else 1, REPLICATED: 2}
        for queue, mode in modes.items():
            body = {"queue": queue, "delivery_mode": mode}
            channel.basic_publish_confirm(
                message(body, delivery_mode=mode), exchange="", routing_key=queue
            )


def _read(url: str, queue: str) -> int | str:
    """How many messages a consumer of ``queue`` finds (its first one read back, then returned), or
    what the broker said instead: ``gone`` (no such queue) or ``unavailable`` (its node is down,
    or no leader)."""
    try:
        with connect(url) as connection:
            channel: amqp.Channel = connection.channel()
            channel.queue_declare(queue, passive=True)
            # What a consumer gets, not the declare's count (a quorum queue between leaders
            # counts 0); closing the channel returns the unacked message to the queue.
            delivery = channel.basic_get(queue, no_ack=False)
            if delivery is None:
                return 0
            if body_of(delivery)["queue"] != queue:
                return "wrong message"
            return 1 + int(delivery.delivery_info.get("message_count") or 0)
    except AMQPError as exc:
        return (
            "gone"
            if getattr(exc, "code", None) == 404 and "down" not in str(exc)
            else ("unavailable")
        )


def _read_while_down(url: str) -> dict[str, int | str]:
    """Each queue as node B sees it while A is down; the quorum queue gets until its survivors
    have elected a leader."""
    seen = {queue: _read(url, queue) for queue in QUEUES}
    deadline = time.monotonic() + ELECTION_S
    while seen[REPLICATED] in ("unavailable", 0) and time.monotonic() < deadline:
        time.sleep(0.5)  # polling the election, bounded by ELECTION_S
        seen[REPLICATED] = _read(url, REPLICATED)
    return seen


def _story(cluster: Cluster, context: LessonContext) -> dict[str, Any]:
    say = context.narrator.step
    replicas = int(context.knob("replicas", 3))
    persistent = bool(context.knob("persistent", True))
    a, b = cluster.nodes[0], cluster.nodes[1]
    say(
        f"Three scratch nodes formed a cluster in {cluster.formed_in_s:.0f} s (your broker is"
        " not touched)."
    )
    _declare_and_publish(a.url("/"), replicas, persistent)
    members = len(cluster.members(REPLICATED, "/"))
    say(
        f"On {a.name}: 1 transient message in {IN_MEMORY} (non-durable), 1"
        f" {'persistent' if persistent else 'transient'} message in {ON_DISK} (durable classic),"
        f" 1 in {REPLICATED} (quorum, {members} replicas, leader on {a.name})."
    )
    before = {queue: _read(a.url("/"), queue) for queue in QUEUES}
    killed = time.monotonic()
    cluster.kill(a.short)
    say(f"kill -9 {a.name}. Asking {b.name} about each queue while {a.name} is down.")
    down = _read_while_down(b.url("/"))
    elected = round(time.monotonic() - killed, 1)
    say(f"Starting {a.name} again on its own disk.")
    cluster.restart(a.short)
    cluster.wait_members("/", count=min(replicas, len(cluster.nodes)))
    after = {queue: _read(b.url("/"), queue) for queue in QUEUES}
    context.narrator.table(
        "messages in each queue",
        {
            "before": before,
            f"{a.short} down": down,
            "after restart": after,
        },
    )
    return {
        "replicas": members,
        "seconds_until_replicated_readable": elected,
        **{
            f"{key}_{when}": value
            for when, seen in (("before", before), ("while_down", down), ("after_restart", after))
            for key, value in _short(seen).items()
        },
    }


def _short(seen: dict[str, int | str]) -> dict[str, int | str]:
    return {queue.split(".", 1)[1].replace("-", "_"): value for queue, value in seen.items()}


def run(context: LessonContext) -> Outcome:
    why_not = cluster_unavailable()
    if why_not:
        raise ScratchError(f"the durability lesson starts three RabbitMQ nodes here: {why_not}")
    started = time.monotonic()
    with running_cluster(NODE_NAMES, FIRST_PORT) as cluster:
        counters = _story(cluster, context)
    counters["seconds"] = round(time.monotonic() - started, 1)
    with contextlib.suppress(KeyError):
        counters["seconds_until_replicated_readable"] = float(
            counters["seconds_until_replicated_readable"]
        )
    passed = (
        all(counters[f"{q}_before"] == 1 for q in ("in_memory", "on_disk", "replicated"))
        and counters["in_memory_after_restart"] in (0, "gone")
        and counters["on_disk_while_down"] == "unavailable"
        and counters["on_disk_after_restart"] == 1
        and counters["replicated_while_down"] == 1
        and counters["replicated_after_restart"] == 1
    )
    return Outcome(passed=passed, counters=counters, lesson=LESSON, see=SEE)


LESSON = (
    "Durable is a property of the queue and persistent of the message: a transient message, or a"
    " non-durable queue, dies with its node's memory. Persisted is not available: the durable"
    " classic queue kept its message but could not serve it while its one node was down. A quorum"
    " queue replicated on three nodes kept serving from the survivors within seconds."
)
SEE = (
    "config/topology.py (work_queue_arguments: every work queue is a quorum queue,"
    " ENCODEQ_QUORUM_REPLICAS replicas); tests/test_cluster.py (a leader killed mid-encode)"
)

SCENARIO = Scenario(
    name="durability",
    title="Durability: in memory, on disk, replicated",
    summary="kill -9 a node of a scratch 3-node cluster: the transient message is gone, the"
    " persisted one waits for its node, the quorum queue's keeps serving",
    run=run,
    knobs={"persistent": True, "replicas": 3},
)
