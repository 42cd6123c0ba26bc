"""Running the HTTP service: uvicorn, bound to loopback unless a token protects it.

Without ``ENCODEQ_API_TOKEN`` anyone who can reach the port could upload, replay and purge, so a
non-loopback address without a token is refused before anything listens.
"""

from __future__ import annotations

import ipaddress

import uvicorn

from config.settings import Settings, get_settings
from uploader.web.app import create_app

#: Seconds uvicorn lets open requests finish on shutdown (SSE streams end by themselves).
GRACEFUL_SHUTDOWN_S = 5


class ServeError(Exception):
    """The server cannot start as asked; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


def check_bind(host: str, settings: Settings) -> None:
    if not is_loopback(host) and not settings.api_token:
        raise ServeError(
            f"refusing to listen on {host}: it is not a loopback address and ENCODEQ_API_TOKEN is"
            " not set, so anyone who can reach it could upload, replay and purge. Set"
            " ENCODEQ_API_TOKEN (mutating requests then need 'Authorization: Bearer <token>') or"
            " bind 127.0.0.1."
        )


def serve(host: str, port: int, settings: Settings | None = None) -> None:
    """Serve until SIGINT/SIGTERM."""
    settings = settings or get_settings()
    check_bind(host, settings)
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    )
    app.state.should_exit = lambda: server.should_exit
    server.run()
