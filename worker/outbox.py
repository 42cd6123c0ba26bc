"""A local outbox for bookkeeping that must outlive an S3 outage.

Failure records and "this job failed" live in S3, and a task often dies *because* S3 is down. What
the failure handler cannot write then is kept here, one JSON file per entry in a private folder on
the worker's disk, and written by the janitor (worker/janitor.py) once S3 answers again, oldest
first, so the DLQ inspector can still say why a message died and the job's state still follows.
The outbox is per host: a host lost for good before S3 came back takes its entries with it (the
dead letter itself is safe in RabbitMQ, and its x-death still says where it died).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from config.settings import get_settings

logger = logging.getLogger(__name__)


def outbox_dir() -> Path:
    """One outbox per storage target (endpoint and bucket prefix), so an entry is only ever
    written where it was meant to go, whichever worker on the host flushes it."""
    settings = get_settings()
    target = f"{settings.s3_endpoint}|{settings.bucket_prefix}".encode()
    return settings.private_dir(f"outbox/{hashlib.sha256(target).hexdigest()[:16]}")


def spool(kind: str, document: dict[str, Any]) -> Path:
    """Keep one entry; the name sorts by time, so entries are applied in the order they came."""
    folder = outbox_dir()
    path = folder / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
    partial = folder / f".{path.name}.partial"
    partial.write_text(json.dumps({"kind": kind, "document": document}))
    os.replace(partial, path)  # a reader never sees half an entry
    return path


def pending() -> Iterator[tuple[Path, str, dict[str, Any]]]:
    for path in sorted(outbox_dir().glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # taken by another process meanwhile, or not ours
        yield path, str(entry.get("kind")), entry.get("document") or {}


def flush(handlers: dict[str, Callable[[dict[str, Any]], None]]) -> int:
    """Apply entries oldest first until one fails (S3 still down: the rest wait, in order);
    how many were applied. An entry of an unknown kind is logged and dropped."""
    applied = 0
    for path, kind, document in pending():
        handler = handlers.get(kind)
        if handler is None:
            logger.error("outbox entry %s has an unknown kind %r; dropped", path.name, kind)
        else:
            try:
                handler(document)
            except Exception as exc:
                logger.info("outbox: %s still waits (%s)", path.name, exc)
                break
        path.unlink(missing_ok=True)
        applied += 1
    return applied
