"""The HTTP API and live dashboard of ``encodeq serve`` (FastAPI): the app, assembled.

JSON only on the wire, errors included (errors.py maps every error to ``{"error": {"code",
"message"}}`` in one place). Every ``/api/*`` route except ``/api/health`` needs the token
(``Authorization: Bearer <token>``, or a ticket where a browser cannot send a header); there is
always a token: server.py generates one when ``ENCODEQ_API_TOKEN`` is unset. The guards (token,
trusted hosts, cross-site refusal, security headers) are in security.py; the page itself (``/``,
``/static``) loads without a token and asks for it; so does ``/metrics`` (Prometheus: counts only,
uploader/web/metrics.py says why).

The routes are in routes/, one router per resource: the page, uploads, jobs, playback, the live
events, the DLQ panel. What they share (settings, storage, tickets, the events hub) is built
once (state.py) and reaches them as a dependency.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from config.settings import Settings, get_settings
from uploader.web import security
from uploader.web.errors import install_error_handlers
from uploader.web.fleet import FleetControl
from uploader.web.lessons import LessonsControl
from uploader.web.routes import dlq, events, jobs, metrics, page, playback, uploads
from uploader.web.routes import fleet as fleet_routes
from uploader.web.routes import lessons as lesson_routes
from uploader.web.state import WebState

ROUTERS = (
    page.router,
    uploads.router,
    jobs.router,
    playback.router,
    events.router,
    dlq.router,
    fleet_routes.router,
    lesson_routes.router,
    metrics.router,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The events hub runs while the app serves (its thread owns a broker connection)."""
    hub = app.state.web.hub
    await run_in_threadpool(hub.start)
    try:
        yield
    finally:
        await run_in_threadpool(hub.stop)


def create_app(
    settings: Settings | None = None,
    token: str | None = None,
    bind_host: str | None = None,
    fleet: FleetControl | None = None,
    lessons: LessonsControl | None = None,
) -> FastAPI:
    """The app; ``app.state.should_exit`` (set by server.py) ends SSE streams on shutdown.

    ``token``: the one every API call needs (default: ``ENCODEQ_API_TOKEN``, else a random one,
    in ``app.state.web.token``: never an app without one). ``bind_host`` joins the trusted hosts.
    ``fleet``: the supervisor under ``encodeq up`` (routes/fleet.py), else None; ``lessons``: its
    lesson runner (routes/lessons.py), else None.
    """
    settings = settings or get_settings()
    token = token or settings.api_token or security.generate_token()
    web = WebState.build(settings, token, fleet, lessons)
    # No /docs page: FastAPI's loads Swagger UI from a CDN, which the page origin never runs.
    app = FastAPI(
        title="encodeq",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.web = web
    app.state.should_exit = lambda: False
    hosts = security.allowed_hosts(bind_host, settings.allowed_hosts)
    security.install(app, web.token, web.tickets, hosts, web.headers)
    install_error_handlers(app, web.headers)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(page.STATIC)), name="static")
    return app
