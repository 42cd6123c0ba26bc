"""``encodeq serve``'s JSON API, against the real app served by uvicorn in an ``encodeq serve``
subprocess, with real workers, RabbitMQ, S3 server and ffmpeg behind it.

Decided for non-video uploads: accepted (202), because ffprobe on a worker is what decides whether
bytes are a video; the job then fails with the probe's code (``not_a_video``) and its task is
dead-lettered, from where it can be replayed once the source is fixed, or purged.

Who may call it (issue 10, items 9, 10, 14): every ``/api/*`` route but health needs the token
(found by walking the app's own routes, so a new route cannot slip by); the event stream and the
playlists take scoped tickets instead; a browser's cross-site mutating request is refused (403)
and nothing happens; a ``Host`` outside the trusted list gets 400; every response carries the
security headers; without ``ENCODEQ_API_TOKEN`` the server generates a token and prints a link;
upload temp files and purge exports are 0600 in the private folder.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import yaml
from support.commands import resolve
from support.fleet import WorkerFleet
from support.http import http, http_json, multipart, serve_argv, start_server
from support.media import ffprobe, make_video
from support.storage import storage
from support.waiting import wait_for

from config.settings import Settings
from core.layout import UPLOADS
from core.manifest import JobStore
from core.storage import parse_uri
from dlq_inspector.operations import EXPORT_FOLDER
from uploader.web.app import create_app
from uploader.web.intake import UPLOAD_FOLDER

TOKEN = "test-token-" + os.urandom(4).hex()
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 4 * 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]
#: A name the server is told to answer besides loopback (ENCODEQ_ALLOWED_HOSTS).
EXTRA_HOST = "encodeq.test"
SEED = int(os.environ.get("ENCODEQ_TEST_SEED", random.randrange(2**32)))
print(f"test_http_api seed: {SEED} (ENCODEQ_TEST_SEED={SEED} repeats it)")


@pytest.fixture(scope="module")
def fleet() -> Iterator[WorkerFleet]:
    fleet = WorkerFleet()
    fleet.start("alpha")
    fleet.start("beta")
    yield fleet
    fleet.stop_all()


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's ENCODEQ_WORK_DIR: its private folder, to look at what it leaves there."""
    return tmp_path_factory.mktemp("serve-work")


@pytest.fixture(scope="module")
def server(fleet: WorkerFleet, work_dir: Path) -> Iterator[Any]:
    env = {
        "ENCODEQ_API_TOKEN": TOKEN,
        "ENCODEQ_MAX_UPLOAD_BYTES": str(LIMIT),
        "ENCODEQ_ALLOWED_HOSTS": f" {EXTRA_HOST.upper()} ,",
        "ENCODEQ_WORK_DIR": str(work_dir),
    }
    server = start_server(env=env)
    yield server
    # uvicorn re-raises the SIGTERM it handled once shut down: -15 is a clean stop too.
    assert server.stop() in (0, -15), server.output()[-3000:]


def upload(server: Any, name: str, data: bytes, headers: dict[str, str] | None = None):
    body, content_type = multipart(name, data)
    auth = AUTH if headers is None else headers
    return http_json(
        "POST",
        f"{server.base}/api/uploads",
        body=body,
        headers={"Content-Type": content_type, **auth},
    )


def assert_error(status: int, doc: Any, expected_status: int, code: str) -> None:
    assert status == expected_status, doc
    assert set(doc) == {"error"} and doc["error"]["code"] == code, doc
    assert doc["error"]["message"]


def job(server: Any, job_id: str) -> dict[str, Any]:
    status, doc = http_json("GET", f"{server.base}/api/jobs/{job_id}", headers=AUTH)
    assert status == 200, doc
    return doc


def wait_job(server: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    return wait_for(
        lambda: (d := job(server, job_id))["state"] in ("completed", "failed") and d,
        timeout,
        f"job {job_id} to end",
    )


def job_total(server: Any) -> int:
    return http_json("GET", f"{server.base}/api/jobs", headers=AUTH)[1]["total"]


def upload_keys() -> set[str]:
    return set(storage().list_keys(UPLOADS))


# --- pages and reading ---------------------------------------------------------------------------
def test_page_static_files_and_config(server: Any) -> None:
    status, headers, page = http("GET", f"{server.base}/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'type="file"' in page
    for asset in ("app.js", "style.css"):
        assert http("GET", f"{server.base}/static/{asset}")[0] == 200
    status, config = http_json("GET", f"{server.base}/api/config", headers=AUTH)
    assert status == 200
    assert config == {
        "max_upload_bytes": LIMIT,
        "max_queued_tasks": 1000,
        "queues": [
            "encodeq.control",
            "encodeq.encode.high",
            "encodeq.encode.express",
            "encodeq.encode",
            "encodeq.dlq",
        ],
    }


def test_unknown_jobs_and_routes_are_json_errors(server: Any) -> None:
    def get(path: str, method: str = "GET") -> tuple[int, Any]:
        return http_json(method, f"{server.base}{path}", headers=AUTH)

    assert_error(*get("/api/jobs/not-a-job"), 400, "invalid_job_id")
    assert_error(*get(f"/api/jobs/{'0' * 32}"), 404, "unknown_job")
    assert_error(*get(f"/api/jobs/{'0' * 32}/hls/master.m3u8"), 404, "unknown_job")
    assert_error(*get("/api/nothing"), 404, "not_found")
    assert_error(*get("/api/jobs", "DELETE"), 405, "method_not_allowed")
    assert_error(*get("/api/jobs?limit=x"), 400, "invalid_request")
    assert_error(*get(f"/api/jobs/{'0' * 32}/cancel", "POST"), 404, "unknown_job")


def test_cancel_through_the_api_then_again(server: Any, media_dir: Path) -> None:
    """A job cancelled right after its upload (a probe alone takes longer than the request) is
    cancelled; cancelling it again is a 409 that says why."""
    source = make_video(media_dir / "api cancel.mp4", 640, 360, duration=4)
    status, doc = upload(server, "api cancel.mp4", source.read_bytes())
    assert status == 202, doc
    cancel = f"{server.base}/api/jobs/{doc['job_id']}/cancel"
    status, cancelled = http_json("POST", cancel, headers=AUTH)
    assert status == 200 and cancelled["state"] == "cancelled", cancelled
    assert_error(*http_json("POST", cancel, headers=AUTH), 409, "already_finished")
    assert job(server, doc["job_id"])["state"] == "cancelled"


# --- uploads: refusals ----------------------------------------------------------------------------
def test_upload_without_the_right_token_is_refused(server: Any, media_dir: Path) -> None:
    data = make_video(media_dir / "api-token.mp4", 160, 90, duration=1).read_bytes()
    before, keys = job_total(server), upload_keys()
    assert_error(*upload(server, "a.mp4", data, headers={}), 401, "unauthorized")
    assert_error(
        *upload(server, "a.mp4", data, {"Authorization": "Bearer nope"}), 401, "unauthorized"
    )
    assert_error(*upload(server, "a.mp4", data, {"Authorization": TOKEN}), 401, "unauthorized")
    status, headers, _ = http("POST", f"{server.base}/api/uploads", body=b"x")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert job_total(server) == before and upload_keys() == keys


def test_upload_bad_requests_get_clear_errors(server: Any) -> None:
    before, keys = job_total(server), upload_keys()
    url = f"{server.base}/api/uploads"
    status, doc = http_json(
        "POST", url, body=b"raw bytes", headers={**AUTH, "Content-Type": "video/mp4"}
    )
    assert_error(status, doc, 415, "not_multipart")
    body, content_type = multipart("ignored", b"", field="title")
    body = body.replace(b'; filename="ignored"', b"")  # a plain field, no file
    assert_error(
        *http_json("POST", url, body=body, headers={**AUTH, "Content-Type": content_type}),
        400,
        "missing_file",
    )
    assert_error(*upload(server, "empty.mp4", b""), 400, "empty_file")
    body, content_type = multipart("clip.mp4", b"not looked at")
    assert_error(
        *http_json(
            "POST",
            f"{url}?priority=urgent",
            body=body,
            headers={**AUTH, "Content-Type": content_type},
        ),
        400,
        "bad_priority",
    )
    boundary = "two-files"
    two = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"\r\naaaa\r\n".encode()
            for name in ("a.mp4", "b.mp4")
        )
        + f"--{boundary}--\r\n".encode()
    )
    headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert_error(*http_json("POST", url, body=two, headers=headers), 400, "too_many_files")
    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=elsewhere"}
    assert_error(
        *http_json("POST", url, body=b"--nope\r\n\r\n", headers=headers), 400, "bad_multipart"
    )
    assert job_total(server) == before and upload_keys() == keys


def test_oversized_upload_is_refused_while_streaming(server: Any) -> None:
    """413 from the declared length, and, with no length declared (chunked), from the stream
    itself: the first byte over the limit ends it and nothing is stored."""
    before, keys = job_total(server), upload_keys()
    body, content_type = multipart("big.mp4", os.urandom(LIMIT + 1))
    status, doc = http_json(
        "POST",
        f"{server.base}/api/uploads",
        body=body,
        headers={**AUTH, "Content-Type": content_type},
    )
    assert_error(status, doc, 413, "too_large")
    assert str(LIMIT) in doc["error"]["message"]

    host, port = urlsplit(server.base).hostname, urlsplit(server.base).port
    conn = HTTPConnection(host, port, timeout=60)
    chunks = (body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024))
    headers = {**AUTH, "Content-Type": content_type, "Transfer-Encoding": "chunked"}
    conn.request("POST", "/api/uploads", body=chunks, encode_chunked=True, headers=headers)
    response = conn.getresponse()
    doc = json.loads(response.read())
    conn.close()
    assert_error(response.status, doc, 413, "too_large")
    assert job_total(server) == before and upload_keys() == keys


# --- uploads that work ---------------------------------------------------------------------------
def test_upload_encodes_and_plays_through_presigned_playlists(server: Any, media_dir: Path) -> None:
    source = make_video(media_dir / "api upload.mp4", 640, 360, duration=4)
    status, doc = upload(server, "api upload.mp4", source.read_bytes())
    assert status == 202, doc
    job_id = doc["job_id"]
    assert doc["state"] == "queued" and doc["source"]["filename"] == "api upload.mp4"
    assert doc["source"]["size_bytes"] == source.stat().st_size
    assert doc["links"]["job"] == f"/api/jobs/{job_id}"
    assert "api upload" not in doc["source"]["uri"]  # the key is ours, not the browser's name

    done = wait_job(server, job_id)
    assert done["state"] == "completed", done["error"]
    listing = http_json("GET", f"{server.base}/api/jobs?limit=200", headers=AUTH)[1]
    assert job_id in [j["job_id"] for j in listing["jobs"]]
    stored = JobStore(storage()).load(job_id)
    assert stored is not None and stored.source.uri == doc["source"]["uri"]

    # The playlists need the token: the master URL the job hands out carries a ticket instead,
    # valid for this job's playlists only (a <video> element sends no Authorization header).
    master_url = done["links"]["master_playlist"]
    assert urlsplit(master_url).path == f"/api/jobs/{job_id}/hls/master.m3u8"
    ticket = parse_qs(urlsplit(master_url).query)["ticket"][0]
    bare = f"{server.base}/api/jobs/{job_id}/hls/master.m3u8"
    assert_error(*http_json("GET", bare), 401, "unauthorized")
    assert http("GET", bare, headers=AUTH)[0] == 200
    # The master playlist points at our media playlists (each with its own ticket)...
    status, headers, master = http("GET", f"{server.base}{master_url}")
    assert status == 200 and headers["content-type"].startswith("application/vnd.apple.mpegurl")
    assert headers["cache-control"] == "no-store"
    variants = [line for line in master.decode().splitlines() if line and line[0] != "#"]
    assert sorted(urlsplit(v).path for v in variants) == sorted(
        f"/api/jobs/{job_id}/hls/{r['name']}/index.m3u8" for r in done["renditions"]
    )
    for variant in variants:
        path = urlsplit(variant).path
        assert_error(*http_json("GET", f"{server.base}{path}"), 401, "unauthorized")
        # The ticket is this job's: it opens neither another job's playlists nor the API.
        other = path.replace(job_id, "f" * 32)
        status, _ = http_json("GET", f"{server.base}{other}?{urlencode({'ticket': ticket})}")
        assert status == 401
        status, _ = http_json("GET", f"{server.base}/api/jobs/{job_id}?ticket={ticket}")
        assert status == 401
    # ...and each media playlist's segments are presigned S3 URLs that expire.
    endpoint = urlsplit(os.environ["ENCODEQ_S3_ENDPOINT"])
    for variant in variants:
        status, headers, media = http("GET", f"{server.base}{variant}")
        assert status == 200 and headers["cache-control"] == "no-store"
        segments = [line for line in media.decode().splitlines() if line and line[0] != "#"]
        assert len(segments) == 2  # 4 s in 2 s segments
        for url in segments:
            parts = urlsplit(url)
            assert parts.netloc == endpoint.netloc
            query = parse_qs(parts.query)
            assert int(query["X-Amz-Expires"][0]) >= 3600 and query["X-Amz-Signature"]
            status, _, data = http("GET", url)
            assert status == 200 and data[:1] == b"\x47"  # an MPEG-TS packet
            assert http("GET", url.split("?")[0])[0] == 403  # the bucket itself stays private
    # A player that knows nothing but the master URL (no header) plays all of it.
    info = ffprobe(f"{server.base}{master_url}")
    sizes = {(s["width"], s["height"]) for s in info["streams"] if s["codec_type"] == "video"}
    assert sizes == {(640, 360), (426, 240)}

    missing = f"{server.base}/api/jobs/{job_id}/hls/999p/index.m3u8"
    assert_error(*http_json("GET", missing, headers=AUTH), 404, "unknown_rendition")
    workers = http_json("GET", f"{server.base}/api/workers", headers=AUTH)[1]["workers"]
    names = {w["name"] for w in workers}
    assert {r["worker"] for r in done["renditions"]} <= names


def test_events_stream_carries_the_lifecycle(server: Any, media_dir: Path) -> None:
    source = make_video(media_dir / "api-events.mp4", 426, 240, duration=2)
    with EventStream(server.base) as stream:
        status, doc = upload(server, "api-events.mp4", source.read_bytes())
        assert status == 202, doc
        job_id = doc["job_id"]
        events = stream.until(
            lambda e: e.get("event") == "job.completed" and e.get("job_id") == job_id, timeout=120
        )
        # Queue depths come as events too, one sample a second.
        [*_, sample] = stream.until(lambda e: e.get("event") == "queues", timeout=10)
    mine = [e["event"] for e in events if e.get("job_id") == job_id]
    for kind in (
        "job.queued",
        "job.probing",
        "job.encoding",
        "rendition.started",
        "rendition.completed",
        "job.completed",
    ):
        assert kind in mine, mine
    assert mine.index("job.queued") < mine.index("job.probing") < mine.index("job.completed")
    started = [
        e for e in events if e.get("event") == "rendition.started" and e.get("job_id") == job_id
    ]
    assert all(e["worker"] for e in started)
    assert {"encodeq.control", "encodeq.encode", "encodeq.dlq"} <= set(sample)


def test_queue_depths_now_and_over_time(server: Any) -> None:
    def sample() -> Any:
        doc = http_json("GET", f"{server.base}/api/queues", headers=AUTH)[1]
        return doc["history"] and doc

    doc = wait_for(sample, 10, "a queue sample")
    current = {q["name"]: q for q in doc["current"]}
    assert set(current) == {
        "encodeq.control",
        "encodeq.encode.high",
        "encodeq.encode.express",
        "encodeq.encode",
        "encodeq.dlq",
    }
    assert current["encodeq.encode"]["consumers"] >= 2  # alpha and beta
    assert all(isinstance(q["messages"], int) for q in current.values())
    assert all("time" in sample and "encodeq.dlq" in sample for sample in doc["history"])


# --- non-video uploads and the DLQ ----------------------------------------------------------------
def dlq_row(server: Any, job_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        status, doc = http_json("GET", f"{server.base}/api/dlq", headers=AUTH)
        assert status == 200, doc
        return next((m for m in doc["messages"] if m["job_id"] == job_id), None)

    return wait_for(find, 30, f"the probe of {job_id} in the DLQ", every=0.5)


def test_non_video_is_accepted_fails_and_is_replayed_or_purged(
    server: Any, media_dir: Path, work_dir: Path
) -> None:
    ids = []
    for name in ("not a video.mp4", "junk.bin"):
        status, doc = upload(server, name, os.urandom(32 * 1024))
        assert status == 202, doc  # accepted: ffprobe on a worker decides what is a video
        ids.append(doc["job_id"])
    fixed, purged = ids
    for job_id in ids:
        failed = wait_job(server, job_id)
        assert failed["state"] == "failed" and failed["error"]["code"] == "not_a_video"

    row = dlq_row(server, fixed)
    assert row["task"] == "encodeq.probe" and row["reason"] == "rejected"
    assert row["exc_type"] == "InputError" and row["code"] == "not_a_video"
    assert "InputError" in row["traceback_tail"]
    shown_url = f"{server.base}/api/dlq/{row['id']}"
    assert_error(*http_json("GET", shown_url), 401, "unauthorized")  # tracebacks are not public
    status, shown = http_json("GET", shown_url, headers=AUTH)
    assert status == 200 and shown["id"] == row["id"] and shown["failure"]["code"] == "not_a_video"
    assert shown["x_death"][0]["queue"] == "encodeq.control"
    unknown = f"{server.base}/api/dlq/000000000000"
    assert_error(*http_json("GET", unknown, headers=AUTH), 404, "unknown_message")

    replay = f"{server.base}/api/dlq/{row['id']}/replay"
    assert_error(*http_json("POST", replay), 401, "unauthorized")
    assert_error(
        *http_json("POST", f"{server.base}/api/dlq/000000000000/replay", headers=AUTH),
        404,
        "unknown_message",
    )
    # Fix the source in place (same key), then replay: the job completes.
    s = storage()
    _, key = parse_uri(job(server, fixed)["source"]["uri"])
    s.put_file(UPLOADS, key, make_video(media_dir / "api-fixed.mp4", 320, 180, duration=2))
    status, outcome = http_json("POST", replay, headers=AUTH)
    assert status == 200, outcome
    assert outcome["ids"] == [row["id"]] and outcome["targets"] == {"encodeq -> control": 1}
    # Its state says failed until the replayed probe runs: wait for completed itself.
    done = wait_for(
        lambda: (d := job(server, fixed))["state"] == "completed" and d,
        120,
        f"replayed job {fixed} to complete",
    )
    assert done["error"] is None
    assert_error(*http_json("POST", replay, headers=AUTH), 404, "unknown_message")

    doomed = dlq_row(server, purged)
    purge = f"{server.base}/api/dlq/{doomed['id']}/purge"
    assert_error(
        *http_json("POST", purge, headers={"Authorization": "Bearer nope"}), 401, "unauthorized"
    )
    # A page on another site posting (body-less, as a form or fetch would) is refused, token or
    # not, and the message stays.
    for headers in cross_site_headers(server):
        assert_error(*http_json("POST", purge, headers={**AUTH, **headers}), 403, "cross_site")
        assert_error(*http_json("POST", replay, headers=headers), 403, "cross_site")
    assert doomed["id"] in {m["id"] for m in dlq_messages(server)}
    status, outcome = http_json("POST", purge, headers=AUTH)
    assert status == 200, outcome
    assert outcome["ids"] == [doomed["id"]]
    export = Path(outcome["export"])
    assert doomed["id"] in export.read_text()  # exported before it was removed
    # Private data (bodies, headers): 0600 in the 0700 private folder, never a shared /tmp.
    assert export.parent == work_dir / EXPORT_FOLDER
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    assert stat.S_IMODE(export.parent.stat().st_mode) == 0o700
    remaining = dlq_messages(server)
    assert not {m["id"] for m in remaining} & {row["id"], doomed["id"]}
    export.unlink()


def dlq_messages(server: Any) -> list[dict[str, Any]]:
    status, doc = http_json("GET", f"{server.base}/api/dlq", headers=AUTH)
    assert status == 200, doc
    return doc["messages"]


# --- who may call it: every route, tickets, cross-site, hosts, headers --------------------------
#: Sample values for path parameters, so every route can be called.
PATH_SAMPLES = {
    "job_id": "0" * 32,
    "rendition": "360p",
    "message_id": "0" * 12,
    "name": "nobody",
    "run_id": "0" * 12,
}


def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, route) of every route, into the routers the app includes (FastAPI keeps an included
    router whole, as one entry, since 0.16x; before, its routes were copied into the app's)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes, prefix + route.include_context.prefix)
        else:
            yield prefix + getattr(route, "path", ""), route


def api_routes() -> list[tuple[str, str]]:
    """(method, path) of every ``/api/*`` route of the app as built (not a list kept by hand)."""
    app = create_app(Settings(api_token="routes-only"))
    found = []
    for path, route in _routes(app.routes):
        if not path.startswith("/api/"):
            continue
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                found.append((method, re.sub(r"\{(\w+)\}", lambda m: PATH_SAMPLES[m[1]], path)))
    return found


def status_of(server: Any, method: str, path: str, headers: dict[str, str]) -> int:
    """The status line only: streams (``/api/events``) are not read to their end."""
    parts = urlsplit(server.base)
    conn = HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_every_api_route_needs_the_token_but_health(server: Any) -> None:
    routes = api_routes()
    paths = {p for _, p in routes}
    # The walk found what the page uses (so it walks the real table), health among them.
    assert {
        "/api/health",
        "/api/jobs",
        "/api/events",
        "/api/timeline",
        "/api/dlq",
        "/api/uploads",
        "/api/openapi.json",
        f"/api/jobs/{'0' * 32}/hls/master.m3u8",
    } <= paths
    wrong = [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ]
    for method, path in [*routes, ("GET", "/api/not-a-route"), ("DELETE", "/api/jobs")]:
        for headers in wrong:
            status = status_of(server, method, path, headers)
            if path == "/api/health":
                assert status == 200, (method, path, headers)
            else:
                assert status == 401, (method, path, headers, status)
        # With the token each answers (its own errors for the sample ids, never 401).
        status = status_of(server, method, path, AUTH)
        assert status not in (401, 403) and status < 500, (method, path, status)
    # The page and its assets load without a token: it asks for one.
    for path in (
        "/",
        "/static/app.js",
        "/static/timeline.js",
        "/static/fleet.js",
        "/static/style.css",
    ):
        assert http("GET", f"{server.base}{path}")[0] == 200


def test_tickets_open_only_their_own_stream(server: Any) -> None:
    ticket_url = f"{server.base}/api/tickets/events"
    assert_error(*http_json("POST", ticket_url), 401, "unauthorized")
    status, doc = http_json("POST", ticket_url, headers=AUTH)
    assert status == 200 and 0 < doc["expires_in"] <= 60
    ticket = doc["ticket"]
    events = f"/api/events?{urlencode({'ticket': ticket})}"
    assert status_of(server, "GET", events, {}) == 200
    expires, _, mac = ticket.partition(".")
    rng = random.Random(SEED)
    flipped = mac[:-1] + rng.choice([c for c in "0123456789abcdef" if c != mac[-1]])
    forged = [
        f"{int(expires) + 3600}.{mac}",
        f"{expires}.{flipped}",
        f"{int(time.time()) - 1}.{mac}",
        "",
        ".",
        mac,
        TOKEN,
    ]
    for bad in forged:
        assert status_of(server, "GET", f"/api/events?{urlencode({'ticket': bad})}", {}) == 401
    # An events ticket opens nothing else: not the job list, not a playlist, not a mutation.
    for path in ("/api/jobs", "/api/dlq", f"/api/jobs/{'0' * 32}/hls/master.m3u8"):
        assert status_of(server, "GET", f"{path}?{urlencode({'ticket': ticket})}", {}) == 401
    assert status_of(server, "POST", f"/api/uploads?{urlencode({'ticket': ticket})}", {}) == 401


def cross_site_headers(server: Any) -> list[dict[str, str]]:
    """What browsers send on requests that another page made (swept: Fetch metadata, Origin)."""
    port = urlsplit(server.base).port
    return [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed frame, a data: URL
        {"Origin": f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}"},  # same site
        {"Origin": f"https://127.0.0.1:{port}"},
        {"Origin": f"http://localhost:{port}"},  # another origin, even if it is this machine
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": server.base},
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
    ]


def test_cross_site_upload_is_refused_and_nothing_is_created(server: Any, media_dir: Path) -> None:
    data = make_video(media_dir / "api-csrf.mp4", 160, 90, duration=1).read_bytes()
    before, keys = job_total(server), upload_keys()
    for headers in cross_site_headers(server):
        # With the token too: the origin check does not rely on the token being secret.
        for auth in ({}, AUTH):
            assert_error(*upload(server, "csrf.mp4", data, {**auth, **headers}), 403, "cross_site")
    assert job_total(server) == before and upload_keys() == keys
    # The page itself (same origin, as Chromium labels it) may upload.
    same = {"Origin": server.base, "Sec-Fetch-Site": "same-origin"}
    status, doc = upload(server, "same-origin.mp4", data, {**AUTH, **same})
    assert status == 202, doc
    assert job_total(server) == before + 1
    assert wait_job(server, doc["job_id"])["state"] == "completed"


def test_untrusted_host_headers_get_400(server: Any) -> None:
    port = urlsplit(server.base).port
    untrusted = [
        "evil.example",
        f"evil.example:{port}",
        f"127.0.0.1.nip.io:{port}",
        f"localhost.evil.example:{port}",
        f"{EXTRA_HOST}.evil:{port}",
        "",
    ]
    for host in untrusted:
        for method, path in (
            ("GET", "/"),
            ("GET", "/api/health"),
            ("GET", "/api/jobs"),
            ("POST", "/api/uploads"),
        ):
            status, headers, body = http(
                method, f"{server.base}{path}", body=None, headers={**AUTH, "Host": host}
            )
            assert status == 400, (host, method, path, status, body[:200])
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"{EXTRA_HOST}:{port}"):
        status, _, _ = http("GET", f"{server.base}/api/jobs", headers={**AUTH, "Host": host})
        assert status == 200, host


def test_security_headers_on_every_response(server: Any) -> None:
    s3_origin = os.environ["ENCODEQ_S3_ENDPOINT"].rstrip("/")
    answers = [
        http("GET", f"{server.base}/"),
        http("GET", f"{server.base}/static/app.js"),
        http("GET", f"{server.base}/api/health"),
        http("GET", f"{server.base}/api/jobs"),  # 401
        http("GET", f"{server.base}/api/jobs", headers=AUTH),
        http("GET", f"{server.base}/api/nothing", headers=AUTH),  # 404
        http(
            "POST",
            f"{server.base}/api/uploads",
            body=b"x",
            headers={**AUTH, "Origin": "http://evil.example"},
        ),  # 403
    ]
    assert [a[0] for a in answers] == [200, 200, 200, 401, 200, 404, 403]
    for _, headers, _ in answers:
        headers = {k.lower(): v for k, v in headers.items()}
        csp = dict(
            [*d.strip().split(" ", 1), ""][:2]
            for d in headers["content-security-policy"].split(";")
        )
        assert csp["frame-ancestors"] == "'none'" and csp["default-src"] == "'self'"
        assert csp["script-src"] == "'self'"  # no CDN, no inline script on the page origin
        assert s3_origin in csp["media-src"].split() and s3_origin in csp["connect-src"].split()
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"


@pytest.mark.unit
def test_page_loads_scripts_from_the_app_only() -> None:
    static = ROOT / "uploader" / "web" / "static"
    page = (static / "index.html").read_text()
    sources = re.findall(r"<script\b[^>]*\bsrc=\"([^\"]+)\"", page)
    assert sources and all(s.startswith("/static/") for s in sources), sources
    assert not re.search(r"<script\b(?![^>]*\bsrc=)", page), "no inline script"
    assert not re.findall(r"(?:src|href)=\"(?:https?:)?//", page)
    script = (static / "app.js").read_text()
    assert "localStorage" not in script and "sessionStorage" in script
    assert not re.search(r"importScripts|import\(|createElement\(\"script\"\)", script)


def test_upload_temp_file_is_private_while_it_streams(server: Any, work_dir: Path) -> None:
    """Half an upload sent, the other half held back: the file being written is 0600 in the
    0700 private folder; once the upload ends it is gone."""
    folder = work_dir / UPLOAD_FOLDER
    before = set(folder.glob("upload-*")) if folder.exists() else set()
    body, content_type = multipart("slow.mp4", os.urandom(512 * 1024))
    parts = urlsplit(server.base)
    conn = HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.putrequest("POST", "/api/uploads")
    for name, value in {
        **AUTH,
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
    }.items():
        conn.putheader(name, value)
    conn.endheaders()
    half = len(body) // 2
    conn.send(body[:half])
    [temp] = wait_for(lambda: list(set(folder.glob("upload-*")) - before), 30, "the temp file")
    assert stat.S_IMODE(temp.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    conn.send(body[half:])
    response = conn.getresponse()
    assert response.status == 202, response.read()
    response.read()
    conn.close()
    assert not temp.exists()


def test_without_a_token_one_is_generated_and_its_link_printed(fleet: WorkerFleet) -> None:
    server = start_server(env={"ENCODEQ_API_TOKEN": ""})
    try:
        port = urlsplit(server.base).port
        assert server.link == f"http://127.0.0.1:{port}/#token={server.token}", server.output()
        assert len(server.token) >= 40  # 256 random bits
        assert_error(*http_json("GET", f"{server.base}/api/jobs"), 401, "unauthorized")
        status, doc = http_json(
            "POST", f"{server.base}/api/uploads", body=b"x", headers={"Content-Type": "text/plain"}
        )
        assert_error(status, doc, 401, "unauthorized")  # loopback is no excuse
        assert http_json("GET", f"{server.base}/api/jobs", headers=server.auth)[0] == 200
        assert http_json("GET", f"{server.base}/api/jobs", headers=AUTH)[0] == 401
        # The link's page is the dashboard; the token is in the fragment, never sent.
        assert http("GET", server.link)[0] == 200
    finally:
        assert server.stop() in (0, -15), server.output()[-3000:]
    again = start_server(env={"ENCODEQ_API_TOKEN": ""})
    try:
        assert again.token and again.token != server.token
    finally:
        again.stop()


def serve_refused(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        resolve(argv), capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


@pytest.mark.unit
def test_a_well_known_token_off_loopback_is_refused() -> None:
    # Two binds here (the command wiring); test_compose.py sweeps the rule itself in-process.
    for host in ("0.0.0.0", "example.com"):
        result = serve_refused(
            serve_argv(8000, host=host),
            {"ENCODEQ_API_TOKEN": "encodeq-local-token"},
        )
        assert result.returncode == 2, (host, result.stdout, result.stderr)
        assert "well-known" in result.stderr and "ENCODEQ_API_TOKEN" in result.stderr
        assert "Traceback" not in result.stderr


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def test_compose_uploader_command_runs_natively(fleet: WorkerFleet) -> None:
    """The compose service's command, exactly as written, with compose's token (none: generated)."""
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["uploader"]
    command = service["command"]
    assert command == serve_argv(8000, host="0.0.0.0")
    assert "${ENCODEQ_BIND:-127.0.0.1}:8000:8000" in [str(p) for p in service["ports"]]
    assert service["environment"]["ENCODEQ_API_TOKEN"] == "${ENCODEQ_API_TOKEN:-}"
    refused = serve_refused(command, {"ENCODEQ_API_TOKEN": "encodeq-local-token"})
    assert refused.returncode == 2, refused.stderr
    if not port_free(8000):
        pytest.skip("port 8000 is taken on this machine")
    server = start_server(argv=command, env={"ENCODEQ_API_TOKEN": ""}, port=8000)
    try:
        # Bound to every interface in the container: the link names what the host reaches.
        assert server.link and server.link.startswith("http://127.0.0.1:8000/#token=")
        assert_error(
            *http_json("POST", f"{server.base}/api/uploads", body=b"x"), 401, "unauthorized"
        )
        status, doc = http_json(
            "POST", f"{server.base}/api/uploads", body=b"x", headers=server.auth
        )
        assert_error(status, doc, 415, "not_multipart")
    finally:
        assert server.stop() in (0, -15), server.output()[-3000:]


# --- SSE -----------------------------------------------------------------------------------------
class EventStream:
    """``GET /api/events`` read as a browser's EventSource would: a ticket in the URL (it sends
    no headers), then ``data:`` lines of JSON."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.base = base
        self.conn = HTTPConnection(parts.hostname, parts.port, timeout=10)

    def __enter__(self) -> EventStream:
        status, doc = http_json("POST", f"{self.base}/api/tickets/events", headers=AUTH)
        assert status == 200, doc
        path = f"/api/events?{urlencode({'ticket': doc['ticket']})}"
        self.conn.request("GET", path, headers={"Accept": "text/event-stream"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("content-type", "").startswith("text/event-stream")
        hello = self.until(lambda e: e.get("event") == "hello", timeout=10)
        assert hello[-1]["connected"] is True  # subscribed: what happens from now on arrives
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def until(self, done: Callable[[dict], bool], timeout: float) -> list[dict]:
        seen: list[dict] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.response.readline().decode().rstrip("\n")
            if line.startswith("data: "):
                seen.append(json.loads(line[len("data: ") :]))
                if done(seen[-1]):
                    return seen
        raise AssertionError(f"no matching event within {timeout}s; saw {seen[-10:]}")
