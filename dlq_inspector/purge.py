"""Purging: ack exactly the messages that were selected (and exported) beforehand, nothing else.

The selection is fixed by id before anything is removed (and shown to whoever confirms it); the
pass then drops only those ids, as many copies as were selected, so a death arriving in between is
never purged unseen. With an export file, each message is written there and the file synced before
its ack is sent: a purged message is always in the export.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from dlq_inspector.export import ExportWriter
from dlq_inspector.message import DeadLetter
from dlq_inspector.stream import Decision, Drop, Mover, Outcome


def purge(
    conn: Any,
    queue: str,
    ids: Counter[str],
    writer: ExportWriter | None,
    stop: threading.Event | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Outcome:
    budget = Counter(ids)

    def decide(message: DeadLetter) -> Decision:
        if budget[message.id] <= 0:
            return None
        budget[message.id] -= 1
        if writer is not None:
            writer.write(message)
        return Drop()

    mover = Mover(
        conn,
        queue,
        decide,
        stop=stop,
        on_progress=on_progress,
        before_ack=writer.sync if writer is not None else None,
    )
    return mover.run()
