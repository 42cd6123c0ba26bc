"""Moving messages out of a queue without ever losing one: the engine under replay and purge.

One pass over the messages ready when it starts (never more, so a message that dies again while
we replay is not picked up twice). A consumer with no prefetch limit receives them; each is
decided on in queue order: published somewhere (with publisher confirms and ``mandatory``), dropped
(purge), or kept. A source copy is acked only after the broker confirmed its new copy, and acks go
out with ``multiple=True`` up to the first delivery that must stay. Everything not acked (kept,
unconfirmed, not yet looked at) returns to the queue in its place when the channel closes: a kill
at any moment loses nothing, and duplicates at most the unacked-but-confirmed window.

A confirm alone does not mean routed: an unroutable ``mandatory`` publish is confirmed too, and
only the ``basic.return`` before it tells. A returned message is a failure and its source copy
stays.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dlq_inspector.broker import await_ready, open_channel, queue_size
from dlq_inspector.framing import PublishBuffer
from dlq_inspector.message import DeadLetter

#: Unconfirmed publishes in flight before we wait for the broker to catch up.
CONFIRM_WINDOW = 2000
#: Acks sent in one go (one ``multiple=True`` frame when nothing before them stays).
ACK_BATCH = 500
#: ... or this often, so a slow (rate-limited) replay that is killed leaves few duplicates.
ACK_EVERY_S = 0.25
#: Nothing at all from the broker for this long ends the pass (someone else took the rest).
IDLE_TIMEOUT_S = 5.0
CONFIRM_TIMEOUT_S = 30.0
PROGRESS_EVERY = 250


@dataclass(frozen=True)
class Publish:
    exchange: str
    routing_key: str
    body: bytes
    properties: dict[str, Any]
    #: How the outcome is counted and audited, e.g. ``encodeq -> control`` or ``parked``.
    label: str
    #: Ready-made property bytes (the received ones, patched): sent instead of ``properties``.
    raw_properties: bytes | None = None


@dataclass(frozen=True)
class Drop:
    """Ack the message and publish nothing (purge)."""

    label: str = "purged"


@dataclass(frozen=True)
class Keep:
    """Leave it in the queue and report why (a target that does not exist, say)."""

    why: str


Decision = Publish | Drop | Keep | None  # None: not selected, left in place silently


@dataclass
class Outcome:
    scanned: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    #: (id, label) of every message moved or dropped, in queue order of their confirms.
    moved: list[tuple[str, str]] = field(default_factory=list)
    #: (id, why) of every selected message that stayed because something went wrong.
    failed: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    #: Wall time of the pass, from the first look at the queue to the last ack.
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ids(self) -> list[str]:
        return [i for i, _ in self.moved]

    def as_json(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "moved": self.total,
            "targets": dict(self.counts),
            "ids": self.ids,
            "failed": [{"id": i, "why": w} for i, w in self.failed],
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
        }


class ConfirmTimeout(RuntimeError):
    pass


class Mover:
    """One pass over ``queue``: decide on each message, act, ack only what is safe to ack."""

    def __init__(
        self,
        conn: Any,
        queue: str,
        decide: Callable[[DeadLetter], Decision],
        *,
        rate: float | None = None,
        stop: threading.Event | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        before_ack: Callable[[], None] | None = None,
        window: int = CONFIRM_WINDOW,
    ) -> None:
        self.conn, self.queue, self.decide = conn, queue, decide
        self.rate, self.window = rate, window
        self.stop = stop or threading.Event()
        self.on_progress, self.before_ack = on_progress, before_ack
        self.outcome = Outcome()
        self.expected = 0
        self._inbox: deque[tuple[Any, bytes | None]] = deque()
        self._raw_headers: deque[bytes] = deque()
        #: publish sequence number -> (delivery tag, id, label); confirms arrive in this order.
        self._pending: OrderedDict[int, tuple[int, str, str]] = OrderedDict()
        self._seq = 0
        self._published = 0
        self._returned: Counter[str] = Counter()
        self._return_text: dict[str, str] = {}
        self._ackable: list[int] = []
        #: The first delivery that stays in the queue: no multiple-ack may reach it.
        self._first_kept: int | None = None
        self._consumer: Any = None
        self._frames: PublishBuffer | None = None
        self._flushed_at = time.monotonic()
        self._publisher: Any = None

    # --- broker callbacks (run inside drain_events) ----------------------------------------
    def _on_delivery(self, message: Any) -> None:
        raw = self._raw_headers.popleft() if self._raw_headers else None
        self._inbox.append((message, raw))

    def _keep_raw_headers(self) -> Callable[[], None]:
        """Keep each delivery's content-header bytes (py-amqp parses and drops them), so a
        copy can be published with the very same property bytes. Returns the undo."""
        original = self.conn.on_inbound_frame
        channel_id = self._consumer.channel_id
        raw = self._raw_headers

        def on_frame(frame: tuple[int, int, Any]) -> Any:
            if frame[0] == 2 and frame[1] == channel_id:  # a content header: 12 bytes, props
                raw.append(bytes(frame[2][12:]))
            return original(frame)

        self.conn.on_inbound_frame = on_frame

        def undo() -> None:
            self.conn.on_inbound_frame = original

        return undo

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        returned = DeadLetter.from_amqp(message)
        self._returned[returned.id] += 1
        where = f"{exchange or '(default exchange)'} -> {routing_key}"
        self._return_text[returned.id] = f"unroutable: {where} ({exc})"

    def _on_confirm(self, seq: int, multiple: bool, ok: bool = True) -> None:
        if multiple:
            entries = []
            while self._pending and next(iter(self._pending)) <= seq:
                entries.append(self._pending.popitem(last=False)[1])
        else:
            entry = self._pending.pop(seq, None)
            entries = [entry] if entry is not None else []
        for tag, msg_id, label in entries:
            if not ok:
                self._keep(tag)
                self.outcome.failed.append((msg_id, "the broker refused the copy (nack)"))
            elif self._returned[msg_id] > 0:
                self._returned[msg_id] -= 1
                self._keep(tag)
                self.outcome.failed.append((msg_id, self._return_text.get(msg_id, "returned")))
            else:
                self._ackable.append(tag)
                self.outcome.counts[label] += 1
                self.outcome.moved.append((msg_id, label))

    def _on_nack(self, seq: int, multiple: bool) -> None:
        self._on_confirm(seq, multiple, ok=False)

    # --- the pass --------------------------------------------------------------------------
    def run(self) -> Outcome:
        began = time.perf_counter()
        try:
            return self._run()
        finally:
            self.outcome.seconds = time.perf_counter() - began

    def _run(self) -> Outcome:
        self.expected = queue_size(self.conn, self.queue) or 0
        if not self.expected:
            return self.outcome
        self._publisher = open_channel(self.conn)
        self._publisher.confirm_select()
        self._publisher.events["basic_ack"].add(self._on_confirm)
        self._publisher.events["basic_nack"].add(self._on_nack)
        self._publisher.events["basic_return"].add(self._on_return)
        self._frames = PublishBuffer(self.conn, self._publisher.channel_id)
        self._consumer = open_channel(self.conn)
        self._consumer.basic_qos(0, 0, False)
        undo_raw = self._keep_raw_headers()
        self._consumer.basic_consume(self.queue, no_ack=False, callback=self._on_delivery)
        started = time.monotonic()
        sock = self.conn.transport.sock
        previous_timeout = sock.gettimeout()
        # The socket keeps the idle timeout, so py-amqp does not reset it around every frame.
        sock.settimeout(IDLE_TIMEOUT_S)
        try:
            while not self.stop.is_set():
                if self._inbox:
                    self._handle(*self._inbox.popleft(), started)
                elif self.outcome.scanned >= self.expected:
                    break
                elif not self._drain(IDLE_TIMEOUT_S):
                    break  # nothing more arrives: another consumer took the rest
                if len(self._pending) >= self.window:
                    self._wait_confirms(self.window // 2)
                if len(self._ackable) >= ACK_BATCH or (
                    self._ackable and time.monotonic() - self._flushed_at > ACK_EVERY_S
                ):
                    self._flush()
            self.outcome.interrupted = self.stop.is_set()
            self._wait_confirms(0)
        finally:
            try:
                self._flush()
            finally:
                undo_raw()
                sock.settimeout(previous_timeout)
                # Unacked deliveries (kept, unconfirmed, unseen) go back in their places.
                self._consumer.close()
                self._publisher.close()
        await_ready(self.conn, self.queue, self.expected - self.outcome.total)
        if self.on_progress:
            self.on_progress(self.outcome.scanned, self.expected)
        return self.outcome

    def _drain(self, timeout: float) -> bool:
        if self._frames is not None:
            self._frames.flush()  # never wait on the broker for something still in our buffer
        try:
            self.conn.drain_events(timeout=timeout)
        except TimeoutError:
            return False
        return True

    def _handle(self, message: Any, raw_properties: bytes | None, started: float) -> None:
        self.outcome.scanned += 1
        tag = message.delivery_info["delivery_tag"]
        if self.on_progress and self.outcome.scanned % PROGRESS_EVERY == 0:
            self.on_progress(self.outcome.scanned, self.expected)
        if self.outcome.scanned > self.expected:
            self._keep(tag)  # arrived after we started: not ours to touch in this pass
            return
        dead = DeadLetter.from_amqp(message, raw_properties)
        decision = self.decide(dead)
        if decision is None:
            self._keep(tag)
        elif isinstance(decision, Keep):
            self._keep(tag)
            self.outcome.failed.append((dead.id, decision.why))
        elif isinstance(decision, Drop):
            self._ackable.append(tag)
            self.outcome.counts[decision.label] += 1
            self.outcome.moved.append((dead.id, decision.label))
        else:
            self._throttle(started)
            self._seq += 1
            self._pending[self._seq] = (tag, dead.id, decision.label)
            assert self._frames is not None
            self._frames.publish(
                decision.body,
                decision.properties,
                decision.exchange,
                decision.routing_key,
                decision.raw_properties,
            )
            self._published += 1

    def _throttle(self, started: float) -> None:
        """``--rate``: wait (still taking confirms) until this publish is due."""
        if not self.rate:
            return
        due = started + self._published / self.rate
        while not self.stop.is_set() and (wait := due - time.monotonic()) > 0:
            self._drain(min(wait, 0.2))

    def _wait_confirms(self, at_most: int) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        while len(self._pending) > at_most:
            if time.monotonic() > deadline:
                raise ConfirmTimeout(
                    f"the broker confirmed nothing for {CONFIRM_TIMEOUT_S:.0f}s; "
                    f"{len(self._pending)} copies unconfirmed (their originals stay in the queue)"
                )
            self._drain(IDLE_TIMEOUT_S)

    def _keep(self, tag: int) -> None:
        if self._first_kept is None or tag < self._first_kept:
            self._first_kept = tag

    def _flush(self) -> None:
        """Ack every confirmed delivery; one multiple-ack for those below the first that stays."""
        self._flushed_at = time.monotonic()
        if not self._ackable:
            return
        if self.before_ack:
            self.before_ack()
        blockers = [t for t in (self._first_kept,) if t is not None]
        if self._pending:
            blockers.append(next(iter(self._pending.values()))[0])
        if self._inbox:
            blockers.append(self._inbox[0][0].delivery_info["delivery_tag"])
        blocker = min(blockers) if blockers else None
        tags = sorted(self._ackable)
        self._ackable = []
        below = [t for t in tags if blocker is None or t < blocker]
        if below:
            self._consumer.basic_ack(below[-1], multiple=True)
        for tag in tags[len(below) :]:
            self._consumer.basic_ack(tag, multiple=False)
