"""Emit lifecycle events from the worker (and the uploader) through Celery's producer pool."""

from __future__ import annotations

from typing import Any

from core.events import publish_event
from worker.app import app


def emit(routing_key: str, **fields: Any) -> None:
    with app.producer_or_acquire() as producer:
        publish_event(producer, routing_key, **fields)
