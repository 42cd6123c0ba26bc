"""The HTTP API and live dashboard of ``encodeq serve`` (FastAPI).

JSON only on the wire, errors included: ``{"error": {"code": ..., "message": ...}}`` with a stable
code (one exception: a ``Host`` header outside the trusted list gets Starlette's plain-text 400).
Every ``/api/*`` route except ``/api/health`` needs the token (``Authorization: Bearer <token>``,
or a ticket where a browser cannot send a header); there is always a token: server.py generates
one when ``ENCODEQ_API_TOKEN`` is unset. The guards (token, trusted hosts, cross-site refusal,
security headers) are in security.py; the page itself (``/``, ``/static``) loads without a token
and asks for it.

A file that is not a video is accepted like any other upload (202): whether bytes are a video is
ffprobe's call on a worker, under its limits, not the web server's; the job then fails with the
probe's error code (``not_a_video``...) and its task is dead-lettered, where the DLQ panel shows it
and a replay can retry it once the source is fixed. Refused at once: no file, an empty file, a
body that is not multipart (400/415), and anything over ``max_upload_bytes`` (413, while
streaming).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import timedelta
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from config.settings import Settings, get_settings
from config.topology import DEAD_LETTER_QUEUE_NAME
from core.manifest import JobStore, Manifest, is_job_id
from core.monitor import WATCHED_QUEUES
from core.storage import Storage
from uploader.playback import MPEGURL, Playback, PlaybackError
from uploader.web import dlq, security
from uploader.web.hub import EventHub
from uploader.web.intake import UploadError, receive, remove, submit_received

#: A quiet SSE stream sends a comment this often, so proxies and clients know it is alive.
KEEPALIVE_S = 15.0
#: Jobs a listing returns at most (newest first).
MAX_JOBS = 200
STATIC = resources.files("uploader.web") / "static"


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def create_app(
    settings: Settings | None = None, token: str | None = None, bind_host: str | None = None
) -> FastAPI:
    """The app; ``app.state.should_exit`` (set by server.py) ends SSE streams on shutdown.

    ``token``: the one every API call needs (default: ``ENCODEQ_API_TOKEN``, else a random one,
    in ``app.state.token``: never an app without one). ``bind_host`` joins the trusted hosts.
    """
    settings = settings or get_settings()
    token = token or settings.api_token or security.generate_token()
    tickets = security.Tickets(token)
    storage = Storage(settings)
    jobs = JobStore(storage)

    def play_ticket(job_id: str, valid_for: timedelta) -> str:
        return tickets.issue(f"play:{job_id}", valid_for.total_seconds())

    playback = Playback(storage, ticket=play_ticket)
    hub = EventHub(settings.broker_url, JobStore(Storage(settings)))
    media = [security.origin_of(settings.s3_public_endpoint or settings.s3_endpoint)]
    headers = security.security_headers(media)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(hub.start)
        try:
            yield
        finally:
            await run_in_threadpool(hub.stop)

    # No /docs page: FastAPI's loads Swagger UI from a CDN, which the page origin never runs.
    app = FastAPI(
        title="encodeq",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.hub = hub
    app.state.token = token
    app.state.should_exit = lambda: False
    hosts = security.allowed_hosts(bind_host, settings.allowed_hosts)
    security.install(app, token, tickets, hosts, headers)

    # --- errors: JSON, always ---------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return error(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return error(400, "invalid_request", where or "invalid request")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # Sent from Starlette's outermost layer, past SecurityHeaders: add them here.
        return error(500, "internal_error", f"{type(exc).__name__}: {exc}", headers)

    # --- pages ----------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "events": hub.connected.is_set()}

    @app.get("/api/config")
    async def config() -> dict[str, Any]:
        """What the page needs to know before it uploads."""
        return {"max_upload_bytes": settings.max_upload_bytes, "queues": list(WATCHED_QUEUES)}

    @app.post("/api/tickets/events")
    async def events_ticket() -> dict[str, Any]:
        """A short-lived ticket for ``GET /api/events?ticket=...``: EventSource sends no header."""
        ticket = tickets.issue("events", security.EVENTS_TICKET_S)
        return {"ticket": ticket, "expires_in": security.EVENTS_TICKET_S}

    # --- uploads --------------------------------------------------------------------------------
    @app.post("/api/uploads", status_code=202)
    async def upload(request: Request) -> JSONResponse:
        """multipart/form-data with one file in field ``file``; 202 with the queued job."""
        try:
            received = await receive(
                request.headers.get("content-type"),
                request.headers.get("content-length"),
                request.stream(),
                settings,
            )
        except UploadError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        try:
            manifest = await run_in_threadpool(submit_received, received, storage)
        except UploadError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        finally:
            remove(received)
        return JSONResponse(
            {**job_json(manifest), "links": links(manifest)},
            status_code=202,
            headers={"Location": f"/api/jobs/{manifest.job_id}"},
        )

    # --- jobs -----------------------------------------------------------------------------------
    def job_json(manifest: Manifest) -> dict[str, Any]:
        doc = manifest.model_dump(mode="json")
        live = hub.monitor.job(manifest.job_id)
        if live is not None:  # fps/speed/progress of running encodes, fresher than the records
            by_name = {r.name: r for r in live.renditions.values()}
            for r in doc["renditions"]:
                view = by_name.get(r["name"])
                if view is not None and r["state"] == "encoding":
                    r["progress"] = max(r["progress"], view.progress)
                    r["fps"], r["speed"] = view.fps, view.speed
        return doc

    def links(manifest: Manifest) -> dict[str, str]:
        """The job's URLs; the playlist's carries a playback ticket, so a ``<video>`` plays it."""
        job_id = manifest.job_id
        master = playback.master_url(job_id, manifest.source.duration)
        return {"job": f"/api/jobs/{job_id}", "master_playlist": master}

    def load_job(job_id: str) -> Manifest:
        if not is_job_id(job_id):
            raise ApiError(400, "invalid_job_id", "a job id is 32 lowercase hex digits")
        manifest = jobs.load(job_id)
        if manifest is None:
            raise ApiError(404, "unknown_job", f"no job {job_id}")
        return manifest

    @app.get("/api/jobs")
    def list_jobs(limit: int = 50) -> dict[str, Any]:
        """Newest first; each with its renditions' latest records."""
        limit = max(1, min(limit, MAX_JOBS))
        with ThreadPoolExecutor(8) as pool:
            # Job documents first (one read each) to find the newest; renditions only for those.
            heads = [m for m in pool.map(jobs.load_job, jobs.job_ids()) if m is not None]
            heads.sort(key=lambda m: m.created_at, reverse=True)
            newest = [m.job_id for m in heads[:limit]]
            manifests = [m for m in pool.map(jobs.load, newest) if m is not None]
        return {"jobs": [job_json(m) for m in manifests], "total": len(heads)}

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        manifest = load_job(job_id)
        return {**job_json(manifest), "links": links(manifest)}

    # --- playback -------------------------------------------------------------------------------
    def playlist(make: Callable[[], str]) -> Response:
        try:
            text = make()
        except PlaybackError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        return Response(text, media_type=MPEGURL, headers={"Cache-Control": "no-store"})

    @app.get("/api/jobs/{job_id}/hls/master.m3u8")
    def master_playlist(job_id: str) -> Response:
        return playlist(lambda: playback.master(job_id))

    @app.get("/api/jobs/{job_id}/hls/{rendition}/index.m3u8")
    def media_playlist(job_id: str, rendition: str) -> Response:
        return playlist(lambda: playback.media(job_id, rendition))

    # --- live -----------------------------------------------------------------------------------
    @app.get("/api/events")
    async def events(request: Request) -> StreamingResponse:
        """Server-sent events: every lifecycle event as JSON, plus ``queues`` samples."""
        client = hub.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                hello = {"event": "hello", "connected": hub.connected.is_set()}
                yield f"retry: 2000\ndata: {json.dumps(hello)}\n\n"
                idle = 0.0
                while not app.state.should_exit():
                    try:
                        event = await asyncio.wait_for(client.queue.get(), timeout=1.0)
                    except TimeoutError:
                        idle += 1.0
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
                hub.unsubscribe(client)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/api/queues")
    async def queues() -> dict[str, Any]:
        """Depths now and over the last minutes (one sample a second)."""
        return hub.monitor.queues_json()

    @app.get("/api/workers")
    async def workers() -> dict[str, Any]:
        """Workers seen in events or manifests, and what each is doing."""
        return {"workers": hub.monitor.workers_json()}

    # --- the DLQ panel --------------------------------------------------------------------------
    @app.get("/api/dlq")
    def dlq_list() -> dict[str, Any]:
        return {"queue": DEAD_LETTER_QUEUE_NAME, "messages": dlq.list_messages(storage)}

    def dead_letter(call: Callable[[], dict[str, Any]], message_id: str) -> dict[str, Any]:
        try:
            return call()
        except dlq.DeadLetterNotFound:
            where = f"{DEAD_LETTER_QUEUE_NAME} (replayed or purged since?)"
            raise ApiError(404, "unknown_message", f"no message {message_id} in {where}") from None

    @app.get("/api/dlq/{message_id}")
    def dlq_show(message_id: str) -> dict[str, Any]:
        return dead_letter(lambda: dlq.show(storage, message_id), message_id)

    @app.post("/api/dlq/{message_id}/replay")
    def dlq_replay(message_id: str) -> JSONResponse:
        doc = dead_letter(lambda: dlq.replay(storage, settings, message_id), message_id)
        if not doc["moved"]:
            why = "; ".join(f["why"] for f in doc["failed"]) or "nothing was replayed"
            raise ApiError(409, "not_replayed", why)
        return JSONResponse(doc)

    @app.post("/api/dlq/{message_id}/purge")
    def dlq_purge(message_id: str) -> dict[str, Any]:
        return dead_letter(lambda: dlq.purge(storage, settings, message_id), message_id)

    return app
