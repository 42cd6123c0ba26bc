"""The straggler watchdog of a chunked job (``watch_chunks``): a chunk that runs far longer than
its finished siblings is offered to a second worker, once; the first copy to finish wins."""

from __future__ import annotations

import logging
import statistics
from datetime import UTC, datetime

from celery import Task

from config.retry_policy import retry_options
from config.settings import Settings, get_settings
from core.events import emit
from core.job_model import ChunkRecord, Manifest
from core.manifest import JobStore
from core.storage import Storage
from worker.app import app
from worker.modes.chunked.chunk_tasks import chunk_publisher
from worker.modes.chunked.chunked_job import chunked_manifest

logger = logging.getLogger(__name__)


def _seconds_since(iso: str | None) -> float:
    if not iso:
        return 0.0
    return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()


@app.task(name="encodeq.watch_chunks", bind=True, **retry_options())
def watch_chunks(self: Task, job_id: str, offered: list[int]) -> None:
    """Every few seconds while chunks run: offer a straggler to a second worker (once each).

    A chunk is a straggler when it has run ``straggler_factor`` times the median of its finished
    siblings and at least ``straggler_min_s``. Both copies write the same keys; the first to finish
    records the chunk, the other sees that and discards its result.
    """
    settings = get_settings()
    jobs = JobStore(Storage())
    manifest = chunked_manifest(jobs, job_id)
    if manifest is None:
        return
    assert manifest.chunks is not None
    if manifest.finished:
        return
    records = [jobs.load_chunk(job_id, i) for i in range(manifest.chunks.count)]
    finished = [r.seconds or 0.0 for r in records if r is not None and r.state == "completed"]
    if len(finished) == len(records):
        return
    offered = [i for i in offered if isinstance(i, int)]
    if finished:
        median = statistics.median(finished)
        for r in records:
            if (
                r is not None
                and r.index not in offered
                and _offer_again(manifest, r, median, settings)
            ):
                offered.append(r.index)
    watch_chunks.apply_async(args=[job_id, offered], countdown=settings.straggler_check_s)


def _offer_again(
    manifest: Manifest, record: ChunkRecord, median: float, settings: Settings
) -> bool:
    """Offer the chunk to a second worker if it is a straggler; whether it was."""
    limit = max(settings.straggler_min_s, settings.straggler_factor * median)
    running = _seconds_since(record.started_at)
    if record.state != "encoding" or running <= limit:
        return False
    chunk_publisher(manifest, offer=record.offers + 1)(record.index)
    emit(
        app,
        "chunk.straggler",
        job_id=manifest.job_id,
        chunk=record.index,
        worker=record.worker,
        running_s=round(running, 1),
        median_s=round(median, 2),
    )
    logger.warning(
        "job %s chunk %d: straggler on %s after %.1fs, offered again",
        manifest.job_id,
        record.index,
        record.worker,
        running,
    )
    return True
