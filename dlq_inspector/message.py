"""One dead-lettered message as the broker gave it, and what can be read off it without storage.

The raw parts (body bytes, AMQP properties, headers) are kept untouched: replay and export copy
them as they are. Everything else (task, job, deaths, replay count) is derived, read-only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from config.topology import REPLAY_COUNT_HEADER
from core.failures import message_key
from dlq_inspector.death import Death, as_utc
from dlq_inspector.framing import add_int_header
from dlq_inspector.ids import message_id

#: The AMQP basic properties, in wire order; ``application_headers`` is kept apart as headers.
PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)


@dataclass
class DeadLetter:
    """A message from the DLQ (or an export file): raw parts plus derived views."""

    body: bytes
    properties: dict[str, Any]
    headers: dict[str, Any]
    delivery_tag: int | None = None
    #: Set on a copy fetched from the broker: True once it was delivered and returned before.
    redelivered: bool = False
    #: The properties exactly as they arrived (flags + property list), when the reader kept them.
    raw_properties: bytes | None = field(default=None, repr=False)
    _decoded: Any = field(default=None, repr=False)

    @classmethod
    def from_amqp(cls, message: Any, raw_properties: bytes | None = None) -> DeadLetter:
        props = dict(message.properties)
        headers = props.pop("application_headers", None) or {}
        info = message.delivery_info or {}
        body = message.body
        if not isinstance(body, bytes):  # a channel with auto_decode on: undo it
            body = str(body).encode(props.get("content_encoding") or "utf-8")
        return cls(
            body=body,
            properties={k: props[k] for k in PROPERTY_NAMES if props.get(k) is not None},
            headers=dict(headers),
            delivery_tag=info.get("delivery_tag"),
            redelivered=bool(info.get("redelivered")),
            raw_properties=raw_properties,
        )

    # --- identity ------------------------------------------------------------------------------
    @cached_property
    def key(self) -> str:
        """The failure records' key: the Celery task id, or a digest of the body."""
        return message_key(self.headers, self.body)

    @cached_property
    def id(self) -> str:
        return message_id(self.key, self.first_death)

    # --- deaths --------------------------------------------------------------------------------
    @cached_property
    def deaths(self) -> list[Death]:
        """Every ``x-death`` entry, most recent first (RabbitMQ's order)."""
        raw = self.headers.get("x-death")
        if not isinstance(raw, list):
            return []
        return [Death.from_header(e) for e in raw if isinstance(e, dict)]

    @property
    def last_death(self) -> Death | None:
        """The death that put it where it is now."""
        return self.deaths[0] if self.deaths else None

    @property
    def first_death(self) -> Death | None:
        """Its first death ever (``x-first-death-*``); RabbitMQ never changes its time."""
        if not self.deaths:
            return None
        queue = self.headers.get("x-first-death-queue")
        reason = self.headers.get("x-first-death-reason")
        for death in self.deaths:
            if death.queue == queue and death.reason == reason:
                return death
        return self.deaths[-1]

    @property
    def reason(self) -> str:
        return self.last_death.reason if self.last_death else "unknown"

    @property
    def died_in(self) -> str:
        return self.last_death.queue if self.last_death else ""

    @property
    def died_at(self) -> datetime | None:
        return self.last_death.time if self.last_death else None

    @property
    def replay_count(self) -> int:
        value = self.headers.get(REPLAY_COUNT_HEADER, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    # --- the Celery message --------------------------------------------------------------------
    @property
    def task(self) -> str | None:
        task = self.headers.get("task")
        return task if isinstance(task, str) else None

    def decoded(self) -> Any:
        """The body as JSON (Celery protocol 2: ``[args, kwargs, embed]``), or an error string."""
        if self._decoded is None:
            try:
                self._decoded = ("ok", json.loads(self.body.decode("utf-8")))
            except (UnicodeDecodeError, ValueError) as exc:
                self._decoded = ("error", f"body does not decode as JSON: {exc}")
        return self._decoded

    @property
    def decode_error(self) -> str | None:
        status, value = self.decoded()
        return value if status == "error" else None

    @property
    def args(self) -> list[Any] | None:
        status, value = self.decoded()
        if status == "ok" and isinstance(value, list) and value and isinstance(value[0], list):
            return value[0]
        return None

    @property
    def kwargs(self) -> dict[str, Any] | None:
        status, value = self.decoded()
        if status == "ok" and isinstance(value, list) and len(value) > 1:
            return value[1] if isinstance(value[1], dict) else None
        return None

    @property
    def job_id(self) -> str | None:
        args = self.args or []
        if args and isinstance(args[0], str):
            return args[0]
        job = (self.kwargs or {}).get("job_id")
        return job if isinstance(job, str) else None

    @property
    def expires(self) -> datetime | None:
        """Celery's ``expires`` header: a worker discards the task after this time."""
        value = self.headers.get("expires")
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                return None
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        return as_utc(value)

    def celery_headers(self) -> dict[str, Any]:
        """The headers Celery wrote (everything that is not the broker's or ours)."""
        return {
            k: v
            for k, v in self.headers.items()
            if not k.startswith("x-") and k != REPLAY_COUNT_HEADER
        }

    def copy_for_replay(self) -> tuple[bytes, dict[str, Any]]:
        """Body and properties byte for byte, the replay count one higher: what gets published."""
        headers = dict(self.headers)
        headers[REPLAY_COUNT_HEADER] = self.replay_count + 1
        return self.body, {**self.properties, "application_headers": headers}

    def raw_for_replay(self) -> bytes | None:
        """The raw properties with the replay count added, when it is a first replay (the header
        is not there yet to be replaced); None otherwise (then ``copy_for_replay`` is used)."""
        if self.raw_properties is None or REPLAY_COUNT_HEADER in self.headers:
            return None
        return add_int_header(self.raw_properties, REPLAY_COUNT_HEADER, 1)

    def copy_as_is(self) -> tuple[bytes, dict[str, Any]]:
        return self.body, {**self.properties, "application_headers": dict(self.headers)}
