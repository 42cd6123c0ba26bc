"""``POST /api/uploads``: one file, streamed to a private temporary file (intake.py), submitted
as a job the way ``encodeq upload`` submits one; 202 with the queued job.

A file that is not a video is accepted like any other upload: whether bytes are a video is
ffprobe's call on a worker, under its limits, not the web server's; the job then fails with the
probe's error code (``not_a_video``...) and its task is dead-lettered, where the DLQ panel shows it.
Refused at once: no file, an empty file, a body that is not multipart (400/415), and anything
over ``max_upload_bytes`` (413, while streaming).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from core.job_model import Manifest
from uploader.web.intake import UploadError, drain, receive, remove, submit_received
from uploader.web.job_view import job_document, job_links
from uploader.web.state import Web, WebState

router = APIRouter()


@router.post("/api/uploads", status_code=202)
async def upload(request: Request, web: Web, priority: str = "normal") -> JSONResponse:
    """multipart/form-data with one file in field ``file``; 202 with the queued job.
    ``?priority=high``: its encodes overtake normal ones (worker/window.py)."""
    try:
        manifest = await _submit(request, web, priority)
    except Exception as exc:
        web.metrics.upload(False, exc.code if isinstance(exc, UploadError) else "error")
        raise
    web.metrics.upload(True)
    return JSONResponse(
        {**job_document(web, manifest), "links": job_links(web, manifest)},
        status_code=202,
        headers={"Location": f"/api/jobs/{manifest.job_id}"},
    )


async def _submit(request: Request, web: WebState, priority: str) -> Manifest:
    """Receive the file and submit it as a job; UploadError when refused."""
    if priority not in ("normal", "high"):
        await drain(request.stream())  # the client reads the answer, not a reset connection
        raise UploadError(400, "bad_priority", f"priority must be high or normal, not {priority!r}")
    received = await receive(
        request.headers.get("content-type"),
        request.headers.get("content-length"),
        request.stream(),
        web.settings,
    )
    try:
        return await run_in_threadpool(
            submit_received,
            received,
            web.storage,
            priority,  # type: ignore[arg-type]
        )
    finally:
        remove(received)
