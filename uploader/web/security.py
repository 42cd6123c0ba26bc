"""Who may talk to ``encodeq serve``, and from which page: the HTTP service's guards.

Four layers, outermost first (``install`` adds them in this order):

* **Security headers** on every response: a Content-Security-Policy that allows scripts, styles
  and fetches from the app itself only (plus the S3 origin the player fetches presigned segments
  from), ``frame-ancestors 'none'`` (no clickjacking), ``nosniff``, ``no-referrer`` (a ticket in a
  URL never leaks to S3 through ``Referer``).
* **Trusted hosts** (Starlette's ``TrustedHostMiddleware``): loopback names, the bind address and
  ``ENCODEQ_ALLOWED_HOSTS``; any other ``Host`` gets 400. A DNS-rebinding page (``evil.example``
  resolving to 127.0.0.1) sends its own name as ``Host`` and is refused before any route runs.
* **Cross-site refusal** of every mutating request (anything but GET/HEAD/OPTIONS): a browser
  says where a request comes from in ``Sec-Fetch-Site`` and ``Origin``; unless that is this very
  origin, 403. A request with neither (curl, a script) passes here: it is not a browser acting for
  a page, and it still needs the token.
* **The token** on every ``/api/*`` route except ``/api/health``: ``Authorization: Bearer
  <token>``, compared in constant time. A guard on the path prefix, not a per-route decorator, so a
  route added later is covered without anyone remembering to.

Two kinds of request cannot carry a header: ``EventSource`` (the live stream) and a ``<video>``
element fetching playlists. They take a **ticket** instead, in the ``ticket`` query parameter: an
HMAC (keyed by the token) of a scope and an expiry. ``POST /api/tickets/events`` gives a
60-second ticket for ``/api/events``; the job document gives a playback URL whose ticket is valid
for that job's playlists only, as long as its presigned segment URLs. Tickets rather than the token
itself in a URL: a URL ends up in access logs and history, and a leaked ticket opens one stream
for a minute or one job's playback, never uploads, replays or purges; changing the token revokes
every ticket.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from config.exposure import WILDCARDS

#: What ``/api/*`` route needs no token: a load balancer's or a test's liveness probe.
OPEN_API_PATHS = frozenset({"/api/health"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Host names that are always this machine.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: Seconds an events ticket is valid: enough to open the stream (the page asks for a new one on
#: every reconnect).
EVENTS_TICKET_S = 60
#: Refused requests still have this much of their body read, so the client reads the error
#: instead of a reset connection.
DRAIN_BYTES = 64 * 1024 * 1024

#: Routes that accept a ticket instead of the header, and the scope the ticket must be for.
_TICKET_ROUTES = (
    (re.compile(r"^/api/events$"), lambda m: "events"),
    (
        re.compile(r"^/api/jobs/([0-9a-f]{32})/hls/(?:master|[^/]+/index)\.m3u8$"),
        lambda m: f"play:{m.group(1)}",
    ),
)


def generate_token() -> str:
    """A token for a server started without ``ENCODEQ_API_TOKEN`` (256 random bits)."""
    return secrets.token_urlsafe(32)


# --- tickets --------------------------------------------------------------------------------------
class Tickets:
    """Signed, expiring, scoped stand-ins for the token where a header cannot be sent."""

    def __init__(self, token: str) -> None:
        self._key = hmac.new(token.encode(), b"encodeq-ticket-v1", hashlib.sha256).digest()

    def _mac(self, scope: str, expires: int) -> str:
        message = f"{scope}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:40]

    def issue(self, scope: str, ttl_s: float) -> str:
        expires = int(time.time() + ttl_s)
        return f"{expires}.{self._mac(scope, expires)}"

    def valid(self, ticket: str, scope: str) -> bool:
        expires_text, _, mac = ticket.partition(".")
        if (
            not (expires_text.isascii() and expires_text.isdigit())
            or int(expires_text) < time.time()
        ):
            return False
        return hmac.compare_digest(mac.encode(), self._mac(scope, int(expires_text)).encode())


def ticket_scope(path: str) -> str | None:
    """The scope a ticket for ``path`` must have; None where tickets are not accepted."""
    for pattern, scope in _TICKET_ROUTES:
        match = pattern.match(path)
        if match:
            return scope(match)
    return None


# --- helpers ----------------------------------------------------------------------------------
def _refuse(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


async def _drain(receive: Receive, budget: int = DRAIN_BYTES) -> None:
    """Read and drop what is left of a refused request's body, up to ``budget`` bytes."""
    while budget >= 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _origin_tuple(url: str) -> tuple[str, str, int] | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return None
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    except ValueError:
        return None
    return parts.scheme, parts.hostname.lower(), port


# --- the layers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SecurityHeaders:
    """Adds the security headers to every response that passes through."""

    app: ASGIApp
    headers: tuple[tuple[bytes, bytes], ...]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in self.headers if n not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass(frozen=True)
class CrossSiteGuard:
    """403 for a mutating request a browser made on behalf of another site."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        why = cross_site(Headers(scope=scope), scope.get("scheme", "http"))
        if why is None:
            await self.app(scope, receive, send)
            return
        await _drain(receive)
        await _refuse(403, "cross_site", why)(scope, receive, send)


def cross_site(headers: Headers, scheme: str) -> str | None:
    """Why a mutating request is cross-site, or None when it comes from this origin (or from no
    browser at all: no ``Sec-Fetch-Site`` and no ``Origin``)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"refused a {site} request: only this page may change anything"
    origin = headers.get("origin")
    if origin is None:
        return None
    serving = _origin_tuple(f"{scheme}://{headers.get('host', '')}")
    if serving is None or _origin_tuple(origin) != serving:
        return f"refused a request from origin {origin!r}: only this page may change anything"
    return None


@dataclass(frozen=True)
class TokenGuard:
    """401 for an ``/api/*`` request without the token (or a valid ticket where one is taken)."""

    app: ASGIApp
    token: str
    tickets: Tickets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/") or path in OPEN_API_PATHS:
            await self.app(scope, receive, send)
            return
        if self.authorized(Headers(scope=scope), path, scope.get("query_string", b"")):
            await self.app(scope, receive, send)
            return
        await _drain(receive)
        response = _refuse(
            401,
            "unauthorized",
            "missing or wrong bearer token (or ticket)",
            {"WWW-Authenticate": 'Bearer realm="encodeq"'},
        )
        await response(scope, receive, send)

    def authorized(self, headers: Headers, path: str, query_string: bytes) -> bool:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), self.token.encode()
        ):
            return True
        wanted = ticket_scope(path)
        if wanted is None:
            return False
        tickets = parse_qs(query_string.decode("latin-1")).get("ticket", [])
        return any(self.tickets.valid(t, wanted) for t in tickets[:1])


# --- putting it together ----------------------------------------------------------------------
def allowed_hosts(bind_host: str | None, extra: str | Iterable[str]) -> list[str]:
    """Loopback names, the bind address (unless a wildcard), and the operator's extra names."""
    names = [*LOOPBACK_HOSTS]
    if bind_host is not None and bind_host.strip("[]") not in WILDCARDS:
        names.append(bind_host.strip("[]"))
    more = extra.split(",") if isinstance(extra, str) else list(extra)
    names += [n.strip() for n in more if n.strip()]
    return list(dict.fromkeys(n.lower() for n in names))


def content_security_policy(media_origins: Iterable[str]) -> str:
    """Everything from the app itself; media, fetches and the poster image also from where
    segments are served."""
    media = " ".join(dict.fromkeys(o for o in media_origins if o))
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' data: blob: {media}".rstrip(),
            f"media-src 'self' blob: {media}".rstrip(),
            f"connect-src 'self' {media}".rstrip(),
            "worker-src 'self' blob:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of a URL ('' when it has none)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def security_headers(media_origins: Iterable[str]) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(media_origins),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


def install(
    app: Any, token: str, tickets: Tickets, hosts: list[str], headers: dict[str, str]
) -> None:
    """Add the layers to a Starlette/FastAPI app (the last added runs first)."""
    app.add_middleware(TokenGuard, token=token, tickets=tickets)
    app.add_middleware(CrossSiteGuard)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    encoded = tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
    app.add_middleware(SecurityHeaders, headers=encoded)
