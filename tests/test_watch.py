"""``encodeq watch``: a live view that starts from the manifests and follows the events.

Real RabbitMQ, S3 server, ffmpeg and ``encodeq worker`` processes. The job is queued while no
worker runs, so the watch provably starts from its manifest; workers start only once the watch is
subscribed, so everything after comes to it as events.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.broker import event_queues
from support.commands import ENCODEQ, encodeq
from support.fleet import WorkerFleet
from support.media import make_video
from support.waiting import wait_for

from core.queue_depths import WATCHED_QUEUES


@pytest.fixture(scope="module")
def fleet():
    """Started empty: the first test starts the workers itself, mid-way."""
    fleet = WorkerFleet()
    yield fleet
    fleet.stop_all()


def running(fleet: WorkerFleet) -> WorkerFleet:
    if not any(w.proc.poll() is None for w in fleet.workers):
        fleet.start("alpha")
        fleet.start("beta")
    return fleet


def upload(path: Path) -> str:
    result = encodeq("upload", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()[-1]


def start_watch(*args: str) -> subprocess.Popen:
    """``encodeq watch ...`` in the background; returns once its events queue is bound (or it
    already ended: a short job may finish first)."""
    env = {**os.environ, "COLUMNS": "160"}
    proc = subprocess.Popen(
        [*ENCODEQ, "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    wait_for(
        lambda: proc.poll() is not None or any(f".{proc.pid}." in q for q in event_queues()),
        30,
        "the watch to subscribe to encodeq.events",
    )
    return proc


@pytest.mark.slow
def test_watch_starts_from_the_manifest_then_follows_workers_live(
    fleet: WorkerFleet, media_dir: Path
) -> None:
    source = make_video(media_dir / "watch.mp4", 640, 360, duration=4)
    job_id = upload(source)  # no worker runs yet: the job waits in encodeq.control

    once = encodeq("watch", "--once", "--json")
    assert once.returncode == 0, once.stderr[-3000:]
    snapshot = json.loads(once.stdout)
    [job] = [j for j in snapshot["jobs"] if j["job_id"] == job_id]
    assert job["state"] == "queued" and job["events"] == 0  # known from its manifest alone
    depths = {q["name"]: q["messages"] for q in snapshot["queues"]}
    assert set(depths) == set(WATCHED_QUEUES)
    assert depths["encodeq.control"] >= 1

    watch = start_watch(job_id, "--until-done", "--json", "--timeout", "150")
    assert watch.poll() is None, watch.communicate()[1][-3000:]  # waiting for the queued job
    running(fleet)
    out, err = watch.communicate(timeout=180)
    assert watch.returncode == 0, err[-3000:]
    final = json.loads(out)
    [job] = final["jobs"]
    assert job["job_id"] == job_id and job["state"] == "completed"
    assert job["events"] > 0  # the rest came live, as events
    renditions = {r["name"]: r for r in job["renditions"]}
    assert set(renditions) == {"360p", "240p"}
    seen = {w["name"] for w in final["workers"]}
    assert seen and {name.split("@")[0] for name in seen} <= {"alpha", "beta"}
    for r in renditions.values():
        assert r["state"] == "completed" and r["progress"] == 100.0
        assert r["worker"] in seen
    assert sum(w["tasks_done"] for w in final["workers"]) >= 3  # probe and two encodes


def test_watch_shows_renditions_workers_and_queues_as_a_table(
    fleet: WorkerFleet, media_dir: Path
) -> None:
    running(fleet)
    source = make_video(media_dir / "watch-text.mp4", 426, 240, duration=2)
    job_id = upload(source)
    watch = start_watch(job_id, "--until-done", "--timeout", "150")
    out, err = watch.communicate(timeout=180)
    assert watch.returncode == 0, err[-3000:] + out[-3000:]
    assert job_id in out and "completed" in out
    assert "240p" in out and "100.0%" in out
    for queue in WATCHED_QUEUES:
        assert queue in out
    assert "workers seen" in out
    assert any(f"{name}@" in out for name in ("alpha", "beta"))


def test_watch_shows_a_failed_job_with_its_reason(fleet: WorkerFleet, tmp_path: Path) -> None:
    running(fleet)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(os.urandom(64 * 1024))
    job_id = upload(broken)
    watch = start_watch(job_id, "--until-done", "--timeout", "150")
    out, err = watch.communicate(timeout=180)
    assert watch.returncode == 1, err[-3000:] + out[-3000:]
    assert job_id in out and "failed" in out and "not_a_video" in out


def test_watch_of_an_unknown_job_says_so() -> None:
    result = encodeq("watch", "0" * 32, "--once")
    assert result.returncode == 1
    assert "no job" in result.stdout + result.stderr
