"""The dashboard page and what it asks before anything else: liveness and upload limits."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from core.queue_depths import WATCHED_QUEUES
from uploader.web.state import Web

#: The page's files (``index.html``, scripts, styles), served under ``/static`` by app.py.
STATIC = resources.files("uploader.web") / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})


@router.get("/api/health")
async def health(web: Web) -> dict[str, Any]:
    return {"ok": True, "events": web.hub.connected.is_set()}


@router.get("/api/config")
async def config(web: Web) -> dict[str, Any]:
    """What the page needs to know before it uploads."""
    return {
        "max_upload_bytes": web.settings.max_upload_bytes,
        "max_queued_tasks": web.settings.max_queued_tasks,
        "queues": list(WATCHED_QUEUES),
    }
