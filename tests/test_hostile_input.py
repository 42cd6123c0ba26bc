"""Broken and malicious uploads: each fails fast with a clear code, reads only its own bytes, and
leaves the workers healthy and no rendition looking complete.

The corpus is generated here, never downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import struct
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from support.commands import encodeq, upload_and_wait, upload_job
from support.dlq import dlq_for
from support.fleet import WorkerFleet, hold_ffmpeg, slow_motion
from support.media import ffmpeg, make_video
from support.storage import storage, wait_for_job
from support.waiting import wait_for

from core.failures import load_failure
from core.layout import RENDITIONS, job_prefix, live_master_key


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
        lambda f: (
            f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{_canary(f)}\n#EXT-X-ENDLIST\n"
        ).encode(),
        "not_a_video",
    ),
    "ffconcat script named .mp4": (
        lambda f: f"ffconcat version 1.0\nfile '{_canary(f)}'\n".encode(),
        "not_a_video",
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
        lambda f: _encoded(
            f,
            "big.mp4",
            "-f",
            "lavfi",
            "-i",
            "color=s=5000x5000:d=0.04",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ),
        "too_large",
    ),
    "header claiming a huge duration": (_huge_duration, "too_long"),
    "frame-rate bomb": (
        lambda f: _encoded(
            f,
            "fast.mkv",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=64x64:r=1000:d=1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ),
        "invalid_frame_rate",
    ),
    "too many streams": (
        lambda f: _encoded(
            f,
            "many.mkv",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=64x64:d=1",
            *[a for _ in range(17) for a in ("-f", "lavfi", "-i", "sine=d=1")],
            *[a for i in range(18) for a in ("-map", f"{i}")],
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
        ),
        "too_many_streams",
    ),
}


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
    assert wait_for(lambda: not _playlists(manifest["job_id"]), 60, "no playlist of a failed job")


def _playlists(job_id: str) -> list[str]:
    """Every playlist of the job in storage (a sibling task still failing may have one a moment
    longer: each failure removes what the job's tasks published live)."""
    return [k for k in storage().list_keys(RENDITIONS, job_prefix(job_id)) if k.endswith(".m3u8")]


@pytest.mark.slow
def test_a_failed_job_leaves_no_live_playlist(workers, media_dir: Path) -> None:
    """A source cut short goes live (its lowest rung's live playlist and the live master are
    published), then every encode fails at the cut: the failed job must not leave a playlist
    that promises a player segments that never come."""
    folder = media_dir / "cut-live"
    folder.mkdir(exist_ok=True)
    whole = make_video(folder / "whole.mp4", 640, 360, duration=24)
    moved = folder / "faststart.mp4"
    ffmpeg("-i", str(whole), "-c", "copy", "-movflags", "+faststart", str(moved))
    cut = folder / "cut.mp4"
    cut.write_bytes(moved.read_bytes()[: moved.stat().st_size // 2])
    workers.start("cut-live", env={"ENCODEQ_FFMPEG_THREADS": "1"})
    job_id = upload_job(cut, "--mode", "per-rung")
    held = hold_ffmpeg(job_id, also="hls_time")
    try:
        with slow_motion([held]):  # live before it reaches the cut, however fast the machine
            wait_for(lambda: storage().get_bytes(RENDITIONS, live_master_key(job_id)), 120, "live")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(held, signal.SIGCONT)
    manifest = wait_for_job(job_id, 120)
    assert manifest.state == "failed" and manifest.error.code == "truncated_source"
    assert wait_for(lambda: not _playlists(job_id), 60, "no playlist of the failed job")


def test_output_size_limit_stops_a_runaway_encode(workers, media_dir: Path) -> None:
    workers.start("capped", env={"ENCODEQ_MAX_OUTPUT_BYTES": "20000"})
    source = make_video(media_dir / "capped.mp4", 640, 360, duration=6)
    done = encodeq("upload", str(source), "--wait", "--json", "--timeout", "120")
    manifest = json.loads(done.stdout)
    assert done.returncode == 1
    assert manifest["error"]["code"] == "output_too_large"


# --- issue 10, item 8: durations that lie -------------------------------------------------------
def _lying_mkv(path: Path, seconds: int, claims: float = 1.0) -> Path:
    """A Matroska file of ``seconds`` of video and audio whose header says it lasts ``claims``
    seconds: the segment's duration and each track's DURATION tag rewritten, nothing else."""
    inputs = [f"testsrc2=s=160x90:r=25:d={seconds}", f"sine=d={seconds}"]
    codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-c:a", "aac", "-shortest"]
    ffmpeg(*(a for i in inputs for a in ("-f", "lavfi", "-i", i)), *codecs, str(path))
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")  # Duration, an 8-byte float (milliseconds)
    assert at > 0
    data[at + 3 : at + 11] = struct.pack(">d", claims * 1000)
    for tag in set(re.findall(rb"00:00:\d\d\.\d{9}", bytes(data))):  # the tracks' DURATION tags
        data = data.replace(tag, b"00:00:%012.9f" % claims)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.unit
def test_the_probe_takes_the_longest_of_the_format_and_stream_durations() -> None:
    from config.settings import Settings
    from core.errors import InputError
    from worker.probe import check

    video = {
        "codec_type": "video",
        "codec_name": "h264",
        "width": 64,
        "height": 36,
        "avg_frame_rate": "25/1",
    }
    settings = Settings(max_duration_s=5)
    honest = {"format": {"duration": "4.0"}, "streams": [{**video, "duration": "4.0"}]}
    assert check(honest, settings).duration == 4.0
    for streams in (
        [{**video, "duration": "12.0"}],
        [video, {"codec_type": "audio", "duration": "12.0"}],
    ):
        with pytest.raises(InputError) as refused:
            check({"format": {"duration": "1.0"}, "streams": streams}, settings)
        assert refused.value.code == "too_long"


def test_a_header_that_lies_about_the_duration_cannot_carry_a_source_past_the_limit(
    workers, tmp_path: Path
) -> None:
    from config.settings import Settings
    from worker.probe import read_limit_s

    limit = 5
    workers.start(
        "limits", env={"ENCODEQ_MAX_DURATION_S": str(limit), "ENCODEQ_CHUNK_SECONDS": "2"}
    )
    lying = _lying_mkv(tmp_path / "lying.mkv", seconds=12)
    many = _lying_mkv(tmp_path / "many.mkv", seconds=60)  # more packets than 5 s at 240 fps
    # Per rung: ffmpeg reads no more than a little past the header's 1 s.
    [per_rung] = upload_and_wait(lying, options=("--mode", "per-rung"))
    assert per_rung["state"] == "completed", per_rung["error"]
    bound = read_limit_s(1.0, Settings(max_duration_s=limit))
    for rendition in per_rung["renditions"]:
        assert 1.0 <= rendition["duration"] <= bound + 0.1, rendition
    # Chunked: the plan reads the packets, which tell the truth, and refuses; the file with too
    # many packets for the limits is refused as soon as their count passes them.
    refused = upload_and_wait(lying, many, options=("--mode", "chunked"))
    for manifest in refused:
        assert manifest["state"] == "failed" and manifest["error"]["code"] == "too_long"
    assert "its frames last 12s" in refused[0]["error"]["message"]
    assert f"more than {limit * 240} frames" in refused[1]["error"]["message"]
