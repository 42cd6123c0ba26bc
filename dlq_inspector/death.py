"""One ``x-death`` entry: where a message died, why, how often, and where it was being sent.

Its own module because both the message (its deaths) and its id (a digest of the first death)
read it: neither has to import the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def as_utc(value: Any) -> datetime | None:
    """AMQP timestamps arrive as naive UTC datetimes; make them aware (None if not one)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


@dataclass(frozen=True)
class Death:
    """One ``x-death`` entry: the queue a message died in, why, how often, where it was sent."""

    queue: str
    reason: str
    count: int
    time: datetime | None
    exchange: str
    routing_keys: list[str]

    @classmethod
    def from_header(cls, entry: dict[str, Any]) -> Death:
        keys = entry.get("routing-keys") or []
        return cls(
            queue=str(entry.get("queue", "")),
            reason=str(entry.get("reason", "")),
            count=int(entry.get("count", 1) or 1),
            time=as_utc(entry.get("time")),
            exchange=str(entry.get("exchange", "")),
            routing_keys=[str(k) for k in keys] if isinstance(keys, list) else [],
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "reason": self.reason,
            "count": self.count,
            "time": self.time.isoformat() if self.time else None,
            "exchange": self.exchange,
            "routing_keys": self.routing_keys,
        }
