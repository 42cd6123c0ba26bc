"""The page's "break it" buttons of ``encodeq up``, through its API, against the real parts: each
fault is injected the way the button injects it, and the test checks what a user must then see
happen (the events the narration is made of) and that nothing is lost.

- cut S3 while an encode uploads: the task fails, is retried with backoff (``task.finished``
  outcome ``retry``), and once S3 is restored (the page's "restore now") the job completes with
  every frame; meanwhile the API
  answers 503 ``storage_unavailable``, which the page shows, instead of a 500.
- a poison upload: the job fails with the probe's code, its task is dead-lettered with that reason
  (``task.finished`` outcome ``dead``), and a good job uploaded after it completes.
- restart RabbitMQ: the workers reconnect by themselves, the job in flight completes, no message
  is lost, and the fleet reports the broker back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.commands import upload_job
from support.dlq import dlq_for
from support.events import Events
from support.fleet import held_ffmpeg
from support.http import multipart
from support.media import make_video
from support.storage import assert_plays_every_frame, wait_for_job
from support.up import Up
from support.waiting import wait_for

from console.s3server import free_port

pytestmark = pytest.mark.slow
TASKS = ("task.*", "job.*")


@pytest.fixture
def s3_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODEQ_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")


@pytest.fixture
def up(s3_nowhere: None, tmp_path: Path) -> Iterator[Up]:
    up = Up(tmp_path / "data", workers=1)
    wait_for(lambda: up.running(1), 90, "one worker consuming")
    yield up
    assert up.interrupt() == 0, up.output()[-3000:]


def test_cut_s3_mid_encode_retries_and_completes(
    s3_nowhere: None, media_dir: Path, tmp_path: Path
) -> None:
    # Enough retries that the ones spent before the test restores S3 never exhaust them.
    up = Up(tmp_path / "data", workers=1, env={"ENCODEQ_MAX_RETRIES": "10"})
    try:
        wait_for(lambda: up.running(1), 90, "one worker consuming")
        video = make_video(media_dir / "up-cut.mp4", duration=4.0)
        with Events(TASKS) as events:
            job_id = upload_job(video, "--mode", "per-rung")
            with held_ffmpeg(job_id, also="hls_time"):  # an encode, held until S3 is cut
                status, cut = up.api("POST", "/api/chaos/storage-cut", {"seconds": 300})
                assert status == 202 and cut["cut_for_s"] == 300, cut
                assert up.fleet()["storage"]["cut_until"]
                status, away = up.api("GET", "/api/jobs")
                assert status == 503 and away["error"]["code"] == "storage_unavailable", away
            retried = events.wait(
                lambda e: (
                    e["event"] == "task.finished"
                    and e.get("job_id") == job_id
                    and e["outcome"] == "retry"
                ),
                120,
                "a retry of a task of the job",
            )
            # Backoff with full jitter: a countdown drawn from [0, backoff], zero included.
            assert retried.get("countdown") is not None, retried
            assert up.api("DELETE", "/api/chaos/storage-cut") == (200, {"storage": "up"})
            assert up.fleet()["storage"]["cut_until"] is None
            manifest = wait_for_job(job_id, 180)
        assert_plays_every_frame(manifest, 100, tmp_path)
        assert up.api("GET", "/api/jobs")[0] == 200
    finally:
        assert up.interrupt() == 0, up.output()[-3000:]


def test_a_poison_upload_is_dead_lettered_and_blocks_nothing(up: Up, media_dir: Path) -> None:
    with Events(TASKS) as events:
        body, content_type = multipart("poison.mp4", os.urandom(256 * 1024))
        status, job = up.api_raw("POST", "/api/uploads", body, content_type)
        assert status == 202, job
        poison = job["job_id"]
        good = upload_job(make_video(media_dir / "up-after-poison.mp4", duration=2.0))
        dead = events.wait(
            lambda e: e["event"] == "task.finished" and e.get("job_id") == poison,
            120,
            "the poison's task finishing",
        )
        assert dead["outcome"] == "dead" and dead["code"] == "not_a_video", dead
    assert wait_for_job(poison, 60).error.code == "not_a_video"
    assert wait_for(lambda: dlq_for(job_id=poison), 30, "its dead letter")
    assert wait_for_job(good, 180).state == "completed"


def test_a_broker_restart_loses_nothing(up: Up, media_dir: Path, tmp_path: Path) -> None:
    video = make_video(media_dir / "up-restart.mp4", duration=4.0)
    job_id = upload_job(video, "--mode", "per-rung")
    with held_ffmpeg(job_id, also="hls_time"):  # in flight, unacked, when the broker goes
        status, doc = up.api("POST", "/api/chaos/broker-restart")
        assert status == 202 and doc == {"broker": "restarting"}, doc
        assert up.api("POST", "/api/chaos/broker-restart")[0] == 409  # one at a time
        wait_for(lambda: up.fleet()["broker"]["state"] != "restarting", 180, "the broker back")
    assert up.fleet()["broker"]["state"] == "up", up.fleet()["broker"]
    wait_for(lambda: up.running(1), 120, "the worker consuming again")
    manifest = wait_for_job(job_id, 240)
    assert_plays_every_frame(manifest, 100, tmp_path)
    assert not dlq_for(job_id=job_id)
