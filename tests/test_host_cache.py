"""The per-host cache against the real S3 server: what a host made is read back without a
download, and an object replaced in S3 is never served stale."""

from __future__ import annotations

import uuid
from pathlib import Path

from support import storage

from encodeq.storage import UPLOADS
from worker import host_cache


def test_a_host_reads_back_what_it_uploaded_and_refetches_a_replaced_object(
    tmp_path: Path,
) -> None:
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
    for key in ("chunks/src/00000.mp4", "chunks/240p/00000.ts", "source.mp4"):
        s.put_bytes(UPLOADS, f"{job_id}/{key}", b"x", "application/octet-stream")
    assert s.remove_prefix(UPLOADS, f"{job_id}/chunks/") == 2
    assert list(s.list_keys(UPLOADS, f"{job_id}/")) == [f"{job_id}/source.mp4"]
    s.remove_prefix(UPLOADS, f"{job_id}/")
