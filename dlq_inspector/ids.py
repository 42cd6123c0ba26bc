"""Stable ids for dead letters: the same message has the same id in every run and every listing.

An id is a digest of who the message is (its Celery task id, or a digest of its body: the failure
records' key) and of its first death (queue, reason, time). RabbitMQ never rewrites the first
death's entry (a second death in the same queue for the same reason only bumps ``count``), and
replays copy headers as they are, so neither browsing, replaying nor new arrivals change an id.
Exact duplicates (an at-least-once copy) share an id: they are the same message.
"""

from __future__ import annotations

import hashlib

from dlq_inspector.death import Death

ID_LENGTH = 12


def message_id(key: str, first_death: Death | None) -> str:
    """12 hex digits: short enough to type, 48 bits so a DLQ of millions does not collide."""
    if first_death is None:
        death = "no-death"
    else:
        when = int(first_death.time.timestamp()) if first_death.time else 0
        death = f"{first_death.queue}\0{first_death.reason}\0{when}"
    return hashlib.sha256(f"{key}\0{death}".encode()).hexdigest()[:ID_LENGTH]


def looks_like_id(text: str) -> bool:
    return len(text) == ID_LENGTH and all(c in "0123456789abcdef" for c in text)
