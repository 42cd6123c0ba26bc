"""``/api/fleet`` and ``/api/chaos``: scale the workers and break things on purpose, from the page.

Only under ``encodeq up``, which hands the app its supervisor (uploader/web/fleet.py); under
``encodeq serve`` alone every route here answers 404 ``no_fleet``. Like every ``/api`` route they
need the token (security.py), and a fault injected here is the same one a test injects: a
SIGKILL, a cut TCP link to S3, a broker restart.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from uploader.web.errors import ApiError
from uploader.web.fleet import MAX_WORKERS, FleetControl
from uploader.web.state import Web, WebState

#: The longest S3 cut a button may ask for.
MAX_CUT_S = 300

router = APIRouter()


class ScaleRequest(BaseModel):
    workers: int = Field(ge=0, le=MAX_WORKERS)


class CutRequest(BaseModel):
    seconds: float = Field(gt=0, le=MAX_CUT_S)


def _fleet(web: WebState) -> FleetControl:
    if web.fleet is None:
        raise ApiError(404, "no_fleet", "this dashboard runs without encodeq up: no fleet here")
    return web.fleet


async def _call(web: WebState, action: str, *args: Any) -> dict[str, Any]:
    """A supervisor call off the event loop (they signal, spawn and wait on sockets)."""
    fleet = _fleet(web)
    return await run_in_threadpool(getattr(fleet, action), *args)  # its refusals: errors.py


@router.get("/api/fleet")
async def describe(web: Web) -> dict[str, Any]:
    return await _call(web, "describe")


@router.post("/api/fleet/scale", status_code=202)
async def scale(body: ScaleRequest, web: Web) -> dict[str, Any]:
    """202: the target is set; workers start or stop warm in the background."""
    return await _call(web, "scale", body.workers)


@router.post("/api/fleet/workers/{name}/kill")
async def kill(name: str, web: Web) -> dict[str, Any]:
    return await _call(web, "kill", name)


@router.post("/api/chaos/storage-cut", status_code=202)
async def cut_storage(body: CutRequest, web: Web) -> dict[str, Any]:
    return await _call(web, "cut_storage", body.seconds)


@router.delete("/api/chaos/storage-cut")
async def restore_storage(web: Web) -> dict[str, Any]:
    return await _call(web, "restore_storage")


@router.post("/api/chaos/broker-restart", status_code=202)
async def restart_broker(web: Web) -> dict[str, Any]:
    return await _call(web, "restart_broker")
