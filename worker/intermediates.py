"""A job's intermediate objects: what chunked mode stores under ``uploads/<job>/chunks/`` (the cut
chunks, each rung's encoded chunks, the audio) on the way to its renditions.

They belong to the job, not to a mode: a chunked job that went per rung midway has some too. They
go when the job completes (worker/finalize.py) or when a failed job's replay window has passed
(worker/janitor.py); until then a replayed message finds what it needs.
"""

from __future__ import annotations

import logging

from core.layout import UPLOADS, chunks_prefix
from core.storage import Storage

logger = logging.getLogger(__name__)


def remove_intermediates(storage: Storage, job_id: str) -> int:
    """Delete the job's intermediate objects; how many there were."""
    return storage.remove_prefix(UPLOADS, chunks_prefix(job_id))


def remove_intermediates_quietly(storage: Storage, job_id: str) -> None:
    """``remove_intermediates``, best effort: a leftover costs storage, never correctness, so a
    failure here must not fail the job that is being completed."""
    try:
        removed = remove_intermediates(storage, job_id)
        logger.info("job %s: removed %d intermediate chunk objects", job_id, removed)
    except Exception:
        logger.warning("job %s: could not remove its chunk objects", job_id, exc_info=True)
