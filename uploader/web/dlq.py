"""The dashboard's DLQ panel: the inspector's own code (dlq_inspector/) behind three calls.

Listing, showing, replaying and purging are the inspector's: peek without consuming, stable ids,
records joined by message key, replay with confirms to where the message was going, purge with an
export written first, and an audit entry for each action. This module only picks one message by
id and turns the outcome into JSON. Calls are serialised within the server: a peek holds every
message unacked while it looks, so a replay running at the same time would not see them.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config.settings import Settings
from config.topology import DEAD_LETTER_QUEUE_NAME
from core.failures import FailureRecord, load_failure
from core.storage import Storage
from dlq_inspector import audit
from dlq_inspector.broker import connect
from dlq_inspector.browse import peek
from dlq_inspector.cli import describe, outcome_json
from dlq_inspector.explain import load_records, row
from dlq_inspector.export import ExportWriter
from dlq_inspector.filters import Selection
from dlq_inspector.ids import looks_like_id
from dlq_inspector.purge import purge as purge_messages
from dlq_inspector.replay import ReplayPolicy
from dlq_inspector.stream import Mover

_lock = threading.Lock()


class DeadLetterNotFound(Exception):
    """No message with that id is in the DLQ (replayed or purged since it was listed?)."""


#: The private subfolder purges export to (message bodies and headers: private data).
EXPORT_FOLDER = "dlq-exports"


def export_dir(settings: Settings) -> Path:
    """Where a purge writes its export before anything is removed: the per-user private folder
    (0700), never a shared temp folder."""
    return settings.private_dir(EXPORT_FOLDER)


def private_file(path: Path) -> Path:
    """Create ``path`` empty, 0600 and exclusively; a writer opening it later keeps the mode."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    return path


def list_messages(storage: Storage) -> list[dict[str, Any]]:
    """Rows in queue order, with the failure record's exception when it has one."""
    with _lock, connect() as conn:
        messages = peek(conn, DEAD_LETTER_QUEUE_NAME)
    records = load_records(messages, storage)
    rows = []
    for message in messages:
        record = records.get(message.key)
        doc = row(message, record).as_json()
        doc["traceback_tail"] = record.traceback_tail if record else None
        doc["attempts"] = record.attempts if record else None
        doc["worker"] = record.worker if record else None
        rows.append(doc)
    return rows


def show(storage: Storage, message_id: str) -> dict[str, Any]:
    """Everything the inspector knows about one message (``encodeq dlq show --json``)."""
    _check(message_id)
    with _lock, connect() as conn:
        found = [m for m in peek(conn, DEAD_LETTER_QUEUE_NAME) if m.id == message_id]
    if not found:
        raise DeadLetterNotFound(message_id)
    return {**describe(found[0], load_failure(storage, found[0].key)), "copies": len(found)}


def replay(storage: Storage, settings: Settings, message_id: str) -> dict[str, Any]:
    """Send one message back where it was going (``encodeq dlq replay ID``)."""
    _check(message_id)
    cache: dict[str, FailureRecord | None] = {}

    def record_for(key: str) -> FailureRecord | None:
        if key not in cache:
            cache[key] = load_failure(storage, key)
        return cache[key]

    with _lock, connect() as conn:
        if not any(m.id == message_id for m in peek(conn, DEAD_LETTER_QUEUE_NAME)):
            raise DeadLetterNotFound(message_id)
        policy = ReplayPolicy(
            conn,
            Selection(ids={message_id}),
            settings.dlq_max_replays,
            record_for=record_for,
        )
        outcome = Mover(conn, DEAD_LETTER_QUEUE_NAME, policy).run()
    doc = outcome_json(outcome)
    if outcome.total:
        audit.record(
            "replay",
            doc["ids"],
            dict(outcome.counts),
            storage,
            queue=DEAD_LETTER_QUEUE_NAME,
            forced=False,
            failed=doc["failed"],
            interrupted=outcome.interrupted,
            via="http",
        )
    return doc


def purge(storage: Storage, settings: Settings, message_id: str) -> dict[str, Any]:
    """Remove one message for good, after writing it to an export file."""
    _check(message_id)
    with _lock, connect() as conn:
        picked = [m for m in peek(conn, DEAD_LETTER_QUEUE_NAME) if m.id == message_id]
        if not picked:
            raise DeadLetterNotFound(message_id)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"dlq-purge-{stamp}-{message_id}.jsonl"
        writer = ExportWriter(private_file(export_dir(settings) / name))
        try:
            outcome = purge_messages(
                conn, DEAD_LETTER_QUEUE_NAME, Counter(m.id for m in picked), writer
            )
        finally:
            writer.close()
    doc = {**outcome_json(outcome), "export": str(writer.path)}
    if outcome.total:
        audit.record(
            "purge",
            doc["ids"],
            None,
            storage,
            queue=DEAD_LETTER_QUEUE_NAME,
            export=doc["export"],
            interrupted=outcome.interrupted,
            via="http",
        )
    return doc


def _check(message_id: str) -> None:
    if not looks_like_id(message_id):
        raise DeadLetterNotFound(message_id)
