"""The live view: server-sent events, the ticket that opens them, queue depths, workers and the
timeline of task runs; all from the one events hub (hub.py) and its monitor."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from uploader.web import security
from uploader.web.state import Web, WebState

#: A quiet SSE stream sends a comment this often, so proxies and clients know it is alive.
KEEPALIVE_S = 15.0
#: How often a waiting stream looks up from its queue (disconnects, shutdown, keep-alives).
TICK_S = 1.0

router = APIRouter()


@router.post("/api/tickets/events")
async def events_ticket(web: Web) -> dict[str, Any]:
    """A short-lived ticket for ``GET /api/events?ticket=...``: EventSource sends no header."""
    ticket = web.tickets.issue("events", security.EVENTS_TICKET_S)
    return {"ticket": ticket, "expires_in": security.EVENTS_TICKET_S}


@router.get("/api/events")
async def events(request: Request, web: Web) -> StreamingResponse:
    """Server-sent events: every lifecycle event as JSON, plus ``queues`` samples."""
    should_exit: Callable[[], bool] = request.app.state.should_exit
    return StreamingResponse(
        _stream(request, web, should_exit),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    request: Request, web: WebState, should_exit: Callable[[], bool]
) -> AsyncIterator[str]:
    """Events until the client leaves or the server stops (``should_exit``, set by server.py)."""
    client = web.hub.subscribe()
    try:
        hello = {"event": "hello", "connected": web.hub.connected.is_set()}
        yield f"retry: 2000\ndata: {json.dumps(hello)}\n\n"
        idle = 0.0
        while not should_exit():
            try:
                event = await asyncio.wait_for(client.queue.get(), timeout=TICK_S)
            except TimeoutError:
                idle += TICK_S
                if idle >= KEEPALIVE_S:
                    idle = 0.0
                    yield ": keep-alive\n\n"
                if await request.is_disconnected():
                    break
                continue
            if event is None:
                break
            idle = 0.0
            yield f"data: {json.dumps(event, default=str)}\n\n"
    finally:
        web.hub.unsubscribe(client)


@router.get("/api/queues")
async def queues(web: Web) -> dict[str, Any]:
    """Depths now and over the last minutes (one sample a second)."""
    return web.hub.monitor.queues_json()


@router.get("/api/workers")
async def workers(web: Web) -> dict[str, Any]:
    """Workers seen in events or manifests, and what each is doing."""
    return {"workers": web.hub.monitor.workers_json()}


@router.get("/api/timeline")
async def timeline(web: Web) -> dict[str, Any]:
    """The recent task runs (core/timeline.py), oldest first, so a page opened mid-encode shows
    the past; ``now`` is the server's clock, which the page lays the bars out against."""
    return {"now": time.time(), "runs": web.hub.monitor.timeline.runs()}
