"""``/api/lessons``: the lessons of ``encodeq learn`` on the page, narrated as they run.

Only under ``encodeq up``, which hands the app a lesson runner (uploader/web/lessons.py); under
``encodeq serve`` alone every route here answers 404 ``no_lessons``. Behind the token like every
``/api`` route: a lesson creates a vhost and starts consumers on the broker.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from uploader.web.errors import ApiError
from uploader.web.lessons import LessonsControl
from uploader.web.state import Web, WebState

router = APIRouter()


class StartRequest(BaseModel):
    #: Mechanisms to break on purpose (name -> value), over the lesson's defaults.
    knobs: dict[str, bool | int | float | str] = Field(default_factory=dict, max_length=8)


def _lessons(web: WebState) -> LessonsControl:
    if web.lessons is None:
        raise ApiError(404, "no_lessons", "this dashboard runs without encodeq up: no lessons here")
    return web.lessons


async def _call(web: WebState, action: str, *args: Any) -> Any:
    lessons = _lessons(web)
    return await run_in_threadpool(getattr(lessons, action), *args)  # its refusals: errors.py


@router.get("/api/lessons")
async def list_lessons(web: Web) -> dict[str, Any]:
    return {"lessons": await _call(web, "list")}


@router.post("/api/lessons/{name}", status_code=202)
async def start(name: str, web: Web, body: StartRequest | None = None) -> dict[str, Any]:
    """202: the run has started; poll ``/api/lessons/runs/{id}`` for its narration and verdict."""
    return await _call(web, "start", name, dict(body.knobs) if body else {})


@router.get("/api/lessons/runs/{run_id}")
async def state(run_id: str, web: Web) -> dict[str, Any]:
    return await _call(web, "state", run_id)
