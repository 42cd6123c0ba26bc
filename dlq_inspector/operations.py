"""The DLQ operations as a library: select, show, replay, purge, export.

The ``encodeq dlq`` commands (cli.py) and the dashboard's DLQ panel (uploader/web/routes/dlq.py)
both call these; neither repeats a sequence. Nothing here prints or exits: operations return
results and raise ``MessagesNotFound`` when ids that were asked for are gone. Import, which reads a
file rather than a queue, is in importing.py; the history is audit.py's ``history``.

An ``Inspector`` is one broker connection on one inspected queue (``inspect_queue``): a purge
looks, asks, then acts on the same connection. The mechanisms are elsewhere, one per module:
peeking (browse.py), the one-pass mover (stream.py), the replay rule (replay.py), purging
(purge.py), the export file (export.py), the audit trail (audit.py).
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config.settings import Settings, get_settings
from config.topology import DEAD_LETTER_QUEUE_NAME, PARKED_QUEUE_NAME
from core.failures import FailureRecord, load_failure
from core.storage import Storage
from dlq_inspector import audit
from dlq_inspector.broker import connect
from dlq_inspector.browse import peek
from dlq_inspector.describe import describe
from dlq_inspector.explain import Row, load_records, row
from dlq_inspector.export import ExportWriter, write_export
from dlq_inspector.filters import Selection
from dlq_inspector.ids import looks_like_id
from dlq_inspector.message import DeadLetter
from dlq_inspector.purge import purge as purge_pass
from dlq_inspector.replay import Plan, ReplayPolicy, plan
from dlq_inspector.stream import Mover, Outcome

#: The queues the inspector reads, moves out of and imports into. Not the work queues: holding a
#: quorum queue's deliveries counts against their delivery limit, and importing there would
#: skip the DLQ's checks.
INSPECTED_QUEUES = (DEAD_LETTER_QUEUE_NAME, PARKED_QUEUE_NAME)
#: The private subfolder purges export to (message bodies and headers: private data).
EXPORT_FOLDER = "dlq-exports"

Progress = Callable[[int, int], None]


class MessagesNotFound(LookupError):
    """Ids that were asked for are not in the queue (replayed or purged since they were listed)."""

    def __init__(self, ids: list[str], queue: str) -> None:
        super().__init__(f"no message {', '.join(ids)} in {queue} (replayed or purged since?)")
        self.ids, self.queue = ids, queue


@dataclass
class Selected:
    """The chosen messages, in queue order, and the failure records of those that have one."""

    messages: list[DeadLetter]
    records: dict[str, FailureRecord]

    def record(self, message: DeadLetter) -> FailureRecord | None:
        return self.records.get(message.key)

    def rows(self) -> list[Row]:
        return [row(m, self.record(m)) for m in self.messages]


@dataclass
class PurgeResult:
    outcome: Outcome
    #: Where every purged message was written first (None: ``--no-export``).
    export: Path | None

    def as_json(self) -> dict[str, Any]:
        return {**self.outcome.as_json(), "export": str(self.export) if self.export else None}


def select(messages: list[DeadLetter], chosen: Selection, storage: Storage) -> Selected:
    """The messages ``chosen`` matches, records joined (loaded first only to filter by them)."""
    if chosen.needs_records:
        records = load_records(messages, storage)
        picked = [m for m in messages if chosen.matches(m, records.get(m.key))]
        return Selected(picked, records)
    picked = [m for m in messages if chosen.matches(m)]
    return Selected(picked, load_records(picked, storage))


def new_export_path(settings: Settings, tag: str | None = None) -> Path:
    """A new file name in the user's private folder (0700): exports hold message bodies."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = settings.private_dir(EXPORT_FOLDER)
    return folder / f"dlq-purge-{stamp}-{tag or uuid.uuid4().hex[:8]}.jsonl"


@contextmanager
def inspect_queue(
    queue: str = DEAD_LETTER_QUEUE_NAME,
    storage: Storage | None = None,
    settings: Settings | None = None,
) -> Iterator[Inspector]:
    """An ``Inspector`` on ``queue`` over a new broker connection, closed on exit."""
    settings = settings or get_settings()
    with connect() as conn:
        yield Inspector(conn, queue, storage or Storage(settings), settings)


class Inspector:
    """The operations on one inspected queue, over one connection."""

    def __init__(self, conn: Any, queue: str, storage: Storage, settings: Settings) -> None:
        self.conn, self.queue, self.storage, self.settings = conn, queue, storage, settings

    # --- looking (changes nothing) -------------------------------------------------------------
    def select(self, chosen: Selection) -> Selected:
        """Every message ``chosen`` matches; ``MessagesNotFound`` when a chosen id is gone."""
        selected = select(peek(self.conn, self.queue), chosen, self.storage)
        self._require(chosen.ids, selected.messages)
        return selected

    def export(self, chosen: Selection, file: Path) -> list[DeadLetter]:
        """Write the chosen messages to ``file``, changing nothing (an id that is gone is no
        error: the file holds what is there)."""
        picked = select(peek(self.conn, self.queue), chosen, self.storage).messages
        write_export(file, picked)
        return picked

    def copies(self, message_id: str) -> list[DeadLetter]:
        """Every copy of one message (exact duplicates share an id)."""
        found = []
        if looks_like_id(message_id):
            found = [m for m in peek(self.conn, self.queue) if m.id == message_id]
        if not found:
            raise MessagesNotFound([message_id], self.queue)
        return found

    def show(self, message_id: str) -> dict[str, Any]:
        """``describe``'s document for one message, with how many copies of it there are."""
        found = self.copies(message_id)
        record = load_failure(self.storage, found[0].key)
        return {**describe(found[0], record, self.storage), "copies": len(found)}

    # --- replay --------------------------------------------------------------------------------
    def policy(self, chosen: Selection, to: str | None = None, force: bool = False) -> ReplayPolicy:
        cache: dict[str, FailureRecord | None] = {}

        def record_for(key: str) -> FailureRecord | None:
            if key not in cache:
                cache[key] = load_failure(self.storage, key)
            return cache[key]

        return ReplayPolicy(
            self.conn,
            chosen,
            self.settings.dlq_max_replays,
            to_queue=to,
            force=force,
            record_for=record_for,
        )

    def replay_plan(self, chosen: Selection, to: str | None = None, force: bool = False) -> Plan:
        """What ``replay`` would do (``--dry-run``), changing nothing."""
        messages = peek(self.conn, self.queue)
        self._require(chosen.ids, messages)
        return plan(messages, self.policy(chosen, to, force))

    def replay(
        self,
        chosen: Selection,
        *,
        to: str | None = None,
        force: bool = False,
        rate: float | None = None,
        stop: threading.Event | None = None,
        on_progress: Progress | None = None,
        via: str | None = None,
        audit_refused: bool = True,
    ) -> Outcome:
        """Send the chosen messages where the replay rule (replay.py) says, in one pass, and
        audit it. ``audit_refused``: audit a replay that moved nothing but kept some (the CLI
        does; the dashboard audits only replays that moved something)."""
        if chosen.ids:
            self._require(chosen.ids, peek(self.conn, self.queue))
        policy = self.policy(chosen, to, force)
        mover = Mover(self.conn, self.queue, policy, rate=rate, stop=stop, on_progress=on_progress)
        outcome = mover.run()
        if outcome.total or (audit_refused and outcome.failed):
            audit.record(
                "replay",
                outcome.ids,
                dict(outcome.counts),
                self.storage,
                queue=self.queue,
                forced=force,
                failed=outcome.as_json()["failed"],
                interrupted=outcome.interrupted,
                **_via(via),
            )
        return outcome

    # --- purge ---------------------------------------------------------------------------------
    def purge(
        self,
        selected: Selected,
        export: Path | None,
        *,
        new_file: bool = False,
        stop: threading.Event | None = None,
        on_progress: Progress | None = None,
        via: str | None = None,
    ) -> PurgeResult:
        """Delete exactly the ``selected`` messages (as many copies as were selected), each written
        to ``export`` first when given (``new_file``: the name must not exist yet); audited."""
        writer = ExportWriter(export, exclusive=new_file) if export is not None else None
        budget = Counter(m.id for m in selected.messages)
        try:
            outcome = purge_pass(self.conn, self.queue, budget, writer, stop, on_progress)
        finally:
            if writer is not None:
                writer.close()
        result = PurgeResult(outcome, export)
        if outcome.total:
            audit.record(
                "purge",
                outcome.ids,
                None,
                self.storage,
                queue=self.queue,
                export=str(export) if export else None,
                interrupted=outcome.interrupted,
                **_via(via),
            )
        return result

    def _require(self, ids: set[str], messages: list[DeadLetter]) -> None:
        present = {m.id for m in messages}
        gone = sorted(i for i in ids if i not in present)
        if gone:
            raise MessagesNotFound(gone, self.queue)


def _via(via: str | None) -> dict[str, str]:
    """The audit detail naming the front end, when it is not the CLI."""
    return {"via": via} if via else {}
