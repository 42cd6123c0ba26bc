"""``encodeq serve``'s JSON API, against the real app served by uvicorn in an ``encodeq serve``
subprocess, with real workers, RabbitMQ, S3 server and ffmpeg behind it.

Decided for non-video uploads: accepted (202), because ffprobe on a worker is what decides whether
bytes are a video; the job then fails with the probe's code (``not_a_video``) and its task is
dead-lettered, from where it can be replayed once the source is fixed, or purged.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from support import (
    ENCODEQ,
    WorkerFleet,
    ffprobe,
    http,
    http_json,
    make_video,
    multipart,
    start_server,
    storage,
    wait_for,
)

from encodeq.manifest import JobStore
from encodeq.storage import UPLOADS, parse_uri

TOKEN = "test-token-" + os.urandom(4).hex()
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 4 * 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fleet() -> Iterator[WorkerFleet]:
    fleet = WorkerFleet()
    fleet.start("alpha")
    fleet.start("beta")
    yield fleet
    fleet.stop_all()


@pytest.fixture(scope="module")
def server(fleet: WorkerFleet) -> Iterator[Any]:
    server = start_server(env={"ENCODEQ_API_TOKEN": TOKEN, "ENCODEQ_MAX_UPLOAD_BYTES": str(LIMIT)})
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
    status, doc = http_json("GET", f"{server.base}/api/jobs/{job_id}")
    assert status == 200, doc
    return doc


def wait_job(server: Any, job_id: str, timeout: float = 120) -> dict[str, Any]:
    return wait_for(lambda: (d := job(server, job_id))["state"] in ("completed", "failed") and d,
                    timeout, f"job {job_id} to end")  # fmt: skip


def job_total(server: Any) -> int:
    return http_json("GET", f"{server.base}/api/jobs")[1]["total"]


def upload_keys() -> set[str]:
    return set(storage().list_keys(UPLOADS))


# --- pages and reading ---------------------------------------------------------------------------
def test_page_static_files_and_config(server: Any) -> None:
    status, headers, page = http("GET", f"{server.base}/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'type="file"' in page
    for asset in ("app.js", "style.css"):
        assert http("GET", f"{server.base}/static/{asset}")[0] == 200
    status, config = http_json("GET", f"{server.base}/api/config")
    assert status == 200
    assert config == {"max_upload_bytes": LIMIT, "token_required": True,
                      "queues": ["encodeq.control", "encodeq.encode", "encodeq.dlq"]}  # fmt: skip


def test_unknown_jobs_and_routes_are_json_errors(server: Any) -> None:
    assert_error(*http_json("GET", f"{server.base}/api/jobs/not-a-job"), 400, "invalid_job_id")
    assert_error(*http_json("GET", f"{server.base}/api/jobs/{'0' * 32}"), 404, "unknown_job")
    playlist = f"{server.base}/api/jobs/{'0' * 32}/hls/master.m3u8"
    assert_error(*http_json("GET", playlist), 404, "unknown_job")
    assert_error(*http_json("GET", f"{server.base}/api/nothing"), 404, "not_found")
    assert_error(*http_json("DELETE", f"{server.base}/api/jobs"), 405, "method_not_allowed")
    assert_error(*http_json("GET", f"{server.base}/api/jobs?limit=x"), 400, "invalid_request")


# --- uploads: refusals ----------------------------------------------------------------------------
def test_upload_without_the_right_token_is_refused(server: Any, media_dir: Path) -> None:
    data = make_video(media_dir / "api-token.mp4", 160, 90, duration=1).read_bytes()
    before, keys = job_total(server), upload_keys()
    assert_error(*upload(server, "a.mp4", data, headers={}), 401, "unauthorized")
    assert_error(*upload(server, "a.mp4", data, {"Authorization": "Bearer nope"}), 401,
                 "unauthorized")  # fmt: skip
    assert_error(*upload(server, "a.mp4", data, {"Authorization": TOKEN}), 401, "unauthorized")
    status, headers, _ = http("POST", f"{server.base}/api/uploads", body=b"x")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert job_total(server) == before and upload_keys() == keys


def test_upload_bad_requests_get_clear_errors(server: Any) -> None:
    before, keys = job_total(server), upload_keys()
    url = f"{server.base}/api/uploads"
    status, doc = http_json("POST", url, body=b"raw bytes",
                            headers={**AUTH, "Content-Type": "video/mp4"})  # fmt: skip
    assert_error(status, doc, 415, "not_multipart")
    body, content_type = multipart("ignored", b"", field="title")
    body = body.replace(b'; filename="ignored"', b"")  # a plain field, no file
    assert_error(*http_json("POST", url, body=body, headers={**AUTH, "Content-Type": content_type}),
                 400, "missing_file")  # fmt: skip
    assert_error(*upload(server, "empty.mp4", b""), 400, "empty_file")
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
    assert_error(*http_json("POST", url, body=b"--nope\r\n\r\n", headers=headers), 400,
                 "bad_multipart")  # fmt: skip
    assert job_total(server) == before and upload_keys() == keys


def test_oversized_upload_is_refused_while_streaming(server: Any) -> None:
    """413 from the declared length, and, with no length declared (chunked), from the stream
    itself: the first byte over the limit ends it and nothing is stored."""
    before, keys = job_total(server), upload_keys()
    body, content_type = multipart("big.mp4", os.urandom(LIMIT + 1))
    status, doc = http_json("POST", f"{server.base}/api/uploads", body=body,
                            headers={**AUTH, "Content-Type": content_type})  # fmt: skip
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
    listing = http_json("GET", f"{server.base}/api/jobs?limit=200")[1]
    assert job_id in [j["job_id"] for j in listing["jobs"]]
    stored = JobStore(storage()).load(job_id)
    assert stored is not None and stored.source.uri == doc["source"]["uri"]

    # The master playlist points at our media playlists...
    status, headers, master = http("GET", f"{server.base}{done['links']['master_playlist']}")
    assert status == 200 and headers["content-type"].startswith("application/vnd.apple.mpegurl")
    assert headers["cache-control"] == "no-store"
    variants = [line for line in master.decode().splitlines() if line and line[0] != "#"]
    assert sorted(variants) == sorted(
        f"/api/jobs/{job_id}/hls/{r['name']}/index.m3u8" for r in done["renditions"]
    )
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
    # A player that knows nothing but the master URL plays all of it.
    info = ffprobe(f"{server.base}{done['links']['master_playlist']}")
    sizes = {(s["width"], s["height"]) for s in info["streams"] if s["codec_type"] == "video"}
    assert sizes == {(640, 360), (426, 240)}

    assert_error(*http_json("GET", f"{server.base}/api/jobs/{job_id}/hls/999p/index.m3u8"),
                 404, "unknown_rendition")  # fmt: skip
    workers = http_json("GET", f"{server.base}/api/workers")[1]["workers"]
    names = {w["name"] for w in workers}
    assert {r["worker"] for r in done["renditions"]} <= names


def test_events_stream_carries_the_lifecycle(server: Any, media_dir: Path) -> None:
    source = make_video(media_dir / "api-events.mp4", 426, 240, duration=2)
    with EventStream(server.base) as stream:
        status, doc = upload(server, "api-events.mp4", source.read_bytes())
        assert status == 202, doc
        job_id = doc["job_id"]
        events = stream.until(lambda e: e.get("event") == "job.completed"
                              and e.get("job_id") == job_id, timeout=120)  # fmt: skip
        # Queue depths come as events too, one sample a second.
        [*_, sample] = stream.until(lambda e: e.get("event") == "queues", timeout=10)
    mine = [e["event"] for e in events if e.get("job_id") == job_id]
    for kind in ("job.queued", "job.probing", "job.encoding", "rendition.started",
                 "rendition.completed", "job.completed"):  # fmt: skip
        assert kind in mine, mine
    assert mine.index("job.queued") < mine.index("job.probing") < mine.index("job.completed")
    started = [e for e in events if e.get("event") == "rendition.started"
               and e.get("job_id") == job_id]  # fmt: skip
    assert all(e["worker"] for e in started)
    assert {"encodeq.control", "encodeq.encode", "encodeq.dlq"} <= set(sample)


def test_queue_depths_now_and_over_time(server: Any) -> None:
    doc = wait_for(lambda: (d := http_json("GET", f"{server.base}/api/queues")[1])["history"]
                   and d, 10, "a queue sample")  # fmt: skip
    current = {q["name"]: q for q in doc["current"]}
    assert set(current) == {"encodeq.control", "encodeq.encode", "encodeq.dlq"}
    assert current["encodeq.encode"]["consumers"] >= 2  # alpha and beta
    assert all(isinstance(q["messages"], int) for q in current.values())
    assert all("time" in sample and "encodeq.dlq" in sample for sample in doc["history"])


# --- non-video uploads and the DLQ ----------------------------------------------------------------
def dlq_row(server: Any, job_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        status, doc = http_json("GET", f"{server.base}/api/dlq")
        assert status == 200, doc
        return next((m for m in doc["messages"] if m["job_id"] == job_id), None)

    return wait_for(find, 30, f"the probe of {job_id} in the DLQ", every=0.5)


def test_non_video_is_accepted_fails_and_is_replayed_or_purged(
    server: Any, media_dir: Path
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
    status, shown = http_json("GET", f"{server.base}/api/dlq/{row['id']}")
    assert status == 200 and shown["id"] == row["id"] and shown["failure"]["code"] == "not_a_video"
    assert shown["x_death"][0]["queue"] == "encodeq.control"
    assert_error(*http_json("GET", f"{server.base}/api/dlq/000000000000"), 404, "unknown_message")

    replay = f"{server.base}/api/dlq/{row['id']}/replay"
    assert_error(*http_json("POST", replay), 401, "unauthorized")
    assert_error(*http_json("POST", f"{server.base}/api/dlq/000000000000/replay", headers=AUTH),
                 404, "unknown_message")  # fmt: skip
    # Fix the source in place (same key), then replay: the job completes.
    s = storage()
    _, key = parse_uri(job(server, fixed)["source"]["uri"])
    s.put_file(UPLOADS, key, make_video(media_dir / "api-fixed.mp4", 320, 180, duration=2))
    status, outcome = http_json("POST", replay, headers=AUTH)
    assert status == 200, outcome
    assert outcome["ids"] == [row["id"]] and outcome["targets"] == {"encodeq -> control": 1}
    # Its state says failed until the replayed probe runs: wait for completed itself.
    done = wait_for(lambda: (d := job(server, fixed))["state"] == "completed" and d, 120,
                    f"replayed job {fixed} to complete")  # fmt: skip
    assert done["error"] is None
    assert_error(*http_json("POST", replay, headers=AUTH), 404, "unknown_message")

    doomed = dlq_row(server, purged)
    purge = f"{server.base}/api/dlq/{doomed['id']}/purge"
    assert_error(*http_json("POST", purge, headers={"Authorization": "Bearer nope"}), 401,
                 "unauthorized")  # fmt: skip
    status, outcome = http_json("POST", purge, headers=AUTH)
    assert status == 200, outcome
    assert outcome["ids"] == [doomed["id"]]
    export = Path(outcome["export"])
    assert doomed["id"] in export.read_text()  # exported before it was removed
    remaining = http_json("GET", f"{server.base}/api/dlq")[1]["messages"]
    assert not {m["id"] for m in remaining} & {row["id"], doomed["id"]}
    export.unlink()


# --- binding -------------------------------------------------------------------------------------
def test_loopback_without_a_token_needs_none(fleet: WorkerFleet) -> None:
    server = start_server(env={"ENCODEQ_API_TOKEN": ""})
    try:
        assert http_json("GET", f"{server.base}/api/config")[1]["token_required"] is False
        status, doc = http_json("POST", f"{server.base}/api/uploads", body=b"x",
                                headers={"Content-Type": "text/plain"})  # fmt: skip
        assert_error(status, doc, 415, "not_multipart")  # past the token check: none is needed
    finally:
        server.stop()


def serve_refused(argv: list[str]) -> subprocess.CompletedProcess:
    program = ENCODEQ[0] if argv[0] == "encodeq" else argv[0]
    return subprocess.run([program, *argv[1:]], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ENCODEQ_API_TOKEN": ""})  # fmt: skip


def test_non_loopback_address_without_a_token_is_refused() -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.com"):
        result = serve_refused(["encodeq", "serve", "--host", host, "--port", "8000"])
        assert result.returncode == 2, (host, result.stdout, result.stderr)
        assert "refusing to listen" in result.stderr and "ENCODEQ_API_TOKEN" in result.stderr
        assert "Traceback" not in result.stderr


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def test_compose_uploader_command_runs_natively(fleet: WorkerFleet) -> None:
    """The compose service's command, exactly as written, with compose's local default token."""
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["uploader"]
    command = service["command"]
    assert command == ["encodeq", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert "8000:8000" in [str(p) for p in service["ports"]]
    written = service["environment"]["ENCODEQ_API_TOKEN"]
    token = written.split(":-", 1)[1].rstrip("}") if written.startswith("${") else written
    assert token
    assert serve_refused(command).returncode == 2  # the same command without its token
    if not port_free(8000):
        pytest.skip("port 8000 is taken on this machine")
    server = start_server(argv=command, env={"ENCODEQ_API_TOKEN": token}, port=8000)
    try:
        assert_error(*http_json("POST", f"{server.base}/api/uploads", body=b"x"), 401,
                     "unauthorized")  # fmt: skip
        status, doc = http_json("POST", f"{server.base}/api/uploads", body=b"x",
                                headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert_error(status, doc, 415, "not_multipart")
    finally:
        assert server.stop() in (0, -15), server.output()[-3000:]


# --- SSE -----------------------------------------------------------------------------------------
class EventStream:
    """``GET /api/events`` read as a browser's EventSource would: ``data:`` lines of JSON."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.conn = HTTPConnection(parts.hostname, parts.port, timeout=10)

    def __enter__(self) -> EventStream:
        self.conn.request("GET", "/api/events", headers={"Accept": "text/event-stream"})
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
