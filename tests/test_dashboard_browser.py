"""The dashboard end to end in headless Chromium (Debian's package, driven by Playwright).

A person's path through the page: upload through the file field, watch the bars move and the job
complete, play the result (hls.js, HLS through presigned URLs), and play a job that still encodes;
upload a broken file, find it in the DLQ
panel, fix its source in S3, press replay, see the job complete. Every wait is on a condition in
the page (Playwright's selectors and functions), never on a clock.

The page is opened as a person does: through the ``#token=`` link ``encodeq serve`` prints (it
generated the token: none is set). The token must leave the address bar for sessionStorage, never
reach localStorage, and the page must run under its own Content-Security-Policy without a single
violation (a blocked script, style or segment fetch would show up as one).
ENCODEQ_README_SCREENSHOT=1 refreshes the README's docs/dashboard.png from the mid-encode shot.
"""

from __future__ import annotations

import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from support.browser import CHROMIUM, chromium, upload_through_page, watch_errors
from support.fleet import WorkerFleet, held_ffmpeg, processes_with
from support.http import start_server
from support.media import make_video
from support.storage import open_cors, storage
from support.waiting import wait_for

from core.celery_app import publisher
from core.events import emit
from core.layout import RENDITIONS, UPLOADS
from core.manifest import JobStore
from core.storage import parse_uri

README_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "dashboard.png"
JOB_S = 120_000  # milliseconds a job may take, at most, in Playwright's units

pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
if not CHROMIUM.exists():  # pragma: no cover - .ci/run installs it
    pytest.skip("apt-get install chromium", allow_module_level=True)

#: Records every value each job's progress elements take (rows are re-rendered, not mutated).
RECORD_PROGRESS = """() => {
  window.progressSeen = [];
  const record = (root) => root.querySelectorAll && root.querySelectorAll("[data-progress]")
    .forEach((p) => window.progressSeen.push({
      job: p.closest("tr[data-job-id]")?.dataset.jobId, value: Number(p.dataset.progress) }));
  new MutationObserver((changes) => changes.forEach((c) => c.addedNodes.forEach(record)))
    .observe(document.getElementById("job-rows"), { childList: true, subtree: true });
}"""

MID_ENCODE = """(id) => [...document.querySelectorAll(`tr[data-job-id="${id}"] [data-progress]`)]
  .some((p) => Number(p.dataset.progress) > 0 && Number(p.dataset.progress) < 100)"""

#: The server's runs of a job (GET /api/timeline), fetched by the page with its own token.
TIMELINE_RUNS = """async (job) => {
  const token = sessionStorage.getItem("encodeq-token");
  const answer = await fetch("/api/timeline", { headers: { Authorization: `Bearer ${token}` } });
  return (await answer.json()).runs.filter((r) => r.job_id === job);
}"""
#: Whether the timeline shows a finished bar of the job for every kind of task asked.
TIMELINE_KINDS = """([job, kinds]) => kinds.every((k) => document.querySelector(
  `#timeline .bar[data-job="${job}"][data-kind="${k}"][data-outcome="ok"]`))"""


@pytest.fixture(scope="module")
def fleet() -> Iterator[WorkerFleet]:
    """Two workers, one ffmpeg thread each: an encode lasts long enough to be seen moving."""
    fleet = WorkerFleet()
    for name in ("alpha", "beta"):
        fleet.start(name, env={"ENCODEQ_FFMPEG_THREADS": "1"})
    yield fleet
    fleet.stop_all()


@pytest.fixture(scope="module")
def server(fleet: WorkerFleet) -> Iterator[Any]:
    open_cors(RENDITIONS)  # what MinIO does by default: the player fetches segments cross-origin
    server = start_server(env={"ENCODEQ_API_TOKEN": ""})
    assert server.link, server.output()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Any, server: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    errors = watch_errors(page)
    page.goto(server.link)
    page.wait_for_selector("body[data-ready=true]")
    # The token left the address bar (and the history entry) for this tab's sessionStorage.
    assert "token" not in page.url and page.url.rstrip("/") == server.base
    stored = page.evaluate("() => [sessionStorage.getItem('encodeq-token'), localStorage.length]")
    assert stored == [server.token, 0]
    page.evaluate(RECORD_PROGRESS)
    yield page
    context.close()
    assert not errors, errors


def test_upload_watch_progress_and_play(page: Any, media_dir: Path) -> None:
    source = make_video(media_dir / "browser 720p.mp4", 1280, 720, duration=10)
    segment_requests: list[str] = []
    page.on("request", lambda r: segment_requests.append(r.url) if ".ts?" in r.url else None)
    masters: list[str] = []
    page.on("request", lambda r: masters.append(r.url) if "master.m3u8" in r.url else None)

    job_id = upload_through_page(page, str(source))
    row = f'tr[data-job-id="{job_id}"]'
    page.wait_for_selector(row)
    page.wait_for_function(MID_ENCODE, arg=job_id, timeout=JOB_S)
    # Mid-encode, always taken (it must not fail); written over the README's only when asked.
    refresh = os.environ.get("ENCODEQ_README_SCREENSHOT") == "1"
    shot = page.screenshot(path=str(README_SCREENSHOT) if refresh else None)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.locator(f"{row} [data-rendition]").count() == 4  # 720p, 480p, 360p, 240p
    assert page.locator(f"{row} .who").first.inner_text().strip()  # the worker holding it

    page.wait_for_selector(f'{row}[data-state="completed"]', timeout=JOB_S)
    # 10 s is chunked by default: what plays below was encoded in chunks, joined and seam-checked
    manifest = JobStore(storage()).load(job_id)  # with its rendition records
    assert manifest is not None and manifest.mode == "chunked" and manifest.chunks is not None
    assert manifest.chunks.count > 1
    joined = [r for r in manifest.renditions if r.name not in manifest.chunks.whole_rungs]
    assert joined and all(r.seam_check and r.seam_check.passed for r in joined)
    values = [s["value"] for s in page.evaluate("window.progressSeen") if s["job"] == job_id]
    assert any(0 < v < 100 for v in values), values  # it moved, and was seen moving
    bars = page.locator(f"{row} [data-progress]")
    assert [bars.nth(i).get_attribute("data-progress") for i in range(4)] == ["100"] * 4
    workers = page.locator("#worker-list [data-worker]")
    assert workers.count() >= 1
    timeline_shows_every_run(page, job_id, manifest)

    page.click(f'{row} [data-action="play"]')
    page.wait_for_function(
        "() => { const v = document.getElementById('video');"
        " return v.readyState >= 2 && v.currentTime > 0.5; }",
        timeout=60_000,
    )
    assert page.eval_on_selector("#video", "v => v.dataset.player") == "hls.js"
    src = urlsplit(masters[-1])  # hls.js fetched the master through the API, with a ticket
    assert src.path == f"/api/jobs/{job_id}/hls/master.m3u8" and "ticket=" in src.query
    s3 = urlsplit(os.environ["ENCODEQ_S3_ENDPOINT"]).netloc
    signed = [u for u in segment_requests if urlsplit(u).netloc == s3 and "X-Amz-Signature" in u]
    assert signed, segment_requests  # segments came from S3, through presigned URLs

    # The poster, presigned like the segments, is a JPEG.
    poster = page.eval_on_selector("#video", "v => v.poster")
    assert urlsplit(poster).netloc == s3 and "X-Amz-Signature" in poster
    with urllib.request.urlopen(poster, timeout=10) as response:
        assert response.read(3) == b"\xff\xd8\xff"
    # The quality menu lists every rung; choosing the lowest plays it.
    options = page.eval_on_selector_all("#quality option", "os => os.map(o => o.textContent)")
    assert options[0] == "auto" and sorted(o.split("p")[0] for o in options[1:]) == sorted(
        ["720", "480", "360", "240"]
    ), options
    assert page.eval_on_selector("#quality", "s => !s.disabled")
    [lowest] = [i - 1 for i, o in enumerate(options) if o.startswith("240p")]
    page.select_option("#quality", str(lowest))
    page.wait_for_function(
        "(level) => { const v = document.getElementById('video');"
        " return v.dataset.level === String(level) && v.videoHeight === 240; }",
        arg=lowest,
        timeout=30_000,
    )
    assert "playing 240p" in page.inner_text("#playing-level")


def timeline_shows_every_run(page: Any, job_id: str, manifest: Any) -> None:
    """The timeline (the page's first section) holds a bar per run of the job, ended ok, in the
    lane of the worker and the row of the node that ran it: one of each kind of task at least."""
    assert page.eval_on_selector("main > section", "s => s.id") == "timeline"
    kinds = {"probe", "encode_chunk", "join", "finalize"}
    kinds |= {"encode"} if manifest.chunks.whole_rungs else set()
    kinds |= {"encode_audio"} if manifest.source.probe.has_audio else set()
    page.wait_for_function(TIMELINE_KINDS, arg=[job_id, sorted(kinds)], timeout=30_000)
    runs = [r for r in page.evaluate(TIMELINE_RUNS, job_id) if r["outcome"] == "ok"]
    assert {r["task"] for r in runs} >= kinds
    for run in runs:
        lane = f'#timeline .lane[data-worker="{run["worker_hostname"]}"]'
        bar = f'{lane} .row[data-node="{run["worker"]}"] .bar[data-run="{run["run"]}"]'
        page.wait_for_selector(f'{bar}[data-outcome="ok"]', timeout=10_000)
        assert page.get_attribute(bar, "data-task-id") == run["task_id"]
        assert page.get_attribute(bar, "data-label") == run["label"]
        assert page.get_attribute(bar, "data-redelivered") == "false"
    assert {r["worker_hostname"].split("@")[0] for r in runs} <= {"alpha", "beta"}, runs


def run_event(kind: str, task_id: str, worker: str, pid: int, **fields: Any) -> None:
    """A task run event as a worker's pool process sends it (worker/task_events.py)."""
    lane = worker.removesuffix(".control").removesuffix(".bulk")
    base = {"task": "encode", "job_id": "f" * 32, "label": "240p", "queue": "encodeq.encode"}
    run = {"task_id": task_id, "worker": worker, "worker_hostname": lane, "pid": pid}
    emit(
        publisher(), f"task.{kind}", **{**base, "redelivered": False, "retries": 0, **run, **fields}
    )
    time.sleep(0.05)  # a run lasts a moment: its start and end differ


def test_timeline_marks_redeliveries_retries_and_dead_letters(page: Any) -> None:
    """Runs as the broker sees them when things break, published as workers publish them: a
    holder that died (its run never ends; the same task starts again elsewhere, redelivered), a
    retry, a dead letter. The page tells each apart, and a page opened later shows the same."""
    held, flaky, poison = (str(uuid.uuid4()) for _ in range(3))
    run_event("started", held, "ghost@test.bulk", 11)
    run_event("started", held, "rescue@test", 21, redelivered=True)
    run_event("finished", held, "rescue@test", 21, redelivered=True, outcome="ok")
    run_event("started", flaky, "rescue@test", 22)
    run_event("finished", flaky, "rescue@test", 22, outcome="retry", countdown=2, reason="S3 down")
    run_event("started", flaky, "rescue@test", 22, retries=1)
    run_event("finished", flaky, "rescue@test", 22, retries=1, outcome="ok")
    run_event("started", poison, "rescue@test.control", 23, task="probe", label="probe")
    dead = {"outcome": "dead", "code": "not_a_video", "reason": "no video stream"}
    run_event("finished", poison, "rescue@test.control", 23, task="probe", label="probe", **dead)
    for opened in ("live", "later"):
        if opened == "later":  # the same runs from GET /api/timeline alone
            page.reload()
            page.wait_for_selector("body[data-ready=true]")
        ghost = '#timeline .lane[data-worker="ghost@test"] .row[data-node="ghost@test.bulk"]'
        page.wait_for_selector(f'{ghost} .bar[data-task-id="{held}"][data-outcome="lost"]')
        rescued = f'#timeline .lane[data-worker="rescue@test"] .bar[data-task-id="{held}"]'
        page.wait_for_selector(f'{rescued}[data-outcome="ok"][data-redelivered="true"]')
        assert "previous holder died before acking" in page.get_attribute(rescued, "title")
        assert page.locator(f"{rescued} .mark.redelivered").count() == 1
        retried = f'#timeline .bar[data-task-id="{flaky}"]'
        page.wait_for_selector(f'{retried}[data-outcome="ok"][data-retries="1"]')
        first = page.locator(f'{retried}[data-outcome="retry"]')
        assert "retry in 2 s" in first.get_attribute("title") and first.count() == 1
        died = f'#timeline .row[data-node="rescue@test.control"] .bar[data-task-id="{poison}"]'
        page.wait_for_selector(f'{died}[data-outcome="dead"][data-kind="probe"]')
        assert "not_a_video" in page.get_attribute(died, "title")
        assert page.locator(f"{died} .mark.dead").count() == 1


#: ``GET /api/fleet`` as ``encodeq up`` answers it (routes/fleet.py): one worker idle, one killed.
FLEET = {
    "workers": [
        {"name": "idle", "hostname": "idle@test", "pid": 101, "state": "running"},
        {"name": "ghost", "hostname": "ghost@test", "pid": 102, "state": "killed"},
    ],
    "target": 2,
    "consumers": 1,
    "storage": {"kind": "test", "endpoint": "-", "cut_until": None},
    "broker": {"state": "up", "detail": ""},
}


def test_timeline_has_a_lane_for_every_worker_of_the_fleet(page: Any) -> None:
    """Under ``encodeq up`` (its answer stood in for here: ``encodeq serve`` has no fleet) every
    worker has a lane, an idle one too; a killed worker's lane is dimmed, and the run it held
    stays open (``running``, marked orphaned) until the broker gives it to someone else."""
    orphan = str(uuid.uuid4())
    run_event("started", orphan, "ghost@test.bulk", 12)
    page.route("**/api/fleet", lambda route: route.fulfill(json=FLEET))
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    idle = '#timeline .lane[data-worker="idle@test"][data-state="running"]'
    page.wait_for_selector(idle)
    assert page.locator(f"{idle} .bar").count() == 0 and "idle" in page.inner_text(idle)
    ghost = '#timeline .lane[data-worker="ghost@test"][data-state="killed"]'
    held = f'{ghost} .row[data-node="ghost@test.bulk"] .bar[data-task-id="{orphan}"]'
    page.wait_for_selector(f'{held}[data-outcome="running"][data-orphan="true"]')
    run_event("started", orphan, "idle@test", 13, redelivered=True)
    page.wait_for_selector(f'{held}[data-outcome="lost"]')
    page.wait_for_selector(f'{idle} .bar[data-task-id="{orphan}"][data-redelivered="true"]')


def test_plays_the_lowest_rung_while_the_job_still_encodes(page: Any, media_dir: Path) -> None:
    """The top rung's join is held (its ffmpeg stopped), so the job cannot complete; the lowest
    rung, joined first, already plays in the page's player (hls.js) from the start."""
    source = make_video(media_dir / "browser-live.mp4", 1280, 720, duration=10)
    job_id = upload_through_page(page, str(source))
    row = f'tr[data-job-id="{job_id}"]'
    with held_ffmpeg("/720p/seg_", also=job_id):  # the 720p join writes its segments there
        page.wait_for_selector(f'{row} [data-action="play"]', timeout=JOB_S)
        assert page.get_attribute(row, "data-state") == "encoding"
        page.click(f'{row} [data-action="play"]')
        page.wait_for_function(
            "() => { const v = document.getElementById('video');"
            " return v.readyState >= 2 && v.currentTime > 0.5; }",
            timeout=60_000,
        )
        manifest = JobStore(storage()).load(job_id)
        assert manifest is not None and manifest.state == "encoding"  # still held: not done
        assert page.eval_on_selector("#video", "v => v.videoHeight") == 240  # the lowest rung
    page.wait_for_selector(f'{row}[data-state="completed"]', timeout=JOB_S)


def test_cancel_from_the_page(page: Any, media_dir: Path) -> None:
    """The row's cancel button: the job becomes cancelled and no ffmpeg of it is left."""
    source = make_video(media_dir / "browser-cancel.mp4", 640, 360, duration=10)
    job_id = upload_through_page(page, str(source))
    row = f'tr[data-job-id="{job_id}"]'
    with held_ffmpeg(job_id):  # it cannot finish before the click
        page.click(f'{row} [data-action="cancel"]')
        page.wait_for_selector(f'{row}[data-state="cancelled"]', timeout=30_000)
        wait_for(lambda: not processes_with(job_id, "ffmpeg"), 2, "no ffmpeg of the job")
    # The run whose ffmpeg the cancel killed ends as cancelled on the timeline, not as a failure.
    page.wait_for_selector(f'#timeline .bar[data-job="{job_id}"][data-outcome="cancelled"]')
    manifest = JobStore(storage()).load(job_id)
    assert manifest is not None and manifest.state == "cancelled"
    assert page.locator(f'{row} [data-action="cancel"]').count() == 0


@pytest.mark.slow
def test_broken_upload_lands_in_the_dlq_and_replays_after_the_fix(
    page: Any, media_dir: Path
) -> None:
    broken = {"name": "broken.mp4", "mimeType": "video/mp4", "buffer": os.urandom(64 * 1024)}
    job_id = upload_through_page(page, broken)
    page.wait_for_selector(f'tr[data-job-id="{job_id}"][data-state="failed"]', timeout=JOB_S)
    dead = f'tr[data-dlq-job="{job_id}"][data-dlq-id]'
    page.wait_for_selector(dead, timeout=30_000)
    text = page.inner_text(dead)
    assert "encodeq.probe" in text and "not_a_video" in text and "InputError" in text
    assert len(page.get_attribute(dead, "data-dlq-id") or "") == 12

    # Fix the source where the job expects it (same key), then replay from the page.
    manifest = JobStore(storage()).load(job_id)
    assert manifest is not None
    _, key = parse_uri(manifest.source.uri)
    storage().put_file(UPLOADS, key, make_video(media_dir / "fixed.mp4", 640, 360, duration=3))
    page.click(f'{dead} [data-action="replay"]')
    page.wait_for_selector(f'tr[data-job-id="{job_id}"][data-state="completed"]', timeout=JOB_S)
    page.wait_for_selector(dead, state="detached", timeout=30_000)
    assert "replayed" in page.inner_text("#dlq-note")


def test_without_the_token_the_page_asks_for_it(browser: Any, server: Any) -> None:
    """Opened without the link: nothing loads but the prompt; a wrong token is refused; the right
    one, typed in, brings the page up."""
    context = browser.new_context()
    page = context.new_page()
    errors = watch_errors(page)
    try:
        page.goto(server.base)
        page.wait_for_selector("#token-row:not([hidden])")
        assert page.get_attribute("body", "data-ready") is None
        page.fill("#token", "not-the-token")
        with page.expect_navigation():
            page.click("#token-form button[type=submit]")
        page.wait_for_selector("#token-row:not([hidden])")
        assert "refused" in page.inner_text("#token-note")
        page.fill("#token", server.token)
        with page.expect_navigation():
            page.click("#token-form button[type=submit]")
        page.wait_for_selector("body[data-ready=true]")
        page.wait_for_selector('#live[data-live="true"]')  # the event stream, through a ticket
    finally:
        context.close()
    assert not errors, errors
