"""Everything the inspector knows about one message: the document ``show`` prints (and the
dashboard's message view returns): the row, Celery's headers, args, the whole ``x-death`` history,
the raw body, where a replay would send it, its failure record and its job's state."""

from __future__ import annotations

import base64
from typing import Any

from core.failures import FailureRecord
from core.manifest import JobStore
from core.storage import Storage
from dlq_inspector.explain import row
from dlq_inspector.message import DeadLetter
from dlq_inspector.replay import target_of


def job_state(storage: Storage, job_id: str | None) -> dict[str, Any] | None:
    """The job the message worked on, as its manifest says now (None: no job id on it)."""
    if not job_id or not job_id.isalnum():
        return None
    manifest = JobStore(storage).load(job_id)
    if manifest is None:
        return {"job_id": job_id, "state": None, "note": "no manifest"}
    return {
        "job_id": job_id,
        "state": manifest.state,
        "error": manifest.error.model_dump() if manifest.error else None,
        "source": manifest.source.uri,
        "renditions": {r.name: r.state for r in manifest.renditions},
        "updated_at": manifest.updated_at,
    }


def body_view(message: DeadLetter) -> dict[str, Any]:
    """The body as text when it is UTF-8, else base64: JSON can carry either."""
    try:
        return {"text": message.body.decode("utf-8"), "bytes": len(message.body)}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(message.body).decode(), "bytes": len(message.body)}


def describe(message: DeadLetter, record: FailureRecord | None, storage: Storage) -> dict[str, Any]:
    target = target_of(message)
    return {
        **row(message, record).as_json(),
        "celery_headers": message.celery_headers(),
        "args": message.args,
        "kwargs": message.kwargs,
        "decode_error": message.decode_error,
        "x_death": [d.as_json() for d in message.deaths],
        "first_death": {
            k: message.headers.get(f"x-first-death-{k}") for k in ("queue", "reason", "exchange")
        },
        "properties": message.properties,
        "body": body_view(message),
        "replay_target": target.label if target else None,
        "failure": record.model_dump(mode="json") if record else None,
        "job": job_state(storage, message.job_id),
    }
