"""Which messages a command acts on: ids, or the ``list`` filters, or everything."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from core.failures import FailureRecord
from dlq_inspector.message import DeadLetter

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``90``, ``30s``, ``10m``, ``2h``, ``1d``, ``1w`` -> timedelta (ValueError otherwise)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 10m, 2h, 1d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


@dataclass
class Selection:
    """Ids, filters, or all; an empty selection matches nothing (commands must say --all)."""

    ids: set[str] = field(default_factory=set)
    everything: bool = False
    task: str | None = None
    reason: str | None = None
    job: str | None = None
    error_type: str | None = None
    older_than: timedelta | None = None

    @property
    def has_filters(self) -> bool:
        return any(
            v is not None
            for v in (self.task, self.reason, self.job, self.error_type, self.older_than)
        )

    @property
    def is_empty(self) -> bool:
        return not (self.ids or self.everything or self.has_filters)

    @property
    def needs_records(self) -> bool:
        """Only the error type lives in the failure record; everything else is on the message."""
        return self.error_type is not None

    def matches(
        self, message: DeadLetter, record: FailureRecord | None = None, now: datetime | None = None
    ) -> bool:
        if self.ids:
            return message.id in self.ids
        if not (self.everything or self.has_filters):
            return False
        if self.task and not fnmatch.fnmatchcase(message.task or "", self.task):
            return False
        if self.reason and message.reason != self.reason:
            return False
        if self.job and message.job_id != self.job:
            return False
        if self.error_type:
            wanted = self.error_type.lower()
            names = {record.exc_type.lower(), record.code.lower()} if record else set()
            if wanted not in names:
                return False
        if self.older_than is not None:
            died = message.died_at
            if died is None or (now or datetime.now(UTC)) - died < self.older_than:
                return False
        return True
