"""Chunk-parallel encoding end to end: real workers, RabbitMQ, S3 server and ffmpeg.

Sources are a few seconds long with 2 s segments and 2 s chunks, so a job has several seams.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from support.broker import broker
from support.commands import encodeq, upload_and_wait, upload_job
from support.dlq import dlq_for
from support.fleet import WorkerFleet
from support.media import make_clip, make_mid_gop_ts, make_video
from support.storage import download_rendition, jobs, storage, wait_for_job
from support.waiting import wait_for

from config.settings import Settings, get_settings
from console.watch import render
from core.events import EventSubscription
from core.layout import AUDIO, RENDITIONS, UPLOADS
from core.monitor import Monitor
from worker.modes.chunked.chunk_plan import plan_packets
from worker.modes.chunked.packets import Packets
from worker.modes.registry import choose_mode

CHUNKED_ENV = {
    "ENCODEQ_CHUNK_SECONDS": "2",
    "ENCODEQ_STRAGGLER_CHECK_S": "1",
    # Nothing is a straggler unless a test says so.
    "ENCODEQ_STRAGGLER_MIN_S": "600",
}


def make_source(
    path: Path, width: int, height: int, duration: float, gop: int = 50, x264: tuple[str, ...] = ()
) -> Path:
    """An H.264/AAC MP4 at 25 fps with a keyframe every ``gop`` frames (50: every 2 s, on the
    segment grid; make_video's x264 default of 250 is a sparse source for 2 s chunks); ``x264``:
    more encoder options."""
    return make_video(path, width, height, duration, gop=gop, x264=x264)


def decoded(playlist: Path) -> dict:
    """ffprobe's view after decoding every frame (an independent count, not our own QC)."""
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
            str(playlist),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return json.loads(out.stdout)


def decoded_video(playlist: Path) -> dict:
    """The video stream of ``decoded`` (size, frames read)."""
    [video] = [s for s in decoded(playlist)["streams"] if s["codec_type"] == "video"]
    return video


def segment_durations(playlist: Path) -> list[str]:
    return [line for line in playlist.read_text().splitlines() if line.startswith("#EXTINF")]


def video_times(path: Path) -> list[float]:
    """Presentation times of a file's (or an HLS rendition's) video packets, sorted, in seconds
    from the first."""
    listing = ["-select_streams", "v:0", "-show_entries", "packet=pts_time", "-of", "csv=p=0"]
    argv = ["ffprobe", "-v", "error", *listing, str(path)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)
    fields = (line.split(",")[0] for line in out.stdout.split())
    times = sorted(float(t) for t in fields if t not in ("", "N/A"))
    return [t - times[0] for t in times]


def decodable_frames(path: Path) -> int:
    """Frames a decoder gets out of the video (ffprobe decodes every one)."""
    count = ["-select_streams", "v:0", "-count_frames", "-show_entries", "stream=nb_read_frames"]
    argv = ["ffprobe", "-v", "quiet", *count, "-of", "csv=p=0", str(path)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)
    return int(out.stdout.split()[0].split(",")[0])  # MPEG-TS lists it under its program too


@pytest.fixture(scope="class")
def fleet() -> Iterator[WorkerFleet]:
    fleet = WorkerFleet()
    fleet.start("chunk-a", env=CHUNKED_ENV)
    fleet.start("chunk-b", env=CHUNKED_ENV)
    yield fleet
    fleet.stop_all()


class TestChunkedJobs:
    def test_chunked_job_is_seamless(self, fleet, media_dir: Path, tmp_path: Path) -> None:
        source = make_source(media_dir / "chunked.mp4", 640, 360, duration=8)
        manifest = upload_and_wait(
            source,
            options=("--mode", "chunked"),
        )[0]
        assert manifest["state"] == "completed", manifest["error"]
        assert manifest["mode"] == "chunked"
        chunks = manifest["chunks"]
        assert chunks["split"] == "range" and chunks["reason"].startswith("4 chunks of 2.00s")
        assert chunks["starts"] == [0.0, 2.0, 4.0, 6.0] and chunks["frames"] == [50] * 4
        assert manifest["source"]["frames"] == 200
        got = [(r["name"], r["width"], r["height"]) for r in manifest["renditions"]]
        assert got == [("360p", 640, 360), ("240p", 426, 240)]
        # the lowest rung is encoded from the whole source (it plays first), the rest in chunks
        assert chunks["whole_rungs"] == ["240p"]
        grids = []
        for r in manifest["renditions"]:
            assert r["state"] == "completed"
            settings = r["encoder"]
            if r["name"] in chunks["whole_rungs"]:
                assert r["seam_check"] is None and settings["mode"] == "per-rung"
            else:
                check = r["seam_check"]
                assert check["passed"] and check["problems"] == []
                assert check["frames"] == check["expected_frames"] == 200
                assert check["seams"] == 3 and check["max_seam_error_s"] < 0.005
                assert abs(check["audio_duration"] - check["video_duration"]) < 0.15
                assert (settings["mode"], settings["chunks"], settings["chunk_seconds"]) == (
                    "chunked",
                    4,
                    2,
                )
            assert settings["codec"] == "libx264" and settings["preset"] == "ultrafast"
            assert settings["gop"] == 50 and settings["segment_seconds"] == 2
            assert settings["rate_control"]["bitrate"] == f"{r['video_kbps']}k"
            # What a player sees, decoded by ffprobe: size, every frame, both streams, length.
            playlist = download_rendition(r["playlist"], tmp_path)
            info = decoded(playlist)
            [video] = [s for s in info["streams"] if s["codec_type"] == "video"]
            [audio] = [s for s in info["streams"] if s["codec_type"] == "audio"]
            assert (video["width"], video["height"]) == (r["width"], r["height"])
            assert int(video["nb_read_frames"]) == 200
            assert audio["codec_name"] == "aac"
            assert float(info["format"]["duration"]) == pytest.approx(8.0, abs=0.15)
            grids.append(segment_durations(playlist))
        assert grids[0] == grids[1] and len(grids[0]) == 4  # keyframes aligned across rungs
        assert manifest["master_playlist"] and manifest["poster"]
        # one record per chunk, plus the audio encoded once
        store = jobs()
        records = [store.load_chunk(manifest["job_id"], i) for i in range(4)]
        assert all(rec is not None and rec.state == "completed" for rec in records)
        assert store.load_chunk(manifest["job_id"], AUDIO).state == "completed"
        # the intermediates (per-rung chunk outputs, audio) went with completion;
        # the upload itself stays
        job_id = manifest["job_id"]
        assert list(storage().list_keys(UPLOADS, f"{job_id}/chunks/")) == []
        assert list(storage().list_keys(UPLOADS, f"{job_id}/"))

    def test_sparse_keyframes_and_open_gops_need_no_cut_on_a_keyframe(
        self, fleet, media_dir: Path, tmp_path: Path
    ) -> None:
        # One keyframe in the whole source, or open GOPs (B-frames shown before each keyframe
        # are decoded after it): chunks still start where the plan balances them, because each
        # chunk task decodes its own range (seeking to a keyframe before it).
        open_gop = ("-keyint_min", "50", "-sc_threshold", "0", "-bf", "3")
        open_gop += ("-x264-params", "open-gop=1:b-pyramid=0")
        sources = {
            "sparse": make_source(media_dir / "sparse.mp4", 426, 240, duration=7, gop=1000),
            "open GOP": make_source(
                media_dir / "open-gop.mp4", 426, 240, duration=6, x264=open_gop
            ),
        }
        manifests = upload_and_wait(*sources.values(), options=("--mode", "chunked"))
        for (what, frames, counted), manifest in zip(
            [("sparse", 175, [44, 44, 44, 43]), ("open GOP", 150, [50, 50, 50])],
            manifests,
            strict=True,
        ):
            assert manifest["state"] == "completed", (what, manifest["error"])
            chunks = manifest["chunks"]
            assert chunks["split"] == "range" and chunks["frames"] == counted, what
            [r] = manifest["renditions"]
            assert r["seam_check"]["passed"] and r["seam_check"]["frames"] == frames, what
            video = decoded_video(download_rendition(r["playlist"], tmp_path / what))
            assert int(video["nb_read_frames"]) == frames, what

    @pytest.mark.slow  # the default suite's time budget
    def test_sources_nobody_tuned_for_complete_with_every_frame(
        self, fleet, media_dir: Path, tmp_path: Path
    ) -> None:
        # Issue 10: frame rates, GOPs and lengths as phones and cameras make them, forced into
        # chunked mode on real workers. Every job completes and every rendition holds every frame
        # of its source at its own time; a source no split can meet goes per rung instead.
        sources = {
            "29.97 fps, 2 s GOP": make_clip(
                media_dir / "e2e-2997.mp4", "29.97", 5, "2s", size="640x360", audio=True
            ),
            "23.976 fps, scene cuts": make_clip(
                media_dir / "e2e-23976.mp4", "23.976", 9, "scene-cut", "160x90", 2, audio=True
            ),
            "variable frame rate": make_clip(
                media_dir / "e2e-vfr.mp4", "vfr", 8, "1s", size="160x90", audio=True
            ),
            "shorter than a segment": make_clip(
                media_dir / "e2e-short.mp4", "29.97", 1.5, "2s", size="160x90", audio=True
            ),
            "cut mid-GOP": make_mid_gop_ts(media_dir / "e2e-mid-gop.ts"),
        }
        manifests = upload_and_wait(*sources.values(), options=("--mode", "chunked"))
        for (what, source), manifest in zip(sources.items(), manifests, strict=True):
            assert manifest["state"] == "completed", (what, manifest["error"])
            frames = decodable_frames(source)
            if what == "cut mid-GOP":  # the last resort: encoded per rung, not failed
                assert manifest["mode"] == "per-rung" and manifest["chunks"] is None, what
            else:
                assert manifest["mode"] == "chunked", what
                assert sum(manifest["chunks"]["frames"]) == frames, what
                if what == "shorter than a segment":
                    assert manifest["chunks"]["frames"] == [frames]
            # nothing died on the way (the switched job's chunk tasks finished quietly)
            assert not dlq_for(job_id=manifest["job_id"]), what
            expected = video_times(source) if manifest["mode"] == "chunked" else None
            grids = set()
            for r in manifest["renditions"]:
                folder = tmp_path / manifest["job_id"]
                folder.mkdir(exist_ok=True)
                playlist = download_rendition(r["playlist"], folder)
                got = int(decoded_video(playlist)["nb_read_frames"])
                if expected is None:  # per rung: a constant frame rate from the first timestamp
                    assert got >= frames, (what, r["name"])  # (it repeats a frame into gaps)
                    continue
                assert got == frames, (what, r["name"])
                whole = r["name"] in manifest["chunks"]["whole_rungs"]
                assert whole or r["seam_check"]["passed"], (what, r["seam_check"])
                times = video_times(playlist)
                worst = max(abs(a - b) for a, b in zip(times, expected, strict=True))
                assert worst < 0.001, (what, r["name"], worst)
                grids.add(tuple(segment_durations(playlist)))
            assert len(grids) <= 1, (what, grids)  # every rung cuts its segments alike

    def test_rotated_phone_video_keeps_its_rotation_through_the_chunks(
        self, fleet, media_dir: Path, tmp_path: Path
    ) -> None:
        raw = make_source(media_dir / "rot-raw.mp4", 640, 360, duration=4)
        source = media_dir / "rot-chunked.mp4"
        subprocess.run(
            [
                "ffmpeg",
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-i",
                str(raw),
                "-c",
                "copy",
                "-metadata:s:v:0",
                "rotate=90",
                str(source),
            ],
            check=True,
            timeout=60,
        )
        manifest = upload_and_wait(
            source,
            options=("--mode", "chunked"),
        )[0]
        assert manifest["state"] == "completed", manifest["error"]
        assert manifest["chunks"]["split"] == "range" and len(manifest["chunks"]["starts"]) == 2
        got = [(r["name"], r["width"], r["height"]) for r in manifest["renditions"]]
        assert got == [("360p", 360, 640), ("240p", 240, 426)]
        for r in manifest["renditions"]:
            video = decoded_video(download_rendition(r["playlist"], tmp_path))
            assert (video["width"], video["height"]) == (r["width"], r["height"])
            assert int(video["nb_read_frames"]) == 100

    def test_per_rung_mode_still_works(self, fleet, media_dir: Path) -> None:
        source = make_video(media_dir / "per-rung.mp4", 426, 240, duration=3)
        explicit = upload_and_wait(
            source,
            options=("--mode", "per-rung"),
        )[0]
        assert explicit["state"] == "completed", explicit["error"]
        assert explicit["mode"] == "per-rung" and explicit["chunks"] is None
        [r] = explicit["renditions"]
        assert r["encoder"]["mode"] == "per-rung" and r["seam_check"] is None
        # without --mode, the mode the measured default picks for its length
        auto = upload_and_wait(source)[0]
        assert auto["state"] == "completed" and auto["mode"] == choose_mode(None, 3.0)

    def test_a_bad_mode_is_refused(self, media_dir: Path) -> None:
        source = make_video(media_dir / "per-rung.mp4", 426, 240, duration=3)
        result = encodeq("upload", str(source), "--mode", "fast")
        assert result.returncode == 2 and "--mode" in result.stderr


@pytest.mark.unit
def test_mode_defaults_follow_the_measured_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    threshold = Settings().chunked_min_duration_s
    assert choose_mode(None, threshold) == "chunked"
    assert choose_mode(None, 600.0) == "chunked"
    assert choose_mode("per-rung", 600.0) == "per-rung"
    assert choose_mode("chunked", 3.0) == "chunked"
    monkeypatch.setenv("ENCODEQ_CHUNKED_MIN_DURATION_S", "60")
    get_settings.cache_clear()
    try:
        assert choose_mode(None, 59.9) == "per-rung" and choose_mode(None, 60.0) == "chunked"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


# --- holding one chunk in a stopped worker --------------------------------------------------------
def hold_a_chunk(worker, job_id: str, timeout: float = 90) -> int:
    """SIGSTOP ``worker``'s encode node while it is encoding a chunk other than the first (so a
    sibling has finished); returns the chunk's index. The worker's ffmpeg may finish, its task
    cannot. Its control node goes on (a stalled encode, not a frozen host: the straggler
    watchdog and the joins may run there)."""
    store = jobs()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manifest = store.load_job(job_id)
        count = manifest.chunks.count if manifest and manifest.chunks else 0
        for index in range(1, count):
            record = store.load_chunk(job_id, index)
            if record is None or record.state != "encoding":
                continue
            os.killpg(worker.pid, signal.SIGSTOP)
            for pid in worker.control_tree():
                os.kill(pid, signal.SIGCONT)
            time.sleep(0.5)  # let a request already on the wire land
            record = store.load_chunk(job_id, index)
            if record is not None and record.state == "encoding":
                return index
            os.killpg(worker.pid, signal.SIGCONT)
        time.sleep(0.03)
    raise AssertionError(f"never caught {worker.name} encoding a chunk of {job_id}")


def resume(worker) -> None:
    if worker.proc.poll() is None:
        os.killpg(worker.pid, signal.SIGCONT)


@pytest.mark.slow
def test_a_seam_check_failure_fails_the_job(workers, media_dir: Path) -> None:
    source = make_source(media_dir / "seams.mp4", 640, 360, duration=12)
    alpha = workers.start("seam-a", env=CHUNKED_ENV)
    job_id = upload_job(source, "--mode", "chunked")
    assert hold_a_chunk(alpha, job_id) >= 1
    try:
        # one worker takes the encode queue in order: chunk 0 finished before the held one began
        store = jobs()
        wait_for(lambda: store.load_chunk(job_id, 0).state == "completed", 30, "chunk 0")
        corrupt = 0
        # Really break a finished chunk of 360p in storage: cut it to half its TS packets (240p,
        # the lowest rung, is encoded from the whole source).
        key = f"{job_id}/chunks/360p/{corrupt:05d}.ts"
        s = storage()
        data = s.get_bytes(UPLOADS, key)
        half = len(data) // 2 // 188 * 188
        s.put_bytes(UPLOADS, key, data[:half], "video/mp2t")
    finally:
        resume(alpha)
    manifest = wait_for_job(job_id, timeout=120)
    assert manifest.state == "failed"
    assert manifest.error is not None and manifest.error.code == "seam_check_failed"
    assert "360p" in manifest.error.message
    rung = {r.name: r for r in manifest.renditions}["360p"]
    assert rung.state == "failed" and rung.seam_check is not None
    assert not rung.seam_check.passed
    assert rung.seam_check.frames < rung.seam_check.expected_frames
    # nothing of the broken rung was published, and no master playlist
    assert not list(storage().list_keys(RENDITIONS, f"{job_id}/360p/"))
    assert manifest.master_playlist is None
    # a failed job keeps its intermediates: a replayed join needs its chunks
    kept = set(storage().list_keys(UPLOADS, f"{job_id}/chunks/"))
    assert f"{job_id}/chunks/360p/00000.ts" in kept and f"{job_id}/chunks/audio.ts" in kept


@pytest.mark.slow
def test_a_straggler_is_offered_to_a_second_worker(workers, media_dir: Path) -> None:
    source = make_source(media_dir / "straggler.mp4", 640, 360, duration=12)
    env = {**CHUNKED_ENV, "ENCODEQ_STRAGGLER_MIN_S": "2", "ENCODEQ_STRAGGLER_FACTOR": "2"}
    with broker() as conn:
        conn.connect()
        with EventSubscription(conn, ("chunk.*",)) as events:
            slow = workers.start("slow", env=env)
            job_id = upload_job(source, "--mode", "chunked")
            held = hold_a_chunk(slow, job_id)
            try:
                workers.start("fast", env=env)
                manifest = wait_for_job(job_id, timeout=120)
                assert manifest.state == "completed", manifest.error
                record = jobs().load_chunk(job_id, held)
                assert record.worker.startswith("fast@") and record.offers == 2
            finally:
                resume(slow)
            seen: list[dict] = []

            def got(kind: str) -> dict | None:
                seen.extend(events.events(timeout=0.5))
                return next(
                    (
                        e
                        for e in seen
                        if e["event"] == kind and e["chunk"] == held and e["job_id"] == job_id
                    ),
                    None,
                )

            straggler = wait_for(lambda: got("chunk.straggler"), 30, "chunk.straggler")
            assert straggler["worker"].startswith("slow@") and straggler["running_s"] >= 2
            # The slow copy finishes late, sees the fast one won, and keeps its hands off.
            discarded = wait_for(lambda: got("chunk.discarded"), 60, "chunk.discarded")
            assert discarded["worker"].startswith("slow@")
            assert discarded["winner"].startswith("fast@")
    # What `encodeq watch` and the dashboard's monitor make of those events: the straggler shown.
    monitor = Monitor(job_id)
    for event in seen:
        monitor.apply(event)
    view = monitor.job(job_id).chunks[held]
    assert view.straggler and view.state == "completed" and view.worker.startswith("fast@")
    screen = Console(record=True, width=200)
    screen.print(render(monitor))
    assert f"chunk {held} straggled, offered again (now fast@" in screen.export_text()
    final = jobs().load(job_id)
    assert final.state == "completed" and final.chunks is not None
    joined = [r for r in final.renditions if r.name not in final.chunks.whole_rungs]
    assert joined and all(r.seam_check and r.seam_check.passed for r in joined)


@pytest.mark.unit
def test_a_start_announced_after_the_chunk_completed_does_not_reopen_it() -> None:
    """Events arrive in the order their workers sent them: a worker frozen between recording a
    chunk's start and announcing it (SIGSTOP, a paused VM) sends its start after the other offer
    completed the chunk. The view keeps the chunk completed by the winner."""
    job_id = "0" * 32
    monitor = Monitor(job_id)
    base = {"job_id": job_id, "chunk": 1, "chunks": 4}
    for event in (
        {"event": "chunk.straggler", "worker": "slow@h", **base},
        {"event": "chunk.started", "worker": "fast@h", "offer": 2, **base},
        {"event": "chunk.completed", "worker": "fast@h", **base},
        {"event": "chunk.started", "worker": "slow@h", "offer": 1, **base},
        {"event": "chunk.discarded", "worker": "slow@h", "winner": "fast@h", **base},
    ):
        monitor.apply(event)
    view = monitor.job(job_id).chunks[1]
    assert (view.state, view.worker, view.straggler) == ("completed", "fast@h", True)


@pytest.mark.unit
def test_the_plan_balances_chunks_on_any_frame_whatever_the_keyframes() -> None:
    settings = Settings(segment_seconds=2)

    def plan(p: Packets, consumers: int, rate: float = 25.0) -> tuple[list[float], list[int]]:
        chunks = plan_packets(p, rate, settings, consumers).chunks
        return chunks.starts, chunks.frames

    def packets(keyframes_every: int, frames: int, rate: float, offset: float = 0.0) -> Packets:
        pts = [offset + i / rate for i in range(frames)]
        keys = [int(i % keyframes_every == 0) for i in range(frames)]
        return Packets(pts, keys, [1 / rate] * frames)

    # 36 s at 25 fps, keyframes every 1.8 s, 2 consumers: 4 chunks of 9 s, none on a keyframe
    assert plan(packets(45, 900, 25.0), 2) == ([0.0, 9.0, 18.0, 27.0], [225] * 4)
    # a start offset (MPEG-TS sources start at 1.4 s) changes nothing: times are from frame one
    assert plan(packets(45, 900, 25.0, offset=1.4), 2)[0] == [0.0, 9.0, 18.0, 27.0]
    # 3 consumers: 6 chunks of 6 s
    assert plan(packets(45, 900, 25.0), 3)[1] == [150] * 6
    # 29.97 fps, keyframes every 2.002 s, 20 s: 4 chunks on the first frame at or after each
    # quarter, counted in frames, never rounded to one
    ntsc = Packets(
        [i * 1001 / 30000 for i in range(600)],
        [int(i % 60 == 0) for i in range(600)],
        [1001 / 30000] * 600,
    )
    starts, frames = plan(ntsc, 2, 30000 / 1001)
    assert frames == [150, 150, 150, 150] and starts == [0.0, 5.005, 10.01, 15.015]
    # each chunk seeks a second before the keyframe at or before its start
    chunks = plan_packets(ntsc, 30000 / 1001, settings, 2).chunks
    assert chunks.seeks == [0.0, 3.004, 9.01, 13.014]
    # midway bounds: no frame is near a bound
    assert chunks.bounds == pytest.approx([t - 1001 / 60000 for t in starts[1:]], abs=1e-6)
