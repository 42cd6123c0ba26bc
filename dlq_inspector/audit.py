"""The audit trail: every replay, purge and import, kept in object storage so it outlives hosts.

One JSON object per action under ``audit/`` in the ``failures`` bucket (next to the records the
inspector reads; no failure record key starts with ``audit/``). Keys start with the UTC time, so
listing them is reading the history in order, and two operators never write the same key.
"""

from __future__ import annotations

import getpass
import socket
import uuid
from datetime import UTC, datetime
from typing import Any

from encodeq.storage import FAILURES, Storage

PREFIX = "audit/"


def who() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no login name (a container without passwd entries)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def record(
    action: str,
    ids: list[str],
    target: dict[str, int] | str | None = None,
    storage: Storage | None = None,
    **details: Any,
) -> dict[str, Any]:
    """Write one audit entry; returns it."""
    now = datetime.now(UTC)
    entry = {
        "time": now.isoformat(timespec="milliseconds"),
        "who": who(),
        "action": action,
        "count": len(ids),
        "ids": ids,
        "target": target,
        **details,
    }
    key = f"{PREFIX}{now.strftime('%Y%m%dT%H%M%S.%f')}-{uuid.uuid4().hex[:8]}.json"
    (storage or Storage()).put_json(FAILURES, key, entry)
    return entry


def history(storage: Storage | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Audit entries, oldest first (the last ``limit`` of them)."""
    storage = storage or Storage()
    keys = sorted(storage.list_keys(FAILURES, PREFIX))
    if limit is not None:
        keys = keys[-limit:] if limit > 0 else []
    entries = [storage.get_json(FAILURES, key) for key in keys]
    return [e for e in entries if isinstance(e, dict)]
