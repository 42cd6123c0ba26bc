"""``encodeq up`` and ``encodeq scale`` as a user runs them: the whole stack from one command.

``up`` starts the embedded S3 server (nothing answers at the configured endpoint, as on a machine
without MinIO), keeps its objects under the data directory, starts N supervised workers and the
dashboard; ``scale`` returns once the broker itself reports N consumers; a second ``up`` on the
same data directory says so; Ctrl-C stops everything warm and exits 0; a restart finds the job
and its renditions byte for byte. The browser side is tests/test_up_browser.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from support.broker import consumers
from support.commands import encodeq, upload_job
from support.fleet import proc_state, process_tree
from support.media import make_video
from support.storage import assert_plays_every_frame, storage, wait_for_job
from support.up import Up
from support.waiting import wait_for

from config.topology import WORK_QUEUE_KEYS
from console.s3server import free_port
from core.layout import RENDITIONS
from core.storage import parse_uri


@pytest.fixture
def s3_nowhere(monkeypatch: pytest.MonkeyPatch) -> str:
    """A loopback endpoint nothing answers at: ``up`` starts its embedded server there, and this
    test's own S3 calls and ``encodeq upload`` reach it too."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("ENCODEQ_S3_ENDPOINT", endpoint)
    return endpoint


def _rendition_bytes(playlist_uri: str) -> dict[str, bytes]:
    s = storage()
    _, key = parse_uri(playlist_uri)
    folder = key.rsplit("/", 1)[0] + "/"
    return {name: s.get_bytes(RENDITIONS, name) for name in s.list_keys(RENDITIONS, folder)}


@pytest.mark.slow
def test_up_scales_stops_warm_and_keeps_its_jobs(
    s3_nowhere: str, tmp_path: Path, media_dir: Path
) -> None:
    data_dir = tmp_path / "data"
    up = Up(data_dir, workers=1)
    try:
        assert up.state["s3_endpoint"] == s3_nowhere, up.output()
        assert wait_for(lambda: up.running(1), 90, "one worker consuming"), up.output()

        second = encodeq("up", "--data-dir", str(data_dir), "--port", str(free_port()))
        assert second.returncode == 2, second.stdout + second.stderr
        assert "already running" in second.stderr and str(up.proc.pid) in second.stderr

        # The order is random (seed printed): scale up, down, up again from wherever it is.
        seed = random.randrange(2**32)
        print(f"seed {seed}")
        for count in [*random.Random(seed).sample([0, 2, 3], 3), 1]:
            done = encodeq("scale", str(count), "--data-dir", str(data_dir), timeout=180)
            assert done.returncode == 0, done.stderr + up.output()[-3000:]
            # The broker, asked directly: N competing consumers on every work queue.
            for queue in WORK_QUEUE_KEYS:
                assert consumers(queue) == count, (queue, count)
            # (a worker stopping warm may still be exiting: it consumes nothing any more)
            staying = [w for w in up.fleet()["workers"] if w["state"] != "stopping"]
            assert len({w["pid"] for w in staying}) == count

        video = make_video(media_dir / "up-clip.mp4", duration=4.0)
        job_id = upload_job(video)
        manifest = wait_for_job(job_id, 180)
        assert_plays_every_frame(manifest, 100, tmp_path / "first")
        kept = {r.name: _rendition_bytes(r.playlist) for r in manifest.renditions}
        trees = [p for w in up.fleet()["workers"] for p in process_tree(w["pid"])]
        assert len(trees) >= 4  # a worker, its forked nodes, their pools

        assert up.interrupt() == 0, up.output()[-3000:]
        assert "stopped." in up.output()
        assert not (data_dir / "up.json").exists()
        # Warm stop: every worker, every node it forked and every pool process has exited.
        assert [p for p in trees if not _gone(p)] == []

        up = Up(data_dir, workers=1)
        status, jobs = up.api("GET", "/api/jobs")
        assert status == 200
        [again] = [j for j in jobs["jobs"] if j["job_id"] == job_id]
        assert again["state"] == "completed"
        restored = wait_for_job(job_id, 10)
        assert {r.name: _rendition_bytes(r.playlist) for r in restored.renditions} == kept
    finally:
        if up.proc.poll() is None:
            up.interrupt()


@pytest.mark.slow
def test_a_killed_worker_is_restarted_by_up(s3_nowhere: str, tmp_path: Path) -> None:
    up = Up(tmp_path / "data", workers=1)
    try:
        [before] = wait_for(lambda: up.running(1), 90, "one worker consuming")
        status, done = up.api("POST", "/api/fleet/workers/w1/kill")
        assert status == 200 and done["pid"] == before["pid"], done
        assert _gone(before["pid"])
        [after] = wait_for(lambda: up.running(1), 90, "w1 restarted and consuming")
        assert after["name"] == "w1" and after["pid"] != before["pid"] and after["restarts"] == 1
        status, refused = up.api("POST", "/api/fleet/workers/w9/kill")
        assert status == 404 and refused["error"]["code"] == "unknown_worker"
    finally:
        assert up.interrupt() == 0, up.output()[-3000:]


@pytest.mark.slow
def test_a_killed_up_stops_its_workers_and_a_new_one_starts(
    s3_nowhere: str, tmp_path: Path
) -> None:
    """``kill -9`` of up itself: its workers get SIGTERM from the kernel (pdeathsig) and stop
    warm; the lock died with it, so ``scale`` says no up runs and a new ``up`` starts."""
    data_dir = tmp_path / "data"
    up = Up(data_dir, workers=1)
    [worker] = wait_for(lambda: up.running(1), 90, "one worker consuming")
    tree = process_tree(worker["pid"])
    up.kill()
    # The worker, its forked nodes and their pools: all of them, not just the first.
    wait_for(lambda: all(_gone(p) for p in tree), 60, "the orphaned worker to stop")
    done = encodeq("scale", "1", "--data-dir", str(data_dir))
    assert done.returncode == 2 and "no encodeq up runs" in done.stderr, done.stderr
    again = Up(data_dir, workers=1)
    try:
        assert wait_for(lambda: again.running(1), 90, "the new up's worker consuming")
    finally:
        assert again.interrupt() == 0, again.output()[-3000:]


def test_scale_without_up_is_a_clear_error(tmp_path: Path) -> None:
    done = encodeq("scale", "2", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert "no encodeq up runs on" in done.stderr


def _gone(pid: int) -> bool:
    return proc_state(pid) in (None, "Z")  # exited, or a zombie its parent has yet to reap
