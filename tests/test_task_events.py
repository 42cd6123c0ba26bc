"""Every task run tells the timeline it started and how it ended (worker/task_events.py).

``task.started`` and ``task.finished`` come from Celery's own signals in the pool process, so a
real worker on the real broker is the test: each run of a clip in either mode is announced once
and ends ``ok``, named by what it works on, on the node that ran it; a run whose worker dies is
announced again, ``redelivered``, where the broker sends it next. The model the dashboard keeps
of those events (core/timeline.py) is checked beside them, and its pure parts at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery.exceptions import Reject, Retry
from support.commands import encodeq, upload_job
from support.events import Events
from support.fleet import Worker, held_encode, hold_ffmpeg
from support.media import make_video

from config.settings import Settings
from config.topology import CONTROL_QUEUE_NAME, WORK_QUEUE_KEYS
from console.tcp_proxy import TcpProxy
from core.errors import PermanentError
from core.manifest import JobStore
from core.storage import Storage
from core.timeline import Timeline
from worker import nodes
from worker.task_events import outcome_of
from worker.task_runs import label_of, queue_of, worker_hostname

KEYS = ("task.*", "job.*")


def settled(
    events: Events, job_id: str, taken: tuple[dict[str, Any], ...] = (), timeout: float = 60
) -> list[dict[str, Any]]:
    """The job's task events (with those ``taken`` already by ``events.wait``) once every run
    that started has finished and a second passed without news (a straggler watchdog may still
    come up after the job completed)."""
    deadline = time.monotonic() + timeout
    quiet_since, count = time.monotonic(), -1
    while time.monotonic() < deadline:
        mine = [e for e in [*taken, *events.collect()] if e.get("job_id") == job_id]
        runs = [e for e in mine if e["event"].startswith("task.")]
        if len(runs) != count:
            quiet_since, count = time.monotonic(), len(runs)
        starts = Counter(e["task_id"] for e in runs if e["event"] == "task.started")
        ends = Counter(e["task_id"] for e in runs if e["event"] == "task.finished")
        if runs and starts == ends and time.monotonic() - quiet_since > 1.0:
            return runs
        time.sleep(0.2)
    raise AssertionError(f"the runs of {job_id} did not settle: {runs}")


def descendants(pid: int) -> set[int]:
    """Every process under ``pid`` (a worker's nodes and their pool processes)."""
    found, todo = set(), [pid]
    while todo:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(todo.pop())], capture_output=True, text=True
        )
        children = {int(p) for p in out.stdout.split()}
        found |= children
        todo += children
    return found


def nodes_of(worker: Worker) -> set[str]:
    """The node hostnames a worker's log says are ready (``w1@host``, ``w1@host.control``...)."""
    return {
        line.rstrip().rsplit(" ", 2)[-2]
        for line in worker.output().splitlines()
        if line.rstrip().endswith(" ready.")
    }


def check_runs(runs: list[dict[str, Any]], worker: Worker) -> dict[str, str]:
    """One start and one ok finish per task, on a pool process of a node of ``worker``; the
    label of each task id."""
    starts = [e for e in runs if e["event"] == "task.started"]
    ends = {e["task_id"]: e for e in runs if e["event"] == "task.finished"}
    assert len(starts) == len({e["task_id"] for e in starts}) == len(ends), runs
    nodes, pids = nodes_of(worker), descendants(worker.pid)
    for start in starts:
        end = ends[start["task_id"]]
        assert end["outcome"] == "ok", end
        assert end["runtime_s"] >= 0 and end["label"] == start["label"]
        for event in (start, end):
            assert event["worker"] in nodes, (event["worker"], nodes)
            lane = event["worker_hostname"]  # the worker's own node's name: its lane
            assert lane in nodes and lane.startswith(f"{worker.name}@")
            assert event["worker"] in (lane, *(f"{lane}.{s}" for s in ("control", "high", "bulk")))
            assert event["pid"] in pids, event  # a pool process, not the node itself
            assert event["redelivered"] is False and event["retries"] == 0
            assert event["queue"] in WORK_QUEUE_KEYS, event
        if start["task"] in ("probe", "join", "finalize", "watch_chunks"):
            assert start["worker"].endswith(".control") and start["queue"] == CONTROL_QUEUE_NAME
    return {e["task_id"]: e["label"] for e in starts}


def test_every_run_of_a_per_rung_job_starts_and_ends_once(workers, media_dir) -> None:
    worker = workers.start("runs")
    source = make_video(media_dir / "runs-per-rung.mp4", 640, 360, duration=4)
    with Events(KEYS) as events:
        result = encodeq("upload", str(source), "--mode", "per-rung", "--wait", timeout=180)
        assert result.returncode == 0, result.stderr
        job_id = result.stdout.split()[0]
        runs = settled(events, job_id)
    labels = check_runs(runs, worker)
    assert sorted(labels.values()) == sorted(["probe", "360p", "240p", "finalize"])
    kinds = {e["label"]: e["task"] for e in runs}
    assert kinds == {"probe": "probe", "360p": "encode", "240p": "encode", "finalize": "finalize"}
    timeline = Timeline()
    for event in runs:
        timeline.apply(event)
    assert [r["outcome"] for r in timeline.runs()] == ["ok"] * 4
    assert all(r["finished_at"] >= r["started_at"] for r in timeline.runs())


@pytest.mark.slow  # the default suite's time budget
def test_every_run_of_a_chunked_job_starts_and_ends_once(workers, media_dir) -> None:
    worker = workers.start("chunks")
    source = make_video(media_dir / "runs-chunked.mp4", 640, 360, duration=10)
    with Events(KEYS) as events:
        result = encodeq("upload", str(source), "--mode", "chunked", "--wait", timeout=180)
        assert result.returncode == 0, result.stderr
        job_id = result.stdout.split()[0]
        runs = settled(events, job_id)
    labels = set(check_runs(runs, worker).values())
    manifest = JobStore(Storage()).load(job_id)
    assert manifest is not None and manifest.chunks is not None and manifest.chunks.count > 1
    chunks = {f"chunk {i}" for i in range(manifest.chunks.count)}
    whole = set(manifest.chunks.whole_rungs)  # the lowest rung, encoded from the whole source
    joins = {f"join {r.name}" for r in manifest.renditions if r.name not in whole}
    expected = {"probe", "audio", "finalize"} | chunks | whole | joins
    assert expected <= labels <= expected | {"watch chunks"}, labels
    kinds = {e["label"]: e["task"] for e in runs}
    assert {kinds[c] for c in chunks} == {"encode_chunk"} and kinds["audio"] == "encode_audio"
    assert {kinds[j] for j in joins} == {"join"} and {kinds[w] for w in whole} == {"encode"}


@pytest.mark.slow
def test_a_run_whose_worker_dies_starts_again_redelivered(workers, media_dir) -> None:
    doomed = workers.start("doomed")
    source = make_video(media_dir / "runs-redelivered.mp4", 426, 240, duration=6)
    with Events(KEYS) as events:
        job_id = upload_job(source, "--mode", "per-rung")  # one rung: 240p
        first = events.wait(
            lambda e: (
                e["event"] == "task.started" and e["task"] == "encode" and e.get("job_id") == job_id
            ),
            60,
            "the encode's start",
        )
        hold_ffmpeg(job_id)  # it cannot finish before the kill
        doomed.kill()  # the whole worker, SIGKILL: nothing acks, nothing says it ended
        rescuer = workers.start("rescuer")
        again = events.wait(
            lambda e: e["event"] == "task.started" and e["task_id"] == first["task_id"],
            60,
            "the encode to start again",
        )
        done = events.wait(
            lambda e: e["event"] == "task.finished" and e["task_id"] == first["task_id"],
            120,
            "the redelivered encode to end",
        )
        runs = settled(events, job_id, (again, done))
    assert first["worker"].startswith("doomed@") and first["redelivered"] is False
    assert again["worker"].startswith("rescuer@") and again["redelivered"] is True
    assert again["label"] == first["label"] == "240p"
    assert done["worker"] == again["worker"] and done["outcome"] == "ok"
    # The dead holder's run never ended; the model keeps it open beside the one that did.
    timeline = Timeline()
    for event in [first, *runs]:
        timeline.apply(event)
    encodes = [r for r in timeline.runs() if r["task_id"] == first["task_id"]]
    assert [(r["worker"], r["outcome"], r["redelivered"]) for r in encodes] == [
        (first["worker"], "running", False),
        (again["worker"], "ok", True),
    ]
    assert rescuer.proc.poll() is None


@pytest.mark.slow
def test_a_killed_pool_process_ends_its_run_lost(workers, media_dir) -> None:
    """The worker's main process sees its pool process die and ends the run itself: ``lost``,
    the message back in the queue; it starts again, redelivered, on the same worker."""
    worker = workers.start("lossy")
    source = make_video(media_dir / "runs-lost.mp4", 426, 240, duration=6)
    with Events(KEYS) as events:
        job_id, first = held_encode(events, source)
        os.kill(first["pid"], signal.SIGKILL)
        lost = events.wait(
            lambda e: e["event"] == "task.finished" and e["task_id"] == first["task_id"],
            30,
            "the run to end lost",
        )
        again = events.wait(
            lambda e: e["event"] == "task.started" and e["task_id"] == first["task_id"],
            60,
            "the encode to start again",
        )
        settled(events, job_id, (first, lost, again))
    assert lost["outcome"] == "lost" and lost["code"] == "worker_lost", lost
    assert lost["pid"] == first["pid"] and lost["worker"] == first["worker"]
    assert again["redelivered"] is True and again["pid"] != first["pid"]
    assert worker.proc.poll() is None  # the worker lived on


@pytest.mark.slow
def test_a_retried_run_ends_retry_with_its_countdown_then_runs_again(workers, media_dir) -> None:
    """S3 cut under the probe: its run ends ``retry`` with the countdown Celery chose (jitter off:
    the backoff itself); the same task id runs again, ``retries`` 1, once S3 is back."""
    endpoint = urlsplit(os.environ["ENCODEQ_S3_ENDPOINT"])
    proxy = TcpProxy(endpoint.hostname, endpoint.port).start()
    try:
        env = {"ENCODEQ_S3_ENDPOINT": proxy.endpoint, "ENCODEQ_RETRY_JITTER": "false"}
        env |= {"ENCODEQ_RETRY_BACKOFF_S": "2", "ENCODEQ_RETRY_BACKOFF_MAX_S": "2"}
        workers.start("retrying", env=env)
        proxy.cut()
        with Events(KEYS) as events:
            job_id = upload_job(make_video(media_dir / "runs-retry.mp4", 320, 180, duration=2))
            retry = events.wait(
                lambda e: e["event"] == "task.finished" and e.get("job_id") == job_id,
                60,
                "the probe's first run to end",
            )
            proxy.restore()
            events.wait(
                lambda e: e["event"] == "job.completed" and e["job_id"] == job_id, 120, "done"
            )
            runs = settled(events, job_id, (retry,))
    finally:
        proxy.cut()
    assert retry["task"] == "probe" and retry["outcome"] == "retry", retry
    assert retry["countdown"] == 2.0 and retry["reason"] and retry["retries"] == 0
    probe = sorted((e for e in runs if e["task_id"] == retry["task_id"]), key=lambda e: e["time"])
    assert [(e["event"], e["retries"], e.get("outcome")) for e in probe] == [
        ("task.started", 0, None),
        ("task.finished", 0, "retry"),
        ("task.started", 1, None),  # the same task id: a retry is the same task, published again
        ("task.finished", 1, "ok"),
    ]
    assert not any(e["redelivered"] for e in probe)


# --- the pure parts ------------------------------------------------------------------------------
@pytest.mark.unit
def test_outcomes_labels_queues_and_lanes() -> None:
    retry = Retry(exc=ConnectionError("S3 down"), when=4)
    assert outcome_of("RETRY", retry, False) == {
        "outcome": "retry",
        "countdown": 4.0,
        "reason": "S3 down",
    }
    dead = outcome_of("FAILURE", PermanentError("not_a_video", "no video here"), False)
    assert dead == {"outcome": "dead", "code": "not_a_video", "reason": "no video here"}
    rejected = outcome_of("REJECTED", Reject(ValueError("x"), requeue=False), False)
    assert rejected["outcome"] == "dead"
    assert outcome_of("REJECTED", Reject("back", requeue=True), False)["outcome"] == "failed"
    assert outcome_of("SUCCESS", None, True) == {"outcome": "cancelled"}
    assert outcome_of("SUCCESS", None, False) == {"outcome": "ok"}
    assert label_of("encode_chunk", {"index": 3, "offer": 1}) == "chunk 3"
    assert label_of("encode_chunk", {"index": 3, "offer": 2}) == "chunk 3 (offer 2)"
    assert label_of("join", {"rendition": "720p"}) == "join 720p"
    assert label_of("encode", {"rendition": "240p"}) == "240p"
    assert label_of("encode_audio", {}) == "audio"
    assert worker_hostname("w1@host.example.bulk") == "w1@host.example"
    assert worker_hostname("w1@host") == "w1@host"
    # Every node a worker forks is on its worker's lane, whatever its queue.
    own, others = nodes.plan(list(WORK_QUEUE_KEYS), 1, Settings())
    for node in (own, *others):
        assert worker_hostname(nodes.hostname_of("w1@host.example", node)) == "w1@host.example"
    assert queue_of({"routing_key": "1.0.1.encode.express"}, []) == "encodeq.encode.express"
    assert queue_of({"routing_key": "encode"}, []) == "encodeq.encode"
    assert queue_of({}, ["encodeq.control"]) == "encodeq.control"


@pytest.mark.unit
def test_the_timeline_pairs_runs_and_keeps_a_bounded_past() -> None:
    def event(kind: str, task_id: str, t: str, **more: Any) -> dict[str, Any]:
        base = {"event": kind, "task_id": task_id, "worker": "w@h", "pid": 1, "time": t}
        return {**base, "task": "encode", "label": "240p", **more}

    timeline = Timeline(keep=3)
    timeline.apply(event("task.started", "a", "2026-01-01T00:00:00.000+00:00"))
    timeline.apply(event("task.finished", "a", "2026-01-01T00:00:02.000+00:00", outcome="retry"))
    timeline.apply(event("task.started", "a", "2026-01-01T00:00:06.000+00:00", retries=1))
    timeline.apply(event("task.finished", "a", "2026-01-01T00:00:07.000+00:00", outcome="ok"))
    runs = timeline.runs()
    assert [(r["outcome"], r["retries"]) for r in runs] == [("retry", 0), ("ok", 1)]
    # A finish whose start was missed: placed by its runtime.
    timeline.apply(event("task.finished", "b", "2026-01-01T00:00:10.000+00:00", runtime_s=2.5))
    assert timeline.runs()[-1]["started_at"] == "2026-01-01T00:00:07.500+00:00"
    timeline.apply(event("task.started", "c", "2026-01-01T00:00:11.000+00:00"))
    assert [r["task_id"] for r in timeline.runs()] == ["a", "b", "c"]  # the oldest went
    assert timeline.runs()[-1]["run"] == "c|w@h|1|2026-01-01T00:00:11.000+00:00"
