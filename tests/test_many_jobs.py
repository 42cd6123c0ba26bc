"""Many jobs at once, against the real broker, S3 server and ffmpeg: control work that never
waits behind an encode, jobs that interleave, and a window that survives the death of the worker
meant to publish its next task."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from support.broker import delayed_messages, list_queues
from support.commands import encodeq, upload_job
from support.dlq import dlq_for
from support.events import Events
from support.fleet import argv_of, held_ffmpeg, hold_ffmpeg, proc_state, processes_with
from support.media import decoded_frames, make_video
from support.storage import assert_plays_every_frame, jobs, storage, wait_for_job
from support.waiting import wait_for

from config.topology import WORK_QUEUE_KEYS
from core.job_model import Rendition
from core.layout import (
    LIVE_PLAYLIST_NAME,
    RENDITIONS,
    UPLOADS,
    chunks_prefix,
    live_master_key,
    master_key,
    rendition_prefix,
)
from core.storage import parse_uri


def test_a_probe_runs_while_every_encode_process_is_busy(workers, media_dir) -> None:
    """One worker of one encode process holds an encode that cannot end (its ffmpeg stopped); a
    second upload's probe still runs: the worker's control node consumes the control queue on its
    own, so no control message sits prefetched behind the encode."""
    workers.start("busy")
    first = make_video(media_dir / "busy-first.mp4", 640, 360, duration=6)
    second = make_video(media_dir / "busy-second.mp4", 320, 180, duration=2)
    with Events() as events:
        first_id = upload_job(first, "--mode", "per-rung")
        with held_ffmpeg(first_id) as held:
            uploaded = time.monotonic()
            second_id = upload_job(second)
            events.wait(
                lambda e: e["event"] == "job.encoding" and e["job_id"] == second_id,
                60,
                "the second job's probe to finish",
            )
            print(f"probe wait with the encode process busy: {time.monotonic() - uploaded:.2f}s")
            assert proc_state(held) in ("T", "t"), "the encode was not in hand while the probe ran"
    for job_id in (first_id, second_id):
        assert wait_for_job(job_id, timeout=180).state == "completed"


#: Chunked mode with short chunks; one task of a job in the queue or running at a time.
WINDOW_ONE = {"ENCODEQ_CHUNK_SECONDS": "2", "ENCODEQ_JOB_WINDOW": "1"}
EVERY_EVENT = ("job.*", "rendition.*", "chunk.*")


@pytest.mark.slow  # the default suite's time budget
def test_a_short_job_does_not_wait_for_a_long_one(workers, media_dir) -> None:
    """One encode process; a long chunked job starts (its first chunk held), a short job is
    uploaded behind it. The short job completes before the long job's last chunk starts: the
    long job keeps a window of one task in the queue, so the short job's tasks interleave."""
    workers.start("fair", env=WINDOW_ONE)
    long_source = make_video(media_dir / "fair-long.mp4", 640, 360, duration=12)
    short_source = make_video(media_dir / "fair-short.mp4", 320, 180, duration=2)
    with Events(EVERY_EVENT) as events:
        long_id = upload_job(long_source, "--mode", "chunked")
        with held_ffmpeg(long_id):
            short_id = upload_job(short_source, "--mode", "per-rung")
            events.wait(
                lambda e: e["event"] == "job.encoding" and e["job_id"] == short_id,
                60,
                "the short job's probe",
            )
        for job_id in (short_id, long_id):
            assert wait_for_job(job_id, timeout=240).state == "completed"
        seen = events.collect()
    chunks = wait_for_job(long_id).chunks
    assert chunks is not None and chunks.count >= 5
    order = [
        (e["event"], e["job_id"], e.get("chunk"))
        for e in seen
        if e["event"] in ("job.completed", "chunk.started")
    ]
    last_chunk = order.index(("chunk.started", long_id, chunks.count - 1))
    assert ("job.completed", short_id, None) in order[:last_chunk], order


@pytest.mark.slow  # the default suite's time budget
def test_a_high_priority_job_overtakes_normal_ones(workers, media_dir) -> None:
    """One encode process busy with a long job; a normal clip, then a high-priority clip, are
    uploaded. The high clip completes first, and the normal one completes too."""
    workers.start("lanes", env=WINDOW_ONE)
    long_source = make_video(media_dir / "lanes-long.mp4", 640, 360, duration=12)
    clip = make_video(media_dir / "lanes-clip.mp4", 320, 180, duration=2)
    with Events() as events:
        long_id = upload_job(long_source, "--mode", "chunked")
        with held_ffmpeg(long_id):
            normal_id = upload_job(clip, "--mode", "per-rung")
            high_id = upload_job(clip, "--mode", "per-rung", "--priority", "high")
            for job_id in (normal_id, high_id):
                events.wait(
                    lambda e, j=job_id: e["event"] == "job.encoding" and e["job_id"] == j,
                    60,
                    "the clips' probes",
                )
        done = [
            events.wait(
                lambda e: e["event"] == "job.completed" and e["job_id"] in (normal_id, high_id),
                240,
                "a clip to complete",
            )["job_id"]
            for _ in range(2)
        ]
    assert done == [high_id, normal_id]
    assert wait_for_job(high_id).priority == "high"
    assert wait_for_job(long_id, timeout=240).state == "completed"


#: A 12 s source is a long job here (the bulk lane); chunks of 4 s.
LANES_ENV = {"ENCODEQ_EXPRESS_MAX_S": "8", "ENCODEQ_CHUNK_SECONDS": "4"}


@pytest.mark.slow  # the default suite's time budget
def test_a_clip_never_waits_for_a_long_jobs_task_in_hand(workers, media_dir) -> None:
    """One worker, one process per lane. A long job's chunk encode is held (SIGSTOP) in the bulk
    lane; a clip uploaded meanwhile completes while it is still held: the clip's lane has its own
    node on the worker, and each node runs at its lane's niceness (the bulk lane yields)."""
    worker = workers.start("lanes", env=LANES_ENV)
    long_source = make_video(media_dir / "lanes-long.mp4", 1280, 720, duration=12)
    clip = make_video(media_dir / "lanes-clip.mp4", 320, 180, duration=2)
    long_id = upload_job(long_source, "--mode", "chunked")
    with held_ffmpeg(long_id, also="split") as held:  # a chunk: one decode split to its rungs
        clip_id = upload_job(clip)
        assert wait_for_job(clip_id, timeout=120).state == "completed"
        assert proc_state(held) in ("T", "t"), "the long job's chunk was not in hand"
        assert os.getpriority(os.PRIO_PROCESS, held) == 19  # the bulk lane's niceness
        if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1":
            # ffmpeg's session is an autogroup: the CPU is shared between those by their nice
            assert Path(f"/proc/{held}/autogroup").read_text().split()[-1] == "19"
    assert wait_for_job(long_id, timeout=240).state == "completed"
    control, high, bulk = (worker.node(n) for n in ("control", "high", "bulk"))
    assert None not in (control, high, bulk)
    nice = {pid: os.getpriority(os.PRIO_PROCESS, pid) for pid in (worker.pid, control, high, bulk)}
    assert (nice[control], nice[high], nice[worker.pid], nice[bulk]) == (0, 0, 10, 19)


@pytest.mark.slow  # the default suite's time budget
def test_a_chunked_job_plays_before_any_chunk_is_encoded(workers, media_dir, tmp_path) -> None:
    """Chunked mode encodes the lowest rung from the whole source in a task of its own: with the
    first chunk encode held (and the bulk lane's one process with it), the job already plays,
    its master listing that rung's live playlist; released, the job completes, every rung with
    every frame."""
    workers.start("first", env=LANES_ENV)
    source = make_video(media_dir / "first-playable.mp4", 1280, 720, duration=12)
    job_id = upload_job(source, "--mode", "chunked")
    with held_ffmpeg(job_id, also="split"):
        live = wait_for(lambda: _live_rendition(job_id), 60, "the lowest rung to play")
        manifest = jobs().load(job_id)
        assert manifest is not None and manifest.state == "encoding" and manifest.chunks
        assert manifest.chunks.whole_rungs == [live.name]
        assert live.width == min(r.width for r in manifest.renditions)
        records = [jobs().load_chunk(job_id, i) for i in range(manifest.chunks.count)]
        assert not any(r is not None and r.state == "completed" for r in records)
        master = storage().get_bytes(RENDITIONS, live_master_key(job_id)).decode()
        assert f"{live.name}/" in master  # its live playlist, or its finished one
    manifest = wait_for_job(job_id, timeout=240)
    assert_plays_every_frame(manifest, decoded_frames(source), tmp_path)


def _nothing_queued() -> bool:
    """No message in any work queue (ready or with a worker) and no countdown pending."""
    counts = {row[0]: int(row[1]) for row in list_queues("name", "messages")}
    return not any(counts.get(q, 0) for q in WORK_QUEUE_KEYS) and delayed_messages() == 0


def _cancel_while_held(job_id: str, held: int) -> float:
    """``encodeq cancel`` the job whose ffmpeg ``held`` is stopped; seconds until no ffmpeg of
    the job is left on this host."""
    with Events() as events:
        result = encodeq("cancel", job_id)
        assert result.returncode == 0, result.stderr
        cancelled = time.monotonic()  # the command returned: the cancellation is recorded
        wait_for(lambda: proc_state(held) in (None, "Z"), 2, "the held ffmpeg to die", every=0.02)
        wait_for(
            lambda: not processes_with(job_id, "ffmpeg"), 2, "no ffmpeg of the job", every=0.02
        )
        took = time.monotonic() - cancelled
        events.wait(
            lambda e: e["event"] == "job.cancelled" and e["job_id"] == job_id, 10, "job.cancelled"
        )
    return took


@pytest.mark.slow  # the default suite's time budget
@pytest.mark.parametrize("moment", ["chunk", "join"])
def test_cancel_stops_the_job_everywhere_and_leaves_nothing(workers, media_dir, moment) -> None:
    """Cancel mid-chunk (a chunk's ffmpeg held) or mid-join: no ffmpeg of the job is left within
    2 s, the job is cancelled, its queued tasks are dropped as they come up (not retried, not
    dead-lettered), its intermediates are gone, and the fleet goes on with the next job."""
    workers.start("canceller", env=WINDOW_ONE)
    source = make_video(media_dir / f"cancel-{moment}.mp4", 480, 270, duration=10)
    job_id = upload_job(source, "--mode", "chunked")
    # A join runs `ffmpeg ... -f concat`; a chunk's encode does not.
    held = hold_ffmpeg(job_id, also="concat" if moment == "join" else "")
    took = _cancel_while_held(job_id, held)
    print(f"cancel {moment}: no ffmpeg of the job after {took:.2f}s")
    wait_for(_nothing_queued, 60, "the job's queued tasks to be dropped")
    manifest = wait_for_job(job_id)
    assert manifest.state == "cancelled"
    assert not dlq_for(job_id=job_id)
    assert not list(storage().list_keys(UPLOADS, chunks_prefix(job_id)))
    again = encodeq("cancel", job_id)
    assert again.returncode == 1 and "cancelled" in again.stderr, again.stderr
    unknown = encodeq("cancel", "0" * 32)
    assert unknown.returncode == 1 and "no job" in unknown.stderr
    after = upload_job(make_video(media_dir / "after-cancel.mp4", 320, 180, duration=2))
    assert wait_for_job(after, timeout=120).state == "completed"
    assert wait_for_job(job_id).state == "cancelled"  # nothing came back to life


@pytest.mark.slow
def test_uploads_are_refused_at_the_queue_bound_and_lose_nothing(workers, media_dir) -> None:
    """Back-pressure: with no worker running, one upload's probe waits in the control queue; at a
    bound of one waiting task the next upload is refused (exit 3, a message that says why) and
    stores nothing; once a worker drains the queue, uploads are taken again."""
    bound = {"ENCODEQ_MAX_QUEUED_TASKS": "1"}
    clip = make_video(media_dir / "bounded.mp4", 320, 180, duration=2)
    before = set(jobs().job_ids())
    first = upload_job(clip, env=bound)
    refused = encodeq("upload", str(clip), env=bound)
    assert refused.returncode == 3, refused.stderr
    assert "1 tasks waiting (the bound is 1)" in refused.stderr
    assert set(jobs().job_ids()) - before == {first}, "the refused upload stored a job"
    workers.start("drain")
    assert wait_for_job(first, timeout=120).state == "completed"
    wait_for(_nothing_queued, 30, "the queues to drain")
    assert wait_for_job(upload_job(clip, env=bound), timeout=120).state == "completed"


@pytest.mark.slow
def test_a_rung_plays_while_it_encodes_and_its_event_playlist_grows_then_ends(
    workers, media_dir
) -> None:
    """Per-rung mode, lowest rung first: while its ffmpeg is held after its first segment, its
    EVENT playlist is in storage (no ENDLIST, every listed segment there) and the job's master
    lists it; the finished playlist keeps those lines, lists more, and ends with ENDLIST."""
    workers.start("live", env={"ENCODEQ_JOB_WINDOW": "1", "ENCODEQ_FFMPEG_THREADS": "1"})
    source = make_video(media_dir / "live.mp4", 640, 360, duration=24)
    job_id = upload_job(source, "--mode", "per-rung")
    with held_ffmpeg(job_id) as held:
        [out_dir] = {Path(a).parent for a in argv_of(held) if a.endswith("seg_%05d.ts")}
        # Let it run until its first segment is out (a segment takes far longer than a poll),
        # then hold it there.
        os.kill(held, signal.SIGCONT)
        wait_for(lambda: (out_dir / "index.m3u8").exists(), 60, "the first segment", every=0.001)
        os.kill(held, signal.SIGSTOP)
        live = wait_for(lambda: _live_rendition(job_id), 30, "the live playlist in storage")
        first = storage().get_bytes(RENDITIONS, parse_uri(live.live_playlist)[1]).decode()
        assert "#EXT-X-PLAYLIST-TYPE:EVENT" in first and "#EXT-X-ENDLIST" not in first
        segments = [line for line in first.splitlines() if line.endswith(".ts")]
        assert segments
        keys = set(storage().list_keys(RENDITIONS, rendition_prefix(job_id, live.name)))
        assert {rendition_prefix(job_id, live.name) + s for s in segments} <= keys
        master = storage().get_bytes(RENDITIONS, live_master_key(job_id)).decode()
        assert f"{live.name}/{LIVE_PLAYLIST_NAME}" in master
        assert master.count("#EXT-X-STREAM-INF") == 1
        encoding = jobs().load(job_id)
        assert encoding is not None and encoding.state == "encoding"
        assert min(r.width for r in encoding.renditions) == live.width  # the lowest rung
    manifest = wait_for_job(job_id, timeout=180)
    assert manifest.state == "completed"
    [done] = [r for r in manifest.renditions if r.name == live.name]
    final = storage().get_bytes(RENDITIONS, parse_uri(done.playlist)[1]).decode()
    assert final.startswith(first.rsplit("\n", 1)[0]) and final.rstrip().endswith("#EXT-X-ENDLIST")
    assert len([x for x in final.splitlines() if x.endswith(".ts")]) > len(segments)
    full = storage().get_bytes(RENDITIONS, master_key(job_id)).decode()
    assert full.count("#EXT-X-STREAM-INF") == len(manifest.renditions)
    # what a player followed while the job encoded is gone with it
    keys = set(storage().list_keys(RENDITIONS, f"{job_id}/"))
    assert live_master_key(job_id) not in keys
    assert not any(k.endswith(LIVE_PLAYLIST_NAME) for k in keys)


def _live_rendition(job_id: str) -> Rendition | None:
    manifest = jobs().load(job_id)
    live = [r for r in manifest.renditions if r.live_playlist] if manifest else []
    return live[0] if live else None
