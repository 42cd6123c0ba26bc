"""Running the HTTP service: uvicorn, always behind a token, never with a well-known secret
(main.py is the command that calls ``serve``).

There is always a token, on loopback too: any page the browser opens can send requests to
127.0.0.1, and any local user can connect to it. Without ``ENCODEQ_API_TOKEN`` one is generated at
start and a ready link is printed (``http://HOST:PORT/#token=...``, the way Jupyter does it): the
page reads the token from the fragment, which browsers never send to a server, keeps it in
sessionStorage and removes it from the address bar. A well-known secret (the old compose token,
MinIO's or RabbitMQ's defaults) off loopback stops the server before it listens
(config/exposure.py).
"""

from __future__ import annotations

import sys
from typing import TextIO

import uvicorn
from fastapi import FastAPI

from config.exposure import WILDCARDS, DefaultSecretError, check_default_secrets
from config.settings import Settings, get_settings
from uploader.web.app import create_app
from uploader.web.fleet import FleetControl
from uploader.web.lessons import LessonsControl
from uploader.web.security import generate_token

#: Seconds uvicorn lets open requests finish on shutdown (SSE streams end by themselves).
GRACEFUL_SHUTDOWN_S = 5


class ServeError(Exception):
    """The server cannot start as asked; the message says why and what to do."""


def link(host: str, port: int, token: str | None) -> str:
    """The URL to open: a wildcard bind is reached on 127.0.0.1; the token rides in the fragment."""
    shown = "127.0.0.1" if host.strip("[]") in WILDCARDS else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    base = f"http://{shown}:{port}/"
    return f"{base}#token={token}" if token else base


def serve(
    host: str, port: int, settings: Settings | None = None, out: TextIO | None = None
) -> None:
    """Serve until SIGINT/SIGTERM."""
    settings = settings or get_settings()
    out = out or sys.stdout
    app, token, generated = prepare(host, settings)
    if generated:
        out.write(
            "encodeq serve: no ENCODEQ_API_TOKEN set, so this run generated one. Open the"
            f" dashboard with it:\n\n    {link(host, port, token)}\n\n"
        )
    else:
        where = link(host, port, None)
        out.write(f"encodeq serve: dashboard at {where} (it asks for ENCODEQ_API_TOKEN)\n")
    out.flush()
    run(app, host, port)


def prepare(
    host: str,
    settings: Settings,
    fleet: FleetControl | None = None,
    lessons: LessonsControl | None = None,
) -> tuple[FastAPI, str, bool]:
    """The app, its token, and whether the token was generated for this run (no
    ``ENCODEQ_API_TOKEN``); ServeError on a well-known secret off loopback."""
    try:
        check_default_secrets(settings, bind_host=host)
    except DefaultSecretError as exc:
        raise ServeError(str(exc)) from None
    generated = not settings.api_token
    token = settings.api_token or generate_token()
    app = create_app(settings, token=token, bind_host=host, fleet=fleet, lessons=lessons)
    return app, token, generated


def run(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    """uvicorn in this thread until SIGINT/SIGTERM; SSE streams end when it begins to exit."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    )
    app.state.should_exit = lambda: server.should_exit
    server.run()
