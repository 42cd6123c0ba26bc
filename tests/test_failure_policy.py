"""Every row of the failure policy, for real: each outcome is what the design notes promise.

| transient            -> retried with backoff through the broker's delayed delivery, completes
| permanent, input     -> no retry, job failed with a code, message dead-lettered at once
| permanent, message   -> dead-lettered with a record, never silently acked
| the worker dies      -> redelivered and completed elsewhere; a crash loop ends at the limit
| too slow             -> soft time limit, dead-lettered with the reason
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import uuid
from urllib.parse import urlsplit

import pytest
from kombu import Producer
from support.broker import broker, delayed_messages, unacked
from support.commands import encodeq, upload_job
from support.dlq import death_reason, dlq_for
from support.events import Events
from support.fleet import processes_with
from support.media import ffmpeg, make_video
from support.storage import jobs, storage, wait_for_job
from support.waiting import wait_for

from config.topology import CONTROL_QUEUE_NAME, WORK_EXCHANGE
from console.tcp_proxy import TcpProxy
from core.failures import load_failure


def dead_letter_of(job_id: str, timeout: float = 60):
    return wait_for(lambda: dlq_for(job_id=job_id), timeout, f"a dead letter of job {job_id}")[0]


def failure_record(task_id: str, timeout: float = 30):
    return wait_for(lambda: load_failure(storage(), task_id), timeout, f"record of {task_id}")


# --- permanent, input ----------------------------------------------------------------------------
def test_not_a_video_fails_at_once_with_a_code_and_is_dead_lettered(workers, tmp_path) -> None:
    workers.start("inputs")
    broken = tmp_path / "holiday.mp4"
    broken.write_bytes(os.urandom(100_000))
    job_id = upload_job(broken)
    manifest = wait_for_job(job_id, timeout=60)
    assert manifest.state == "failed"
    assert manifest.error is not None and manifest.error.code == "not_a_video"
    message = dead_letter_of(job_id)
    assert death_reason(message) == "rejected"
    assert message.headers["x-death"][0]["queue"] == CONTROL_QUEUE_NAME
    record = failure_record(message.headers["id"])
    assert record.code == "not_a_video" and record.exc_type == "InputError"
    assert record.attempts == 1  # no retry for bad input
    assert record.worker and record.worker.startswith("inputs@")
    assert "InputError" in record.traceback_tail


def test_audio_only_file_has_no_video_stream(workers, tmp_path) -> None:
    workers.start("inputs")
    audio = tmp_path / "song.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=d=2", "-c:a", "aac", str(audio))
    job_id = upload_job(audio)
    manifest = wait_for_job(job_id, timeout=60)
    assert manifest.error is not None and manifest.error.code == "no_video_stream"
    assert death_reason(dead_letter_of(job_id)) == "rejected"


def test_source_over_the_duration_limit_is_refused(workers, media_dir) -> None:
    workers.start("limits", env={"ENCODEQ_MAX_DURATION_S": "1"})
    job_id = upload_job(make_video(media_dir / "three-seconds.mp4", 320, 180, duration=3))
    manifest = wait_for_job(job_id, timeout=60)
    assert manifest.error is not None and manifest.error.code == "too_long"
    assert manifest.renditions == []
    assert death_reason(dead_letter_of(job_id)) == "rejected"


# --- permanent, message --------------------------------------------------------------------------
def publish_raw(body: bytes, content_type: str, headers: dict) -> None:
    with broker() as conn:
        Producer(conn.channel()).publish(
            body,
            exchange=WORK_EXCHANGE,
            routing_key="control",
            content_type=content_type,
            content_encoding="utf-8" if content_type.endswith("json") else "binary",
            headers=headers,
            delivery_mode=2,
        )


def celery_headers(task: str) -> dict:
    task_id = str(uuid.uuid4())
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "retries": 0,
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "test",
    }


@pytest.mark.parametrize(
    ("what", "task", "body", "content_type", "code"),
    [
        ("unknown task", "encodeq.nope", b'[["x"], {}, {}]', "application/json", "unknown_task"),
        (
            "body that does not decode",
            "encodeq.probe",
            b"\xff{not json",
            "application/json",
            "undecodable",
        ),
        (
            "pickle body",
            "encodeq.probe",
            pickle.dumps(([1], {}, {})),
            "application/x-python-serialize",
            "invalid_message",
        ),
        (
            "wrong arguments",
            "encodeq.probe",
            b"[[1, 2, 3], {}, {}]",
            "application/json",
            "bad_arguments",
        ),
        (
            "a job id that is not ours",
            "encodeq.probe",
            b'[["../../etc"], {}, {}]',
            "application/json",
            "bad_arguments",
        ),
    ],
)
def test_bad_messages_are_dead_lettered_with_a_record(
    workers, what, task, body, content_type, code
) -> None:
    workers.start("messages")
    headers = celery_headers(task)
    publish_raw(body, content_type, headers)
    message = wait_for(lambda: dlq_for(task_ids={headers["id"]}), 30, f"{what} in the DLQ")[0]
    assert death_reason(message) == "rejected"
    raw = message.body if isinstance(message.body, bytes) else message.body.encode()
    assert raw == body  # dead-lettered as sent, byte for byte
    record = failure_record(headers["id"])
    assert record.code == code, record
    assert record.task == task


# --- transient -----------------------------------------------------------------------------------
@pytest.fixture
def s3_proxy():
    endpoint = urlsplit(os.environ["ENCODEQ_S3_ENDPOINT"])
    proxy = TcpProxy(endpoint.hostname, endpoint.port).start()
    yield proxy
    proxy.cut()


def test_storage_outage_is_retried_through_delayed_delivery_then_completes(
    workers, s3_proxy, media_dir
) -> None:
    # The worker reaches S3 only through the proxy; jitter off so every countdown is the same.
    # The first countdown is 6 s: long enough to look at the queues while the retry waits.
    workers.start(
        "flaky",
        env={
            "ENCODEQ_S3_ENDPOINT": s3_proxy.endpoint,
            "ENCODEQ_RETRY_JITTER": "false",
            "ENCODEQ_RETRY_BACKOFF_S": "6",
            "ENCODEQ_RETRY_BACKOFF_MAX_S": "6",
            "ENCODEQ_MAX_RETRIES": "6",
        },
    )
    s3_proxy.cut()
    job_id = upload_job(make_video(media_dir / "outage.mp4", 320, 180, duration=2))
    # The probe fails to reach S3 and is retried later: the countdown is held by the broker in a
    # delayed-delivery queue, not by the worker (nothing unacked on the work queue meanwhile).
    wait_for(delayed_messages, 30, "a retry waiting in a delayed-delivery queue")
    # The retry is published before the original is acked: wait for the ack, not a moment.
    wait_for(
        lambda: unacked(CONTROL_QUEUE_NAME) == 0 and delayed_messages(),
        5,
        "the original acked while its retry still waits",
    )
    assert jobs().load(job_id).state == "queued"
    s3_proxy.restore()
    manifest = wait_for_job(job_id, timeout=90)
    assert manifest.state == "completed", manifest.error
    assert dlq_for(job_id=job_id) == []


@pytest.mark.slow
def test_storage_outage_past_the_retry_budget_dead_letters(workers, s3_proxy, media_dir) -> None:
    workers.start(
        "flaky", env={"ENCODEQ_S3_ENDPOINT": s3_proxy.endpoint, "ENCODEQ_MAX_RETRIES": "2"}
    )
    s3_proxy.cut()
    job_id = upload_job(make_video(media_dir / "outage2.mp4", 320, 180, duration=2))
    message = dead_letter_of(job_id, timeout=90)
    assert death_reason(message) == "rejected"
    assert message.headers["retries"] == 2  # the budget was spent, then it died
    # The worker could not write to S3 (still cut): the failure waits in the worker's outbox, so
    # the job itself still says where it stopped (tests/test_guarantees.py sees it land later).
    assert jobs().load(job_id).state == "queued"


# --- the worker dies -----------------------------------------------------------------------------
def test_sigkilled_worker_task_is_redelivered_and_completed_elsewhere(workers, media_dir) -> None:
    alpha, beta = workers.start("alpha"), workers.start("beta")
    by_name = {"alpha": alpha, "beta": beta}
    source = make_video(media_dir / "long-one-rung.mp4", 426, 240, duration=30)
    with Events() as events:
        job_id = upload_job(source, "--mode", "per-rung")  # the encode node runs the one rung
        started = events.wait(
            lambda e: e["event"] == "rendition.started" and e["job_id"] == job_id, 60, "started"
        )
        victim_name = started["worker"].split("@")[0]
        by_name[victim_name].kill()  # SIGKILL: main process, pool and ffmpeg, mid-encode
    survivor = "beta" if victim_name == "alpha" else "alpha"
    manifest = wait_for_job(job_id, timeout=120)
    assert manifest.state == "completed", manifest.error
    [rendition] = manifest.renditions
    assert rendition.worker.startswith(f"{survivor}@")
    # exactly one copy of every segment the playlist lists, nothing else
    keys = set(storage().list_keys("renditions", f"{job_id}/{rendition.name}/"))
    assert len(keys) == rendition.segments + 1
    assert dlq_for(job_id=job_id) == []


def test_sigkilled_pool_process_is_redelivered_and_recorded(workers, media_dir) -> None:
    worker = workers.start("solo")
    source = make_video(media_dir / "long-one-rung.mp4", 426, 240, duration=30)
    with Events() as events:
        job_id = upload_job(source, "--mode", "per-rung")  # the encode node runs the one rung
        started = events.wait(
            lambda e: e["event"] == "rendition.started" and e["job_id"] == job_id, 60, "started"
        )
        [child] = worker.pool_children()
        os.kill(child, signal.SIGKILL)
    manifest = wait_for_job(job_id, timeout=120)
    assert manifest.state == "completed", manifest.error
    record = failure_record(
        started["task_id"] if "task_id" in started else manifest.renditions[0].task_id
    )
    assert record.code == "worker_lost" and record.dead_lettered is False
    assert not processes_with(f"encodeq-{job_id}")  # no orphaned ffmpeg


@pytest.mark.slow  # the default suite's time budget
def test_crash_loop_ends_in_the_dlq_at_the_delivery_limit(workers, media_dir) -> None:
    worker = workers.start("crashy")
    source = make_video(media_dir / "poison.mp4", 426, 240, duration=30)
    kills = 0
    with Events() as events:
        job_id = upload_job(source, "--mode", "per-rung")  # the encode node runs the one rung
        # Every delivery of the encode dies with its process (the delivery limit is 2 in tests:
        # the third return dead-letters it).
        for _ in range(3):
            events.wait(
                lambda e: e["event"] == "rendition.started" and e["job_id"] == job_id, 60, "start"
            )
            for child in worker.pool_children():
                os.kill(child, signal.SIGKILL)
            kills += 1
    message = dead_letter_of(job_id, timeout=60)
    assert death_reason(message) == "delivery_limit"
    # a 30 s job is short: its encodes wait in the express lane
    assert message.headers["x-death"][0]["queue"] == "encodeq.encode.express"
    record = failure_record(message.headers["id"])
    assert record.code == "delivery_limit" and record.deliveries == kills
    manifest = wait_for_job(job_id, timeout=30)
    assert manifest.error is not None and manifest.error.code == "delivery_limit"


# --- too slow ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_soft_time_limit_dead_letters_instead_of_looping(workers, media_dir) -> None:
    workers.start(
        "slow", env={"ENCODEQ_ENCODE_TIME_LIMIT_S": "2", "ENCODEQ_X264_PRESET": "veryslow"}
    )
    job_id = upload_job(make_video(media_dir / "slow.mp4", 1280, 720, duration=10))
    manifest = wait_for_job(job_id, timeout=90)
    assert manifest.state == "failed"
    assert manifest.error is not None and manifest.error.code == "timeout"
    messages = wait_for(lambda: dlq_for(job_id=job_id), 30, "the timed-out encodes in the DLQ")
    assert {death_reason(m) for m in messages} == {"rejected"}
    record = failure_record(messages[0].headers["id"])
    assert record.code == "timeout" and record.exc_type == "SoftTimeLimitExceeded"
    assert record.attempts == 1 and record.deliveries == 1  # not requeued, not retried
    wait_for(lambda: not processes_with(f"encodeq-{job_id}"), 10, "ffmpeg to be gone")


# --- duplicates are harmless ---------------------------------------------------------------------
@pytest.mark.slow
def test_redelivery_and_double_finalize_change_nothing(workers, media_dir) -> None:
    from worker.app import app

    workers.start("dupes")
    job_id = upload_job(make_video(media_dir / "dupes.mp4", 640, 360, duration=2))
    before = wait_for_job(job_id, timeout=60)
    assert before.state == "completed"
    s = storage()
    objects_before = {
        o.object_name: o.etag
        for o in s.client.list_objects(s.bucket("renditions"), f"{job_id}/", recursive=True)
    }
    # A lost ack: the same tasks again, and finalize twice at once.
    with Events() as events:
        for name in [r.name for r in before.renditions]:
            app.send_task("encodeq.encode", args=[job_id, name])
        app.send_task("encodeq.probe", args=[job_id])
        app.send_task("encodeq.finalize", args=[job_id])
        app.send_task("encodeq.finalize", args=[job_id])
        # Markers behind them on both work queues (FIFO, one worker, prefetch 1): once both are
        # dead-lettered (they name no job), everything before them has been processed.
        markers = [uuid.uuid4().hex, uuid.uuid4().hex]
        app.send_task("encodeq.finalize", args=[markers[0]])
        app.send_task("encodeq.encode", args=[markers[1], "240p"])
        for marker in markers:
            wait_for(lambda m=marker: dlq_for(job_id=m), 60, "a marker to be processed")
        assert [e for e in events.collect() if e.get("job_id") == job_id] == []
    after = jobs().load(job_id)
    assert after.model_dump() == before.model_dump()
    objects_after = {
        o.object_name: o.etag
        for o in s.client.list_objects(s.bucket("renditions"), f"{job_id}/", recursive=True)
    }
    assert objects_after == objects_before
    assert json.loads(encodeq("status", job_id, "--json").stdout)["state"] == "completed"
