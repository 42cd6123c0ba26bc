"""Replaying: where each message goes back to, when it is parked instead, and the dry-run plan.

Where it was going: the exchange and routing key of its first death in ``x-death`` (the death in a
work queue; Celery's delay hops are skipped, and a message that died on its way through Celery's
delayed-delivery exchange goes straight to the queue it died in, not through the countdown again).
``--to QUEUE`` sends it to that queue through the default exchange instead; a queue that does not
exist makes the publish unroutable, so the broker returns it and the DLQ copy stays.

Where a replay may go at all: only to the work queues (through the work exchange with one of the
routing keys of ``WORK_QUEUE_KEYS``, or to one of those queues by name) or to the
parked queue. ``x-death`` is just a header: an imported (or hand-published) message can say it
died in ``celery.pidbox``, a reply queue or ``amq.*``, and a copy sent there commands every worker.
Such a message is kept in the DLQ with the reason. So is one carrying RabbitMQ's sender-selected
distribution headers (``CC``/``BCC``: a byte-for-byte copy would also be routed to every queue they
name) or a ``user_id`` (the broker refuses it from anyone but the original publisher).

A message already replayed ``dlq_max_replays`` times is parked in ``encodeq.dlq.parked``
(unchanged) instead of bounced back again, unless forced.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from config.topology import PARKED_QUEUE_NAME, WORK_EXCHANGE, WORK_QUEUE_KEYS
from core.failures import FailureRecord
from dlq_inspector.broker import exchange_exists, queue_size
from dlq_inspector.death import Death
from dlq_inspector.filters import Selection
from dlq_inspector.message import DeadLetter
from dlq_inspector.stream import Decision, Keep, Publish

DELAY_PREFIX = "celery_delayed"

#: Work routing keys of the work exchange -> the queue each reaches.
WORK_ROUTES: dict[str, str] = {key: queue for queue, key in WORK_QUEUE_KEYS.items()}
#: The queues a replay may reach: the work queues and the parked queue.
REPLAY_QUEUES: frozenset[str] = frozenset([*WORK_ROUTES.values(), PARKED_QUEUE_NAME])
#: Headers that make RabbitMQ route a copy to further queues (sender-selected distribution).
ROUTING_HEADERS = ("CC", "BCC")


@dataclass(frozen=True)
class Target:
    exchange: str
    routing_key: str

    @property
    def label(self) -> str:
        if self.exchange == "":
            return f"queue {self.routing_key}"
        return f"{self.exchange} -> {self.routing_key or '(no routing key)'}"


def origin(message: DeadLetter) -> Death | None:
    """The death that says where the message was going: the oldest not in a delay queue."""
    for death in reversed(message.deaths):
        if not death.queue.startswith(DELAY_PREFIX):
            return death
    return None


def target_of(message: DeadLetter, to_queue: str | None = None) -> Target | None:
    if to_queue:
        return Target("", to_queue)
    death = origin(message)
    if death is None:
        return None
    if death.exchange.startswith(DELAY_PREFIX) or not death.routing_keys:
        return Target("", death.queue)
    return Target(death.exchange, death.routing_keys[0])


def allowed_queues() -> str:
    return ", ".join(sorted(REPLAY_QUEUES))


def target_refusal(target: Target) -> str | None:
    """Why nothing may be replayed to ``target`` (None: it may)."""
    if target.exchange == "" and target.routing_key in REPLAY_QUEUES:
        return None
    if target.exchange == WORK_EXCHANGE.name and target.routing_key in WORK_ROUTES:
        return None
    return f"{target.label} is not a work queue or the parked queue"


def message_refusal(message: DeadLetter) -> str | None:
    """Why this message may go nowhere, whatever its target (None: it may)."""
    for name in ROUTING_HEADERS:
        if name in message.headers:
            return f"it has a {name} header: a copy would also be routed to the queues it names"
    if "user_id" in message.properties:
        return "it has a user_id property (only its original publisher may send it)"
    return None


def parks(message: DeadLetter, max_replays: int, force: bool) -> bool:
    return not force and message.replay_count >= max_replays


@dataclass
class ReplayPolicy:
    """Decides, message by message, what a replay does; used by the Mover and by the plan."""

    conn: Any
    selection: Selection
    max_replays: int
    to_queue: str | None = None
    force: bool = False
    #: Failure records by message key, loaded lazily (only the error-type filter needs them).
    record_for: Callable[[str], FailureRecord | None] | None = None
    _exchanges: dict[str, bool] = field(default_factory=dict)

    def selected(self, message: DeadLetter) -> bool:
        record = None
        if self.selection.needs_records and self.record_for is not None:
            record = self.record_for(message.key)
        return self.selection.matches(message, record)

    def exchange_ok(self, exchange: str) -> bool:
        if exchange not in self._exchanges:
            self._exchanges[exchange] = exchange_exists(self.conn, exchange)
        return self._exchanges[exchange]

    def __call__(self, message: DeadLetter) -> Decision:
        if not self.selected(message):
            return None
        if (why := message_refusal(message)) is not None:
            return Keep(f"not replayed: {why}")
        if parks(message, self.max_replays, self.force):
            body, props = message.copy_as_is()
            return Publish("", PARKED_QUEUE_NAME, body, props, "parked", message.raw_properties)
        target = target_of(message, self.to_queue)
        if target is None:
            return Keep("no x-death header says where it was going: use --to QUEUE")
        if (why := target_refusal(target)) is not None:
            where = "--to" if self.to_queue else "its x-death"
            return Keep(f"not replayed: {where} says {why} (replays go only to {allowed_queues()})")
        if not self.exchange_ok(target.exchange):
            return Keep(f"exchange {target.exchange!r} does not exist")
        body, props = message.copy_for_replay()
        raw = message.raw_for_replay()
        return Publish(target.exchange, target.routing_key, body, props, target.label, raw)


@dataclass
class Plan:
    """What a replay would do, without doing it."""

    counts: Counter[str] = field(default_factory=Counter)
    missing: dict[str, int] = field(default_factory=dict)
    parked: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    no_target: list[str] = field(default_factory=list)
    #: Messages that would be kept, and why (a target that is not a work queue, a CC header).
    refused: dict[str, str] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "messages": len(self.ids),
            "targets": dict(self.counts),
            "missing_targets": self.missing,
            "parked": self.parked,
            "expired": self.expired,
            "no_target": self.no_target,
            "refused": self.refused,
            "ids": self.ids,
        }


def plan(messages: list[DeadLetter], policy: ReplayPolicy, now: datetime | None = None) -> Plan:
    """Counts per target, targets that do not exist, messages parked, and Celery ``expires``
    already passed (a worker would discard those unrun)."""
    now = now or datetime.now(UTC)
    result = Plan()
    known: dict[Target, bool] = {}
    for message in messages:
        if not policy.selected(message):
            continue
        result.ids.append(message.id)
        if message.expires is not None and message.expires < now:
            result.expired.append(message.id)
        if (why := message_refusal(message)) is not None:
            result.refused[message.id] = why
            continue
        if parks(message, policy.max_replays, policy.force):
            result.parked.append(message.id)
            result.counts["parked"] += 1
            continue
        target = target_of(message, policy.to_queue)
        if target is None:
            result.no_target.append(message.id)
            continue
        if (why := target_refusal(target)) is not None:
            result.refused[message.id] = why
            continue
        result.counts[target.label] += 1
        if target not in known:
            known[target] = (
                queue_size(policy.conn, target.routing_key) is not None
                if target.exchange == ""
                else policy.exchange_ok(target.exchange)
            )
        if not known[target]:
            result.missing[target.label] = result.missing.get(target.label, 0) + 1
    return result
