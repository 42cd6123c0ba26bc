"""The per-host cache against the real S3 server: what a host made is read back without a
download, an object replaced in S3 is never served stale, the cache keeps to its disk budget
without taking an entry from a task that reads it, and a finished job's entries go on every host
(but never from under a task of the job still running there)."""

from __future__ import annotations

import os
import random
import signal
import uuid
from pathlib import Path

import pytest
from support.broker import event_queues
from support.commands import upload_job
from support.fleet import hold_ffmpeg
from support.media import make_video
from support.storage import jobs, storage, wait_for_job
from support.waiting import wait_for

from config.settings import get_settings
from config.topology import ENCODE_QUEUE_NAME
from core.layout import UPLOADS
from core.storage import parse_uri
from worker import host_cache
from worker.app import app
from worker.task_support import workdir


def test_a_host_reads_back_what_it_uploaded_and_refetches_a_replaced_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "work_dir", str(tmp_path / "host"))
    s = storage()
    job_id = uuid.uuid4().hex
    key = f"{job_id}/chunks/360p/00000.ts"
    made = tmp_path / "made.ts"
    made.write_bytes(b"first encode" * 1000)
    try:
        uri = host_cache.put(s, job_id, UPLOADS, key, made, "video/mp2t")
        assert uri == s.uri(UPLOADS, key) and s.get_bytes(UPLOADS, key) == made.read_bytes()

        # the same host asks for it: the file it made (a hard link), no second copy
        local = host_cache.fetch(s, job_id, UPLOADS, key)
        assert local.stat().st_ino == made.stat().st_ino
        named = host_cache.fetch_as(s, job_id, UPLOADS, key, tmp_path / "c00000.ts")
        assert named.read_bytes() == made.read_bytes()

        # someone replaces the object (a straggler's copy, a repair): the new bytes, downloaded
        s.put_bytes(UPLOADS, key, b"second encode" * 1000, "video/mp2t")
        fresh = host_cache.fetch(s, job_id, UPLOADS, key)
        assert fresh != local and fresh.read_bytes() == b"second encode" * 1000
        assert fresh.stat().st_ino != made.stat().st_ino

        # the job ends on this host: its entries go
        host_cache.drop(job_id)
        assert not (host_cache.cache_root() / job_id).exists()
    finally:
        host_cache.drop(job_id)
        s.remove_prefix(UPLOADS, f"{job_id}/")


def test_remove_prefix_deletes_only_under_the_prefix() -> None:
    s = storage()
    job_id = uuid.uuid4().hex
    for key in ("chunks/audio.ts", "chunks/240p/00000.ts", "source.mp4"):
        s.put_bytes(UPLOADS, f"{job_id}/{key}", b"x", "application/octet-stream")
    assert s.remove_prefix(UPLOADS, f"{job_id}/chunks/") == 2
    assert list(s.list_keys(UPLOADS, f"{job_id}/")) == [f"{job_id}/source.mp4"]
    s.remove_prefix(UPLOADS, f"{job_id}/")


# --- the disk budget -----------------------------------------------------------------------------
def _cached(job_id: str, key: str) -> Path | None:
    """This host's entry of an object (any ETag), if it has one."""
    folder = host_cache.cache_root() / job_id
    flat = f"{UPLOADS}~{key.replace('/', '~')}."
    found = [p for p in folder.glob("*") if p.name.startswith(flat)] if folder.exists() else []
    return found[0] if found else None


def test_the_budget_evicts_the_least_recently_used_entries_never_one_a_task_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    settings = get_settings()
    monkeypatch.setattr(settings, "work_dir", str(tmp_path / "host"))
    s = storage()
    job_id = uuid.uuid4().hex
    keys = [f"{job_id}/chunks/240p/{i:05d}.ts" for i in range(12)]
    blobs = {key: rng.randbytes(rng.randrange(20_000, 120_000)) for key in keys}
    budget = rng.randrange(250_000, 400_000)  # room for a few entries, never for all
    monkeypatch.setattr(settings, "host_cache_bytes", budget)
    for key, blob in blobs.items():
        s.put_bytes(UPLOADS, key, blob, "video/mp2t")
    held_key, others = keys[0], keys[1:]
    recent: list[str] = []  # entries no task holds, least recently used first

    def use(key: str) -> None:
        """One task of the job reads ``key`` and ends."""
        with workdir(job_id):
            assert host_cache.fetch(s, job_id, UPLOADS, key).read_bytes() == blobs[key]
        if key in recent:
            recent.remove(key)
        recent.append(key)
        assert host_cache.size_bytes() <= budget, "the cache grew past its budget"
        kept = [k for k in recent if _cached(job_id, k)]
        assert kept == recent[len(recent) - len(kept) :], "a more recently used entry went first"

    try:
        with workdir(job_id):  # a task reads the oldest entry and is still at it
            reading = host_cache.fetch(s, job_id, UPLOADS, held_key)
            for key in [*others, *rng.choices(others, k=20)]:  # misses, then hits and misses
                use(key)
                assert _cached(job_id, held_key) is not None, "an entry in use was evicted"
            assert len([k for k in others if _cached(job_id, k)]) < len(others)  # some went
            assert reading.read_bytes() == blobs[held_key]
        # The task has left: its entry is now the least recently used one, so it goes first.
        held_entry = _cached(job_id, held_key)
        one_byte_short = budget - host_cache.size_bytes() + 1
        assert host_cache.make_room(one_byte_short) == [held_entry]
    finally:
        host_cache.drop(job_id)
        s.remove_prefix(UPLOADS, f"{job_id}/")


# --- a finished job's entries, on every host -----------------------------------------------------
def _source_key(job_id: str) -> str:
    manifest = jobs().load(job_id)
    assert manifest is not None
    return parse_uri(manifest.source.uri)[1]


@pytest.mark.slow  # the default suite's time budget
def test_a_finished_job_leaves_no_entries_on_any_host(
    workers, media_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hosts = [tmp_path / "host-a", tmp_path / "host-b"]
    good = upload_job(make_video(media_dir / "cache-good.mp4", 320, 180, duration=2))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(50_000))
    bad = upload_job(junk)  # fails its probe: not a video
    s = storage()
    for host in hosts:  # both hosts hold entries of both jobs before any worker runs them
        monkeypatch.setattr(get_settings(), "work_dir", str(host))
        for job_id in (good, bad):
            host_cache.fetch(s, job_id, UPLOADS, _source_key(job_id))
            assert (host_cache.cache_root() / job_id).exists()
    # Events are transient: both hosts must listen before the first task runs. B first, on the
    # encode queue only (the jobs' probes wait in the control queue), until it follows events;
    # A follows them before its first task (the step starts before the worker's event loop).
    b = workers.start(
        "cache-b", env={"ENCODEQ_WORK_DIR": str(hosts[1])}, queues=(ENCODE_QUEUE_NAME,)
    )
    wait_for(lambda: any(f".{b.pid}.host-cache" in q for q in event_queues()), 30, "B to listen")
    workers.start("cache-a", env={"ENCODEQ_WORK_DIR": str(hosts[0])})
    assert wait_for_job(good).state == "completed"
    assert wait_for_job(bad).state == "failed"
    left = [host / "cache" / job_id for host in hosts for job_id in (good, bad)]
    wait_for(lambda: not any(p.exists() for p in left), 30, "every host to drop both jobs")


@pytest.mark.slow
def test_a_sibling_failure_leaves_the_cache_to_a_task_still_reading_it(
    workers, media_dir: Path, tmp_path: Path
) -> None:
    host = tmp_path / "host"
    env = {"ENCODEQ_WORK_DIR": str(host), "ENCODEQ_FFMPEG_THREADS": "1"}
    worker = workers.start("cache-reader", concurrency=2, env=env)
    source = make_video(media_dir / "lifetime-240p-40s.mp4", 426, 240, duration=40)
    job_id = upload_job(source, "--mode", "per-rung")  # one rung: 240p
    held = hold_ffmpeg(f"{host}/work/encodeq-{job_id}-")  # the reader, mid-encode
    try:
        entry = wait_for(lambda: list((host / "cache" / job_id).glob("uploads~*")), 10, "entry")
        # A sibling task of the same job fails on the same host (a rung the job does not have).
        app.send_task("encodeq.encode", args=[job_id, "999p"])
        wait_for(lambda: jobs().load(job_id).state == "failed", 60, "the sibling's failure")
        ended = host / "cache" / ".ended" / job_id
        gone = host / "cache" / job_id
        wait_for(lambda: ended.exists() or not gone.exists(), 30, "the worker to take job.failed")
        assert all(p.exists() for p in entry), "the failure dropped the cache under the reader"
    finally:
        os.kill(held, signal.SIGCONT)
    record = wait_for(
        lambda: (r := jobs().load_rendition(job_id, "240p")) and r.state == "completed" and r,
        120,
        "the reader to complete its rendition",
    )
    assert record.playlist, worker.output()[-3000:]
    wait_for(lambda: not (host / "cache" / job_id).exists(), 30, "the entries to go after it")
