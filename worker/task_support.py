"""What every task of a job needs: its manifest (never trusting the id it was sent), a scratch
folder, the probe's findings in the encoder's terms, and the fan-in to finalize."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from config.settings import get_settings
from encodeq.errors import PermanentError
from encodeq.manifest import JobStore, Manifest, SourceInfo, is_job_id
from encodeq.storage import Storage
from worker.app import app
from worker.probe import ProbeResult


def job_store() -> JobStore:
    return JobStore(Storage())


def load_job(jobs: JobStore, job_id: str) -> Manifest:
    """The job of a message, or a permanent error: the id is never trusted to build a key."""
    if not is_job_id(job_id):
        raise PermanentError("bad_arguments", f"not a job id: {job_id!r}")
    manifest = jobs.load_job(job_id)
    if manifest is None:
        raise PermanentError("unknown_job", f"job {job_id} has no manifest")
    return manifest


@contextmanager
def workdir(job_id: str) -> Iterator[Path]:
    base = get_settings().work_dir or None
    with tempfile.TemporaryDirectory(prefix=f"encodeq-{job_id}-", dir=base) as tmp:
        yield Path(tmp)


def probe_result(source: SourceInfo) -> ProbeResult:
    """The probe's findings, as recorded in the manifest, in the form the encoder takes."""
    return ProbeResult(
        container=source.container or "",
        duration=source.duration or 0.0,
        coded_width=source.coded_width or 0,
        coded_height=source.coded_height or 0,
        display_width=source.width or 0,
        display_height=source.height or 0,
        rotation=source.rotation,
        frame_rate=source.frame_rate or 0.0,
        video_codec=source.video_codec or "",
        has_audio=bool(source.has_audio),
    )


def maybe_finalize(jobs: JobStore, job_id: str, names: list[str], queue: str | None = None) -> None:
    """Publish finalize when every rung is done.

    Each encode (or join) writes its record before it looks at the others, so whichever finishes
    last sees every rung done. Two may both see it and both publish finalize: that is harmless.
    ``queue`` overrides the route (chunked joins use the encode queue: see config/topology.py).
    Published by name, so the modules of the two modes need not import each other.
    """
    records = [jobs.load_rendition(job_id, name) for name in names]
    if all(r is not None and r.state == "completed" for r in records):
        options = {"queue": queue} if queue else {}
        app.send_task("encodeq.finalize", args=[job_id], **options)
