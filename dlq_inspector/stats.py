"""Grouping deaths so a thousand from one bug read as one line: task + reason + exception type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dlq_inspector.explain import Row


@dataclass
class Group:
    task: str | None
    reason: str
    exc_type: str | None
    count: int
    oldest: str | None
    newest: str | None
    example_id: str
    why: str

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def group(rows: list[Row]) -> list[Group]:
    """Groups, largest first; oldest/newest by the time each message died into the DLQ."""
    groups: dict[tuple[str | None, str, str | None], Group] = {}
    for row in rows:
        exc_type = row.exc_type or (
            row.why.split(":", 1)[0] if row.why.startswith("malformed") else None
        )
        key = (row.task, row.reason, exc_type)
        found = groups.get(key)
        if found is None:
            groups[key] = Group(
                row.task, row.reason, exc_type, 1, row.died_at, row.died_at, row.id, row.why
            )
            continue
        found.count += 1
        if row.died_at and (found.oldest is None or row.died_at < found.oldest):
            found.oldest = row.died_at
        if row.died_at and (found.newest is None or row.died_at > found.newest):
            found.newest = row.died_at
    return sorted(groups.values(), key=lambda g: (-g.count, g.task or "", g.reason))
