"""The job as every chunked task first reads it: still in chunked mode, or nothing to do."""

from __future__ import annotations

import logging

from core.job_model import Manifest, Rendition
from core.manifest import JobStore
from worker.task_support import load_job

logger = logging.getLogger(__name__)


def chunked_manifest(jobs: JobStore, job_id: str) -> Manifest | None:
    """The job, while it is in chunked mode. None when it is not: a job whose source could not be
    chunked as planned went per rung after its first chunk tasks were published, and those then
    have nothing left to do, which is no failure (nor is a stray chunk message of a per-rung job).
    """
    manifest = load_job(jobs, job_id)
    if manifest.mode != "chunked" or manifest.chunks is None:
        logger.info("job %s is not (or no longer) in chunked mode: nothing to do here", job_id)
        return None
    return manifest


def chunk_rungs(manifest: Manifest) -> list[Rendition]:
    """The rungs the chunks encode (and joins join): all but those encoded whole."""
    assert manifest.chunks is not None
    return [r for r in manifest.renditions if r.name not in manifest.chunks.whole_rungs]
