"""The dashboard's DLQ panel: list, show, replay and purge, each one call into the inspector's
operations (dlq_inspector/operations.py), the same the ``encodeq dlq`` commands run.

So the panel gets what the CLI gets: peeking without consuming, stable ids, failure records joined
by message key, replay with confirms to where the message was going, purge with an export written
first (to the server's private folder), an audit entry for each (marked ``via: http``). Calls are
serialised within the server: a peek holds every message unacked while it looks, so a replay
running at the same time would not see them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter

from config.topology import DEAD_LETTER_QUEUE_NAME
from dlq_inspector.filters import Selection
from dlq_inspector.ids import looks_like_id
from dlq_inspector.operations import Inspector, MessagesNotFound, inspect_queue, new_export_path
from uploader.web.errors import ApiError
from uploader.web.state import Web, WebState

#: Marks the panel's audit entries.
VIA = "http"

router = APIRouter()
_one_at_a_time = threading.Lock()


@contextmanager
def dead_letters(web: WebState) -> Iterator[Inspector]:
    with _one_at_a_time, inspect_queue(DEAD_LETTER_QUEUE_NAME, web.storage, web.settings) as dlq:
        yield dlq


def one(message_id: str) -> Selection:
    """The message with this id; an id of the wrong shape is not there (404) without a look."""
    if not looks_like_id(message_id):
        raise MessagesNotFound([message_id], DEAD_LETTER_QUEUE_NAME)
    return Selection(ids={message_id})


@router.get("/api/dlq")
def dlq_list(web: Web) -> dict[str, Any]:
    """Rows in queue order, with the failure record's traceback, attempts and worker."""
    with dead_letters(web) as dlq:
        selected = dlq.select(Selection(everything=True))
    rows = []
    for message, row in zip(selected.messages, selected.rows(), strict=True):
        record = selected.record(message)
        doc = row.as_json()
        doc["traceback_tail"] = record.traceback_tail if record else None
        doc["attempts"] = record.attempts if record else None
        doc["worker"] = record.worker if record else None
        rows.append(doc)
    return {"queue": DEAD_LETTER_QUEUE_NAME, "messages": rows}


@router.get("/api/dlq/{message_id}")
def dlq_show(message_id: str, web: Web) -> dict[str, Any]:
    """Everything the inspector knows about one message (``encodeq dlq show --json``)."""
    one(message_id)  # an id of the wrong shape: 404 before any connection
    with dead_letters(web) as dlq:
        return dlq.show(message_id)


@router.post("/api/dlq/{message_id}/replay")
def dlq_replay(message_id: str, web: Web) -> dict[str, Any]:
    """Send one message back where it was going (``encodeq dlq replay ID``); 409 when it stays."""
    chosen = one(message_id)
    with dead_letters(web) as dlq:
        outcome = dlq.replay(chosen, via=VIA, audit_refused=False)
    if not outcome.total:
        why = "; ".join(w for _, w in outcome.failed) or "nothing was replayed"
        raise ApiError(409, "not_replayed", why)
    return outcome.as_json()


@router.post("/api/dlq/{message_id}/purge")
def dlq_purge(message_id: str, web: Web) -> dict[str, Any]:
    """Remove one message for good (every copy), after writing it to an export file."""
    chosen = one(message_id)
    with dead_letters(web) as dlq:
        selected = dlq.select(chosen)
        export = new_export_path(web.settings, tag=message_id)
        return dlq.purge(selected, export, new_file=True, via=VIA).as_json()
