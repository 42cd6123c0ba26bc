"""The audit trail: every replay, purge and import, kept in object storage so it outlives hosts.

One JSON object per action in a bucket of its own (``audit``), apart from the failure records that
workers write: a worker (or a message steering a worker) has nothing to write there, and in
compose its storage user may not. Keys start with the UTC time, so listing them is reading the
history in order, and two operators never write the same key.
"""

from __future__ import annotations

import getpass
import re
import socket
from datetime import UTC, datetime
from typing import Any

from core.layout import AUDIT, AUDIT_KEY_PATTERN, audit_key
from core.storage import Storage

#: Every action the inspector audits.
ACTIONS = frozenset({"replay", "purge", "import"})
#: The only key shape ``record`` writes; anything else in the bucket is not ours to show.
KEY_PATTERN = re.compile(AUDIT_KEY_PATTERN)


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
    (storage or Storage()).put_json(AUDIT, audit_key(now), entry)
    return entry


def _is_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("action") in ACTIONS
        and isinstance(entry.get("time"), str)
        and isinstance(entry.get("who"), str)
        and isinstance(entry.get("ids"), list)
    )


def history(storage: Storage | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Audit entries, oldest first (the last ``limit`` of them)."""
    storage = storage or Storage()
    keys = sorted(k for k in storage.list_keys(AUDIT) if KEY_PATTERN.fullmatch(k))
    if limit is not None:
        keys = keys[-limit:] if limit > 0 else []
    entries = [storage.get_json(AUDIT, key) for key in keys]
    return [e for e in entries if _is_entry(e)]
