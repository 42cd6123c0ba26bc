"""What one task run is called on the dashboard's timeline: its kind, its label, its fields.

Shared by the pool processes' signal handlers (worker/task_events.py), which see a run start and
end, and the worker's main process (worker/failure_handling.py), which alone sees a pool process
die under its task. Both describe a run the same way, so the timeline pairs their events.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from celery import Celery, Task

from config.topology import NODE_SUFFIXES, OTHER_NODE_SUFFIX, WORK_QUEUE_KEYS
from core.events import emit

logger = logging.getLogger(__name__)

#: Task names start with this; the timeline's kind is the rest (``probe``, ``encode_chunk``...).
PREFIX = "encodeq."
#: A label is read at a glance; an odd argument (a bad message) is cut short.
MAX_LABEL = 40


def kind_of(name: str | None) -> str:
    """``encodeq.encode_chunk`` -> ``encode_chunk``."""
    name = name or "unknown"
    return name[len(PREFIX) :] if name.startswith(PREFIX) else name


def arguments(task: Task | None, args: Any, kwargs: Any) -> dict[str, Any]:
    """The run's arguments by parameter name (a message may carry either form); {} when they do
    not fit the task (such a message fails with ``bad_arguments``; its bar still shows)."""
    args = list(args) if isinstance(args, list | tuple) else []
    kwargs = dict(kwargs) if isinstance(kwargs, dict) else {}
    try:
        return dict(inspect.signature(task.run).bind_partial(*args, **kwargs).arguments)
    except (AttributeError, TypeError, ValueError):
        return {"job_id": args[0]} if args else kwargs


def label_of(kind: str, params: dict[str, Any]) -> str:
    """What the run works on, as a person names it: ``240p``, ``chunk 3``, ``join 720p``."""
    rendition, index, offer = params.get("rendition"), params.get("index"), params.get("offer")
    if kind == "encode":
        label = str(rendition)
    elif kind == "encode_chunk":
        again = isinstance(offer, int) and offer > 1  # a straggler's second offer
        label = f"chunk {index}" + (f" (offer {offer})" if again else "")
    elif kind == "join":
        label = f"join {rendition}"
    else:
        label = {"encode_audio": "audio", "watch_chunks": "watch chunks"}.get(kind, kind)
    return label[:MAX_LABEL]


def worker_hostname(node: str | None) -> str | None:
    """The worker a node belongs to (``w1@host.bulk`` -> ``w1@host``): its lane on the timeline.
    The worker's own process is a node too (the express lane), named as the worker."""
    if not node:
        return None
    for suffix in (*NODE_SUFFIXES.values(), OTHER_NODE_SUFFIX):
        if node.endswith(f".{suffix}"):
            return node[: -len(suffix) - 1]
    return node


def queue_of(delivery_info: dict[str, Any], consumed: list[str]) -> str | None:
    """The work queue the message came from: the node's one queue, else the one its routing key
    names (a retry arrives through the delay exchanges, its key prefixed by the delay bits)."""
    if len(consumed) == 1:
        return consumed[0]
    key = str(delivery_info.get("routing_key") or "")
    matches = [q for q, k in WORK_QUEUE_KEYS.items() if key == k or key.endswith(f".{k}")]
    return max(matches, key=lambda q: len(WORK_QUEUE_KEYS[q])) if matches else key or None


def run_fields(
    task: Task | None,
    name: str | None,
    task_id: str | None,
    args: Any,
    kwargs: Any,
    request: dict[str, Any],
) -> dict[str, Any]:
    """The fields both events of a run carry. ``request``: ``hostname``, ``pid``,
    ``delivery_info``, ``retries``, ``queues`` (what the node consumes)."""
    kind = kind_of(name)
    params = arguments(task, args, kwargs)
    job_id = params.get("job_id")
    delivery_info = request.get("delivery_info") or {}
    return {
        "task_id": task_id,
        "task": kind,
        "job_id": job_id if isinstance(job_id, str) else None,
        "label": label_of(kind, params),
        "worker": request.get("hostname"),
        "worker_hostname": worker_hostname(request.get("hostname")),
        "pid": request.get("pid"),
        "redelivered": bool(delivery_info.get("redelivered")),
        "retries": int(request.get("retries") or 0),
        "queue": queue_of(delivery_info, list(request.get("queues") or [])),
    }


def publish(app: Celery, routing_key: str, fields: dict[str, Any]) -> None:
    """Emit a run's event; never lets the event fail the task (or the failure handling) that
    sends it: the timeline is a view, the work is the point."""
    try:
        emit(app, routing_key, **fields)
    except Exception:
        logger.warning("could not emit %s for task %s", routing_key, fields.get("task_id"))
