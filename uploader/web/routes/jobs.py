"""``/api/jobs``: the jobs as their manifests say (newest first), with live progress; cancel."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter

from core.job_model import Manifest, is_job_id
from uploader.cancel import CancelError, cancel
from uploader.web.errors import ApiError
from uploader.web.job_view import job_document, job_links
from uploader.web.state import Web, WebState

#: Jobs a listing returns at most (newest first).
MAX_JOBS = 200
#: Parallel manifest reads for a listing.
READ_THREADS = 8

router = APIRouter()


def load_job(web: WebState, job_id: str) -> Manifest:
    if not is_job_id(job_id):
        raise ApiError(400, "invalid_job_id", "a job id is 32 lowercase hex digits")
    manifest = web.jobs.load(job_id)
    if manifest is None:
        raise ApiError(404, "unknown_job", f"no job {job_id}")
    return manifest


@router.get("/api/jobs")
def list_jobs(web: Web, limit: int = 50) -> dict[str, Any]:
    """Newest first; each with its renditions' latest records."""
    limit = max(1, min(limit, MAX_JOBS))
    jobs = web.jobs
    with ThreadPoolExecutor(READ_THREADS) as pool:
        # Job documents first (one read each) to find the newest; renditions only for those.
        heads = [m for m in pool.map(jobs.load_job, jobs.job_ids()) if m is not None]
        heads.sort(key=lambda m: m.created_at, reverse=True)
        newest = [m.job_id for m in heads[:limit]]
        manifests = [m for m in pool.map(jobs.load, newest) if m is not None]
    return {"jobs": [job_document(web, m) for m in manifests], "total": len(heads)}


@router.get("/api/jobs/{job_id}")
def get_job(job_id: str, web: Web) -> dict[str, Any]:
    manifest = load_job(web, job_id)
    return {**job_document(web, manifest), "links": job_links(web, manifest)}


@router.post("/api/jobs/{job_id}/cancel")
def cancel_job(job_id: str, web: Web) -> dict[str, Any]:
    """Cancel a running or queued job (uploader/cancel.py); 409 when it already finished."""
    load_job(web, job_id)  # 400 / 404 as for a read
    try:
        manifest = cancel(job_id, web.storage, by="web")
    except CancelError as exc:
        raise ApiError(404 if exc.code == "unknown_job" else 409, exc.code, exc.message) from None
    return job_document(web, web.jobs.load(job_id) or manifest)
