"""Broken and malicious uploads: each fails fast with a clear code, reads only its own bytes, and
leaves the workers healthy and no rendition looking complete.

The corpus is generated here, never downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from support import WorkerFleet, dlq_for, encodeq, make_video, storage

from encodeq.failures import load_failure


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True,
                   timeout=120)  # fmt: skip


def _good(folder: Path) -> Path:
    return make_video(folder / "good.mp4", 320, 180, duration=4)


def _truncated(folder: Path, faststart: bool) -> bytes:
    source = _good(folder)
    if faststart:
        moved = folder / "faststart.mp4"
        ffmpeg("-i", str(source), "-c", "copy", "-movflags", "+faststart", str(moved))
        source = moved
    data = source.read_bytes()
    return data[: len(data) // 2]


def _huge_duration(folder: Path) -> bytes:
    """A valid MP4 whose movie header claims 49 days."""
    data = bytearray(_good(folder).read_bytes())
    mvhd = data.find(b"mvhd")
    data[mvhd + 20 : mvhd + 24] = (0xFFFFFFF0).to_bytes(4, "big")  # duration, timescale 1000
    return bytes(data)


def _encoded(folder: Path, name: str, *args: str) -> bytes:
    path = folder / name
    ffmpeg(*args, str(path))
    return path.read_bytes()


def _canary(folder: Path) -> Path:
    """A real local video: if ffmpeg ever followed a reference to it, the job would succeed."""
    canary = folder / "canary.ts"
    if not canary.exists():
        ffmpeg("-f", "lavfi", "-i", "testsrc2=s=320x180:d=2", "-c:v", "libx264", str(canary))
    return canary


CORPUS: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "empty": (lambda f: b"", "empty_file"),
    "random bytes": (lambda f: os.urandom(200_000), "not_a_video"),
    "text": (lambda f: b"this is not a video\n" * 500, "not_a_video"),
    "truncated mp4 (index lost)": (lambda f: _truncated(f, faststart=False), "not_a_video"),
    "truncated mp4 (media cut)": (lambda f: _truncated(f, faststart=True), "truncated_source"),
    "hls playlist named .mp4": (
        lambda f: (f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{_canary(f)}\n"
                   "#EXT-X-ENDLIST\n").encode(),
        "not_a_video",
    ),
    "ffconcat script named .mp4": (
        lambda f: f"ffconcat version 1.0\nfile '{_canary(f)}'\n".encode(), "not_a_video"
    ),
    "audio only": (
        lambda f: _encoded(f, "a.m4a", "-f", "lavfi", "-i", "sine=d=2", "-c:a", "aac"),
        "no_video_stream",
    ),
    "still image": (
        lambda f: _encoded(f, "a.png", "-f", "lavfi", "-i", "testsrc2=s=64x64", "-frames:v", "1"),
        "not_a_video",
    ),
    "absurd dimensions": (
        lambda f: _encoded(f, "big.mp4", "-f", "lavfi", "-i", "color=s=5000x5000:d=0.04",
                           "-c:v", "libx264", "-preset", "ultrafast"),
        "too_large",
    ),
    "header claiming a huge duration": (_huge_duration, "too_long"),
    "frame-rate bomb": (
        lambda f: _encoded(f, "fast.mkv", "-f", "lavfi", "-i", "testsrc2=s=64x64:r=1000:d=1",
                           "-c:v", "libx264", "-preset", "ultrafast"),
        "invalid_frame_rate",
    ),
    "too many streams": (
        lambda f: _encoded(f, "many.mkv", "-f", "lavfi", "-i", "testsrc2=s=64x64:d=1",
                           *[a for _ in range(17) for a in ("-f", "lavfi", "-i", "sine=d=1")],
                           *[a for i in range(18) for a in ("-map", f"{i}")], "-c:v", "libx264",
                           "-c:a", "aac"),
        "too_many_streams",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    files = {}
    for i, (name, (make, _)) in enumerate(CORPUS.items()):
        path = folder / f"upload-{i}.mp4"  # every one of them claims to be an MP4
        path.write_bytes(make(folder))
        files[name] = path
    return files


@pytest.fixture(scope="module")
def results(corpus: dict[str, Path]) -> dict[str, dict]:
    fleet = WorkerFleet()
    fleet.start("hostile", concurrency=2)
    try:
        done = encodeq("upload", *map(str, corpus.values()), "--wait", "--json", "--timeout", "120")
        assert done.returncode == 1, done.stderr  # every job failed
        manifests = json.loads(done.stdout)
        # The worker survived all of it: a good file right after still completes.
        good = make_video(next(iter(corpus.values())).parent / "after.mp4", 320, 180, duration=2)
        after = encodeq("upload", str(good), "--wait", "--json", "--timeout", "120")
        assert after.returncode == 0 and json.loads(after.stdout)["state"] == "completed"
        assert all(w.proc.poll() is None for w in fleet.workers)
    finally:
        fleet.stop_all()
    return dict(zip(corpus, manifests, strict=True))


@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_upload_fails_fast_with_its_code(name: str, results: dict[str, dict]) -> None:
    manifest = results[name]
    expected = CORPUS[name][1]
    assert manifest["state"] == "failed"
    assert manifest["error"]["code"] == expected, manifest["error"]
    # fast: failed within seconds of being queued, on the first attempt (no retries)
    took = datetime.fromisoformat(manifest["updated_at"]) - datetime.fromisoformat(
        manifest["created_at"]
    )
    assert took.total_seconds() < 30
    [message] = dlq_for(job_id=manifest["job_id"])
    assert message.headers["x-death"][0]["reason"] == "rejected"
    record = load_failure(storage(), message.headers["id"])
    assert record is not None and record.code == expected and record.attempts == 1
    # nothing published that looks complete
    assert manifest["master_playlist"] is None
    assert all(r["state"] != "completed" for r in manifest["renditions"])
    keys = list(storage().list_keys("renditions", f"{manifest['job_id']}/"))
    assert not [k for k in keys if k.endswith(".m3u8")]


def test_output_size_limit_stops_a_runaway_encode(workers, media_dir: Path) -> None:
    workers.start("capped", env={"ENCODEQ_MAX_OUTPUT_BYTES": "20000"})
    source = make_video(media_dir / "capped.mp4", 640, 360, duration=6)
    done = encodeq("upload", str(source), "--wait", "--json", "--timeout", "120")
    manifest = json.loads(done.stdout)
    assert done.returncode == 1
    assert manifest["error"]["code"] == "output_too_large"
