"""At-least-once, for real: replays complete jobs in both modes, late duplicates cannot break a
finished job, no job is left queued without a message, and failures outlive an S3 outage.

Each test drives real workers, RabbitMQ, the S3 server over HTTP and ffmpeg, and asserts what a
user sees: the job's final state, its renditions, what sits in the DLQ.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support.broker import broker, scratch_vhost
from support.commands import dlq_json, encodeq, upload_job
from support.dlq import death_reason, dlq_for, dlq_messages
from support.events import Events
from support.fleet import slow_motion
from support.media import decoded_frames, make_video
from support.storage import (
    assert_plays_every_frame,
    jobs,
    settings,
    storage,
    stray_renditions,
    wait_for_job,
)
from support.waiting import wait_for

from config.topology import CONTROL_QUEUE_NAME, ENCODE_QUEUE_NAME
from console.tcp_proxy import TcpProxy
from core.failures import load_failure
from core.job_model import ErrorInfo, Manifest, SourceInfo
from core.layout import LIVE_PLAYLIST_NAME, RENDITIONS, UPLOADS, rendition_prefix, source_key
from core.storage import parse_uri
from worker.lanes import lane_of

#: Chunked mode with 2 s chunks and segments, so a short source has several chunks.
CHUNKED_ENV = {"ENCODEQ_CHUNK_SECONDS": "2", "ENCODEQ_STRAGGLER_MIN_S": "600"}


# --- 1: a replayed dead letter completes its job, in chunked mode too -----------------------------
@pytest.mark.slow
def test_replaying_a_chunked_jobs_dead_letters_completes_it(workers, media_dir, tmp_path) -> None:
    """The chunk encodes die (an output cap too small for them), the job fails; the cause is
    fixed (workers with the normal cap) and ``encodeq dlq replay --job`` completes the job."""
    source = make_video(media_dir / "replay-chunked.mp4", 480, 270, duration=6)
    # The probe (control queue) runs with the normal cap, the chunk encodes with a tiny one.
    workers.start("control-only", env=CHUNKED_ENV, queues=(CONTROL_QUEUE_NAME,))
    capped = workers.start(
        "capped",
        env={**CHUNKED_ENV, "ENCODEQ_MAX_OUTPUT_BYTES": "2000"},
        queues=(ENCODE_QUEUE_NAME,),
    )
    job_id = upload_job(source, "--mode", "chunked")
    failed = wait_for_job(job_id, timeout=120)
    assert failed.state == "failed" and failed.error.code == "output_too_large", failed.error
    assert failed.mode == "chunked" and failed.chunks is not None
    # Every chunk (and the audio, which fits) ends in the DLQ or done: wait until nothing of
    # the job is left in the encode queue, then replay what died.
    wait_for(lambda: len(dlq_for(job_id=job_id)) >= 1, 60, "the job's dead letters")
    capped.terminate()
    workers.start("fixed", env=CHUNKED_ENV, queues=(ENCODE_QUEUE_NAME,))
    dead = dlq_for(job_id=job_id)
    replay = dlq_json("replay", "--job", job_id)
    assert replay["moved"] >= len(dead) and not replay["failed"], replay
    manifest = wait_for(
        lambda: (m := jobs().load(job_id)) is not None and m.state == "completed" and m,
        180,
        "the replayed job to complete",
    )
    assert_plays_every_frame(manifest, decoded_frames(source), tmp_path)
    # the failure is history, not lost; the chunk records were kept and completed
    assert [e.code for e in manifest.history][:1] == ["output_too_large"]
    assert manifest.error is None
    assert not dlq_for(job_id=job_id), "a replayed message died again"


# --- 2: a late duplicate cannot break a completed job -----------------------------------------
def _ffmpeg_of(job_id: str, rendition: str) -> list[int]:
    """Pids of the ffmpeg encoding ``rendition`` of ``job_id`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv).decode(errors="replace")
        if argv[0].endswith(b"ffmpeg") and job_id in text and f"/{rendition}/" in text:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["dies", "finishes"])
def test_a_late_duplicate_encode_cannot_break_a_completed_job(
    workers, media_dir, tmp_path, ending: str
):
    """Hold one rung's ffmpeg (SIGSTOP), deliver a duplicate of that encode, let the job
    complete, then resume the held copy, which dies or finishes: the job stays completed and
    plays, and the live playlist the late copy wrote is gone with it."""
    # Long enough that the held copy is still encoding well after the job completed.
    source = make_video(media_dir / "duplicate.mp4", 1280, 720, duration=16)
    # The held worker takes encodes only: a finalize it prefetched could not run while its one
    # process is stuck (prefetch is per consumer on quorum queues).
    held_worker = workers.start("held", queues=(ENCODE_QUEUE_NAME,))
    workers.start("control", queues=(CONTROL_QUEUE_NAME,))
    held: list[int] = []
    try:
        with Events() as events:
            job_id = upload_job(source, "--mode", "per-rung")
            started = events.wait(
                lambda e: e["event"] == "rendition.started" and e["job_id"] == job_id,
                60,
                "an encode to start",
            )
            rung = started["rendition"]
            held[:] = wait_for(lambda: _ffmpeg_of(job_id, rung), 30, f"the ffmpeg of {rung}")
            for pid in held:
                os.kill(pid, signal.SIGSTOP)
            # The duplicate: what a lost connection or a consumer timeout would redeliver, on
            # the held copy's own queue, where only the rescuer can take it (the held worker's
            # other lanes are other Celery nodes: one of them would run it at once).
            from worker.modes.per_rung import encode

            encode.apply_async(args=[job_id, rung], queue=lane_of(jobs().load(job_id)))
            workers.start("rescuer")
            manifest = wait_for_job(job_id, timeout=180)
            assert manifest.state == "completed", manifest.error
            # Now the held copy wakes up (in slow motion: it must not finish), writes its progress
            # again (a record write comes with the first progress report after a pause; the
            # second report shows it was made) and publishes its live playlist...
            seen = {"rendition.progress": 0, "rendition.playable": 0}

            def held_progress_and_live(e: dict) -> bool:
                held_copy = e["job_id"] == job_id and e.get("worker") == started["worker"]
                if held_copy and e["event"] in seen:
                    seen[e["event"]] += 1
                return seen["rendition.progress"] >= 2 and seen["rendition.playable"] >= 1

            live = f"{rendition_prefix(job_id, rung)}{LIVE_PLAYLIST_NAME}"
            assert storage().get_bytes(RENDITIONS, live) is None  # finalize removed it
            with slow_motion(held):
                events.wait(held_progress_and_live, 120, "the held copy's progress and playlist")
                # its next segment: the live playlist is back, written after the job's end
                wait_for(
                    lambda: storage().get_bytes(RENDITIONS, live), 120, "the late live playlist"
                )
            if ending == "dies":  # an OOM kill, say: its task fails
                for pid in held:
                    os.kill(pid, signal.SIGKILL)
                # for good (dead-lettered: never acked into nothing)...
                wait_for(lambda: dlq_for(job_id=job_id), 60, "the held copy's dead letter")
            else:  # it runs to its end and completes the rung a second time
                for pid in held:
                    os.kill(pid, signal.SIGCONT)
                events.wait(
                    lambda e: (
                        e["event"] == "rendition.completed"
                        and e["job_id"] == job_id
                        and e.get("worker") == started["worker"]
                    ),
                    180,
                    "the held copy's end",
                )
                assert not dlq_for(job_id=job_id)
    finally:
        for pid in held:  # a stopped ffmpeg must not outlive a failed test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert held_worker.proc.poll() is None
    # ...and the job it belonged to stays completed, every rung playable.
    after = jobs().load(job_id)
    assert after.state == "completed" and after.error is None, after
    assert all(r.state == "completed" for r in after.renditions)
    # The held copy published its live playlist while it ran; the finished one is untouched.
    for r in after.renditions:
        text = storage().get_bytes(RENDITIONS, parse_uri(r.playlist)[1]).decode()
        assert text.rstrip().endswith("#EXT-X-ENDLIST"), (r.name, text[-200:])
    assert_plays_every_frame(after, decoded_frames(source), tmp_path)
    # What the late copy wrote after the job's cleanup went when the copy ended.
    assert stray_renditions(after) == []


# --- 4: no job is left queued without a message -----------------------------------------------
def test_a_publish_error_fails_the_job_loudly(media_dir) -> None:
    """A channel error on publish (the control queue exists with other arguments) leaves no
    queued job behind: the upload exits non-zero and the job is failed with a code."""
    with scratch_vhost("encodeq-mismatch") as url:
        with broker(url) as conn:
            conn.default_channel.queue_declare(CONTROL_QUEUE_NAME, durable=True)  # classic
        source = make_video(media_dir / "mismatch.mp4", 320, 180, duration=1)
        result = encodeq("upload", str(source), env={"ENCODEQ_BROKER_URL": url})
        assert result.returncode == 2, (result.stdout, result.stderr)
        job_id = result.stderr.split("did not take job ")[1].split()[0]
        manifest = jobs().load(job_id)
        assert manifest.state == "failed" and manifest.error.code == "publish_failed"


def _orphan(source: Path) -> str:
    """What an uploader that died after writing the manifest leaves: a queued job, no message."""
    job_id = uuid.uuid4().hex
    uri = storage().put_file(UPLOADS, source_key(job_id, source.name), source)
    manifest = Manifest(
        job_id=job_id,
        source=SourceInfo(uri=uri, filename=source.name, size_bytes=source.stat().st_size),
    )
    jobs().save(manifest)
    return job_id


def test_the_janitor_requeues_orphans_and_a_slow_probe_runs_once(workers, media_dir) -> None:
    source = make_video(media_dir / "orphan.mp4", 320, 180, duration=2)
    orphan = _orphan(source)
    # A job whose probe is in the queue all along, only slow to be taken (no worker yet): the
    # janitor publishes a second probe, and only one of the two may do the work.
    slow = upload_job(source)
    with Events() as events:
        workers.start(
            "janitor", env={"ENCODEQ_ORPHAN_AFTER_S": "0", "ENCODEQ_JANITOR_INTERVAL_S": "1"}
        )
        for job_id in (orphan, slow):
            manifest = wait_for_job(job_id, timeout=120)
            assert manifest.state == "completed", (job_id, manifest.error)
        events.wait(
            lambda e: e["event"] == "job.completed" and e["job_id"] == slow,
            30,
            "the slow job's completion event",
        )
        seen = events.collect()
        assert count(seen, "job.probing", slow) == 1
        assert count(seen, "job.encoding", slow) == 1
        assert jobs().load_requeues(orphan).count >= 1
    for job_id in (orphan, slow):
        manifest = jobs().load(job_id)
        for r in manifest.renditions:
            keys = list(storage().list_keys("renditions", f"{job_id}/{r.name}/"))
            assert len(keys) == r.segments + 1, (r.name, keys)


def count(events: list[dict], kind: str, job_id: str) -> int:
    return sum(1 for e in events if e["event"] == kind and e["job_id"] == job_id)


# --- 4b: a task that dies while S3 is down still leaves its record, and its job fails ------------
@pytest.mark.slow
def test_a_failure_during_an_s3_outage_is_recorded_once_s3_answers(workers, media_dir) -> None:
    endpoint = urlsplit(settings().s3_endpoint)
    proxy = TcpProxy(endpoint.hostname, endpoint.port).start()
    try:
        workers.start(
            "outage",
            env={"ENCODEQ_S3_ENDPOINT": proxy.endpoint, "ENCODEQ_JANITOR_INTERVAL_S": "3600"},
        )
        proxy.cut()
        job_id = upload_job(make_video(media_dir / "outage.mp4", 320, 180, duration=1))
        # The probe cannot reach S3, retries through delayed delivery, then dies for good.
        [message] = wait_for(lambda: dlq_for(job_id=job_id), 120, "the probe's dead letter")
        task_id = message.headers["id"]
        assert load_failure(storage(), task_id) is None  # S3 (through the proxy) is still down
        assert jobs().load(job_id).state == "queued"
        proxy.restore()
        record = wait_for(lambda: load_failure(storage(), task_id), 60, "the failure record")
        assert record.code == "retries_exhausted" and record.job_id == job_id
        manifest = wait_for(
            lambda: (m := jobs().load(job_id)).state == "failed" and m, 60, "the job to be failed"
        )
        assert manifest.error.code == "retries_exhausted"
        # ...and the dead letter, replayed now that S3 answers, completes the job.
        assert dlq_json("replay", "--job", job_id)["moved"] == 1
        done = wait_for_job_state(job_id, "completed", 120)
        assert done.history and done.history[0].code == "retries_exhausted"
    finally:
        proxy.restore()


def wait_for_job_state(job_id: str, state: str, timeout: float) -> Manifest:
    return wait_for(
        lambda: (m := jobs().load(job_id)) is not None and m.state == state and m,
        timeout,
        f"job {job_id} to be {state}",
    )


# --- 6: a failed job's intermediates expire -----------------------------------------------------
def test_a_failed_jobs_intermediates_expire(workers, media_dir) -> None:
    source = make_video(media_dir / "expire.mp4", 320, 180, duration=1)
    job_id = _orphan(source)
    for name in ("src/00000.mp4", "360p/00000.ts", "audio.ts"):
        storage().put_bytes(UPLOADS, f"{job_id}/chunks/{name}", b"x" * 10, "video/mp2t")
    jobs().set_state(job_id, "failed", ErrorInfo(code="seam_check_failed", message="test"))
    workers.start(
        "expiry", env={"ENCODEQ_INTERMEDIATES_TTL_S": "1", "ENCODEQ_JANITOR_INTERVAL_S": "1"}
    )
    wait_for(
        lambda: not list(storage().list_keys(UPLOADS, f"{job_id}/chunks/")),
        60,
        "the failed job's chunk objects to expire",
    )
    # the source itself is the user's upload: kept
    assert list(storage().list_keys(UPLOADS, f"{job_id}/source"))


# --- 7: a job keeps its first error -----------------------------------------------------------
def test_a_failed_job_keeps_its_first_error(media_dir) -> None:
    job_id = _orphan(make_video(media_dir / "first-error.mp4", 320, 180, duration=1))
    store = jobs()
    store.set_state(job_id, "failed", ErrorInfo(code="output_too_large", message="first"))
    store.set_state(job_id, "failed", ErrorInfo(code="internal_error", message="a sibling"))
    assert store.load(job_id).error.code == "output_too_large"


# --- every kind of dead letter, replayed once its cause is fixed ------------------------------
#: Rounds of drills: the workers of a round fail these tasks (ENCODEQ_FAIL_TASKS), and each job
#: of the round dies at exactly one kind of task. (name, mode, has audio, the task it dies in)
ROUNDS: list[tuple[str, list[tuple[str, str, bool, str]]]] = [
    ("encodeq.probe", [("probe", "per-rung", True, "encodeq.probe")]),
    (
        "encodeq.encode,encodeq.encode_chunk",
        [
            ("encode", "per-rung", True, "encodeq.encode"),
            ("chunk", "chunked", True, "encodeq.encode_chunk"),
        ],
    ),
    (
        "encodeq.finalize,encodeq.encode_audio,encodeq.join",
        [
            ("finalize", "per-rung", True, "encodeq.finalize"),
            ("audio", "chunked", True, "encodeq.encode_audio"),
            ("join", "chunked", False, "encodeq.join"),  # no audio: its chunks reach the joins
        ],
    ),
]


@pytest.mark.slow
def test_every_kind_of_dead_letter_replays_to_a_completed_job_or_back_to_the_dlq(
    workers, media_dir, tmp_path
) -> None:
    from test_failure_policy import celery_headers, publish_raw

    job_of: dict[str, str] = {}
    sources: dict[str, Path] = {}
    for faults, jobs_of_round in ROUNDS:
        env = {**CHUNKED_ENV, "ENCODEQ_FAIL_TASKS": faults}
        fleet = [workers.start(f"drill{i}", env=env) for i in range(2)]
        for name, mode, audio, _task in jobs_of_round:
            sources[name] = make_video(
                media_dir / f"drill-{name}.mp4", 320, 180, duration=4, audio=audio
            )
            job_of[name] = upload_job(sources[name], "--mode", mode)
        for name, _mode, _audio, task in jobs_of_round:
            manifest = wait_for_job(job_of[name], timeout=120)
            assert manifest.state == "failed", (name, manifest)
            assert manifest.error.code == "injected_fault", (name, manifest.error)
            died = wait_for(lambda n=name: dlq_for(job_id=job_of[n]), 60, f"{name}'s dead letter")
            assert task in {m.headers["task"] for m in died}, (name, died)
        for worker in fleet:
            worker.terminate()
    # Two messages no fix can save: they must come back to the DLQ, never be acked away.
    unknown, undecodable = celery_headers("encodeq.retired"), celery_headers("encodeq.probe")
    publish_raw(b'[["x"], {}, {}]', "application/json", unknown)
    publish_raw(b"\xff{not json", "application/json", undecodable)
    workers.start("fixed-a", env=CHUNKED_ENV)
    workers.start("fixed-b", env=CHUNKED_ENV)
    hopeless = {unknown["id"], undecodable["id"]}

    def hopeless_in_dlq() -> list:
        return [m for m in dlq_messages() if m.headers.get("id") in hopeless]

    wait_for(lambda: len(hopeless_in_dlq()) == 2, 60, "the hopeless two to be dead-lettered")
    ids = [row["id"] for row in dlq_json("list") if row["key"] in hopeless]
    # Replayed together with every dead letter of the six jobs (the DLQ is shared by the run).
    for name in job_of:
        replayed = dlq_json("replay", "--job", job_of[name])
        assert replayed["moved"] >= 1 and not replayed["failed"], (name, replayed)
    replayed = dlq_json("replay", *ids)
    assert replayed["moved"] == 2 and not replayed["failed"], replayed
    for name, mode, _audio, _task in (job for _f, round_ in ROUNDS for job in round_):
        manifest = wait_for_job_state(job_of[name], "completed", 180)
        assert manifest.mode == mode and manifest.history[0].code == "injected_fault"
        assert_plays_every_frame(manifest, decoded_frames(sources[name]), tmp_path / name)
        assert not dlq_for(job_id=job_of[name]), f"a replayed message of {name} died again"
    # The hopeless two died again, each with its reason (a second death in x-death).
    back = wait_for(
        lambda: (
            all(m.headers["x-death"][0]["count"] == 2 for m in hopeless_in_dlq())
            and len(hopeless_in_dlq()) == 2
            and hopeless_in_dlq()
        ),
        60,
        "the hopeless two to die again",
    )
    assert {death_reason(m) for m in back} == {"rejected"}
