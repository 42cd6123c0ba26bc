"""``encodeq up`` in the browser, the way its README says to use it: open the printed link,
upload through the page, scale to 3 and back to 1 with the page's buttons (the broker itself
counts the consumers), kill the worker from the page while it holds an encode (late acks: the
task comes back, is redelivered, and the job completes), play the result and switch quality,
Ctrl-C, start again: the job and its renditions are still there and still play.

ENCODEQ_README_SCREENSHOT=1 refreshes README's docs/up.png, taken just after the kill.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.browser import CHROMIUM, chromium, play_and_choose, upload_through_page, watch_errors
from support.fleet import held_ffmpeg, worker_holding
from support.media import make_video
from support.storage import wait_for_job
from support.up import Up
from support.waiting import wait_for

from console.s3server import free_port

pytestmark = pytest.mark.slow
README_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "up.png"
JOB_MS = 180_000

pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
if not CHROMIUM.exists():  # pragma: no cover - .ci/run installs it
    pytest.skip("apt-get install chromium", allow_module_level=True)


def running_in_page(page: object, count: int) -> None:
    page.wait_for_function(  # type: ignore[attr-defined]
        "(n) => { const ws = [...document.querySelectorAll('#fleet-workers li')];"
        " return ws.length === n && ws.every((w) => w.dataset.state === 'running'); }",
        arg=count,
        timeout=120_000,
    )


def test_up_in_the_browser(
    tmp_path: Path, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENCODEQ_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ENCODEQ_FFMPEG_THREADS", "1")  # an encode lasts long enough to be held
    data_dir = tmp_path / "data"
    source = make_video(media_dir / "up 720p.mp4", 1280, 720, duration=8)
    up = Up(data_dir, workers=2)
    try:
        with chromium() as browser:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            errors = watch_errors(page)
            page.goto(up.link)
            page.wait_for_selector("body[data-ready=true]")
            page.wait_for_selector("#fleet:not([hidden])")
            running_in_page(page, 2)

            page.click("#scale-up")
            running_in_page(page, 3)
            assert wait_for(lambda: up.running(3), 60, "3 consumers, as the broker counts")
            page.click("#scale-down")
            running_in_page(page, 2)
            page.click("#scale-down")
            running_in_page(page, 1)
            assert wait_for(lambda: up.running(1), 60, "1 consumer, as the broker counts")

            job_id = upload_through_page(page, str(source))
            row = f'tr[data-job-id="{job_id}"]'
            with held_ffmpeg(job_id, timeout=120, also="hls_time") as ffmpeg:  # an encode's
                workers = {w["pid"]: w["name"] for w in up.fleet()["workers"]}
                name = worker_holding(ffmpeg, workers)
                # Its bar, once the page has the task's start: the task the kill takes away.
                running = '.bar[data-kind="encode"][data-outcome="running"]'
                bar = page.wait_for_selector(f'.lane[data-worker^="{name}@"] {running}')
                held = [bar.get_attribute("data-task-id")]
                page.click(f'#fleet-workers [data-kill="{name}"]')
                page.wait_for_selector('#narration li[data-kind="kill"]')
            # The held task comes back (RabbitMQ requeues what a dead connection held unacked)
            # and is redelivered, to w1 restarted by up: the narration and the timeline say so,
            # for the very task the killed worker held.
            page.wait_for_selector('#narration li[data-kind="redelivered"]', timeout=JOB_MS)
            redelivered = page.wait_for_selector('.bar[data-redelivered="true"]', timeout=JOB_MS)
            assert redelivered.get_attribute("data-task-id") in held, held
            refresh = os.environ.get("ENCODEQ_README_SCREENSHOT") == "1"
            page.screenshot(path=str(README_SCREENSHOT) if refresh else None, full_page=True)
            page.wait_for_selector(f'{row}[data-state="completed"]', timeout=JOB_MS)
            manifest = wait_for_job(job_id, 30)
            assert manifest.state == "completed"
            options = play_and_choose(page, job_id, "240p")
            assert len(options) == 5, options  # auto + 720p, 480p, 360p, 240p
            context.close()
            assert not errors, errors

            assert up.interrupt() == 0, up.output()[-3000:]
            up = Up(data_dir, workers=1)
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.goto(up.link)
            page.wait_for_selector(f'{row}[data-state="completed"]', timeout=60_000)
            play_and_choose(page, job_id, "360p")
            context.close()
    finally:
        if up.proc.poll() is None:
            up.interrupt()
