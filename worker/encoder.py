"""One rendition: source file -> ffmpeg (H.264 yuv420p + AAC) -> HLS files in a local folder.

The command is built with ffmpeg-python. Keyframes are forced on the segment grid
(``expr:gte(t,n_forced*S)``) with scene-cut keyframes off, so every rung starts its segments on the
same instants and a player can switch rungs at any segment boundary.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

from config.ladder import RenditionPlan
from config.settings import Settings
from core.errors import EncodeError
from core.job_model import ChunkPlan, ProbeResult
from core.layout import PLAYLIST_NAME, SEGMENT_GLOB, SEGMENT_PATTERN
from worker import process
from worker.hls import AAC_LC, MediaPlaylistStats, avc1_codec, media_playlist_stats
from worker.probe import SAFE_INPUT_OPTIONS, read_limit_s

FFMPEG_TIMEOUT_MARGIN_S = 10
#: How much shorter than its source a rendition may be (rounding, a trailing partial frame).
TRUNCATION_TOLERANCE = 0.05
GLOBAL_ARGS = ["-hide_banner", "-nostdin", "-y", "-loglevel", "warning", "-nostats"]
#: Keyframe times are compared this loosely: a chunk's start is recorded to the microsecond, and
#: no two frames (not even at 59.94 fps or on a 90 kHz clock) are this close.
KEYFRAME_EPSILON_S = 2e-6


#: x264's rate tolerance (its default is 1.0): how closely one-pass ABR holds the target bitrate.
#: At the default, an encode of a few seconds (a chunk) undershoots: 4 s chunks of a 720p source
#: came out 9% under the 240p rung's bitrate and 1.5 dB PSNR under a whole-source encode; at 0.1
#: they hit it within 1%. Every mode uses it, so per-rung and chunked renditions match.
RATE_TOLERANCE = "ratetol=0.1"


def encoder_threads(settings: Settings) -> int:
    """Threads per ffmpeg: as set, else the cores this process may run on shared among the
    worker's pool processes (ffmpeg's own choice, about 1.5 threads a core per process, makes
    two processes on two cores fight over them); outside a worker (a benchmark's baseline),
    0: ffmpeg's own choice."""
    if settings.ffmpeg_threads > 0:
        return settings.ffmpeg_threads
    if settings.worker_concurrency <= 0:
        return 0
    cores = len(os.sched_getaffinity(0))
    return max(1, cores // max(1, settings.worker_concurrency))


@dataclass(frozen=True)
class Progress:
    percent: float
    fps: float
    speed: float


@dataclass(frozen=True)
class EncodedRendition:
    folder: Path
    stats: MediaPlaylistStats
    codecs: str


def output_options(
    probe: ProbeResult, plan: RenditionPlan, out_dir: Path, settings: Settings
) -> dict[str, object]:
    """The encoder settings of one rung's HLS output: the one place they are written down."""
    seg = settings.segment_seconds
    options: dict[str, object] = {
        "c:v": "libx264",
        "preset": settings.x264_preset,
        "profile:v": "high",
        "pix_fmt": "yuv420p",
        "b:v": f"{plan.video_kbps}k",
        "maxrate": f"{plan.maxrate_kbps}k",
        "bufsize": f"{plan.bufsize_kbps}k",
        "g": max(1, math.ceil(probe.frame_rate * seg)),
        "sc_threshold": 0,
        "force_key_frames": f"expr:gte(t,n_forced*{seg})",
        "x264-params": RATE_TOLERANCE,
        "threads": encoder_threads(settings),
        "f": "hls",
        "hls_time": seg,
        # EVENT: the playlist only grows while the encode runs (published live: a player may
        # start at once), then gets #EXT-X-ENDLIST.
        "hls_playlist_type": "event",
        # temp_file: a segment appears under its name only once complete (uploaded while the
        # next one is encoded: worker/segment_upload.py)
        "hls_flags": "independent_segments+temp_file",
        "hls_segment_filename": str(out_dir / SEGMENT_PATTERN),
    }
    if probe.has_audio:
        options.update({"c:a": "aac", "b:a": f"{settings.audio_bitrate_k}k", "ac": 2, "ar": 48000})
    return options


def scaled(video: ffmpeg.nodes.FilterableStream, plan: RenditionPlan) -> ffmpeg.nodes.Stream:
    # ffmpeg applies the rotation (autorotate) before the filter graph, so scale to display size.
    return video.filter("scale", plan.width, plan.height).filter("setsar", 1)


def with_progress(command: ffmpeg.nodes.OutputStream) -> list[str]:
    """The compiled argv with our global options and ``-progress pipe:1`` in front."""
    compiled = command.compile()
    return [compiled[0], *GLOBAL_ARGS, "-progress", "pipe:1", *compiled[1:]]


def encode_args(
    source: Path, probe: ProbeResult, plan: RenditionPlan, out_dir: Path, settings: Settings
) -> list[str]:
    """The ffmpeg argv for one rung (a list: nothing here is ever given to a shell). ``-t``:
    never more of the source than a little past its probed duration (``read_limit_s``)."""
    bound = read_limit_s(probe.duration, settings)
    stream = ffmpeg.input(str(source), t=f"{bound:.3f}", **SAFE_INPUT_OPTIONS)
    outputs = [scaled(stream["v:0"], plan)] + ([stream["a:0"]] if probe.has_audio else [])
    options = output_options(probe, plan, out_dir, settings)
    return with_progress(ffmpeg.output(*outputs, str(out_dir / PLAYLIST_NAME), **options))


def encode(
    source: Path,
    probe: ProbeResult,
    plan: RenditionPlan,
    out_dir: Path,
    settings: Settings,
    on_progress: Callable[[Progress], None] | None = None,
) -> EncodedRendition:
    out_dir.mkdir(parents=True, exist_ok=True)

    def progress(block: dict[str, str]) -> None:
        if on_progress is None:
            return
        out_us = _number(block.get("out_time_us") or block.get("out_time_ms"))
        percent = 100.0 if block.get("progress") == "end" else out_us / 1e6 / probe.duration * 100
        on_progress(
            Progress(
                percent=max(0.0, min(100.0, percent)),
                fps=_number(block.get("fps")),
                speed=_number((block.get("speed") or "0").rstrip("x")),
            )
        )

    process.run(
        encode_args(source, probe, plan, out_dir, settings),
        # Past Celery's soft time limit, which normally stops the task first; this is the backstop.
        timeout_s=settings.encode_time_limit_s + FFMPEG_TIMEOUT_MARGIN_S,
        on_progress=progress,
        watch_dir=out_dir,
        max_output_bytes=settings.max_output_bytes,
    )
    stats = media_playlist_stats(out_dir / PLAYLIST_NAME)
    check_complete(stats, probe)
    return EncodedRendition(
        folder=out_dir, stats=stats, codecs=codecs_of(out_dir, probe.has_audio, settings)
    )


def check_complete(stats: MediaPlaylistStats, probe: ProbeResult) -> None:
    """ffmpeg exits 0 on a truncated source after encoding what it could read; a rendition much
    shorter than its source is refused rather than published as if it were whole."""
    shortest = probe.duration * (1 - TRUNCATION_TOLERANCE) - 1.0
    if stats.duration < shortest:
        raise EncodeError(
            "truncated_source",
            f"the source says {probe.duration:.1f}s, only {stats.duration:.1f}s could be decoded",
        )


def codecs_of(folder: Path, has_audio: bool, settings: Settings) -> str:
    """The CODECS attribute, read from the first segment ffmpeg actually wrote."""
    first = sorted(folder.glob(SEGMENT_GLOB))[0]
    out = process.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=profile,level",
            "-of",
            "json",
            str(first),
        ],
        timeout_s=settings.probe_timeout_s,
    )
    return codecs_from(json.loads(out)["streams"][0], has_audio)


def codecs_from(video: dict[str, object], has_audio: bool) -> str:
    """The CODECS attribute from ffprobe's ``profile`` and ``level`` of the video stream."""
    level = video.get("level", 31)
    codecs = [avc1_codec(str(video.get("profile", "High")), int(str(level)))]
    return ",".join(codecs + ([AAC_LC] if has_audio else []))


def poster(segment: Path, out: Path, settings: Settings) -> Path:
    """One JPEG frame from a rendition segment (small to fetch, already decoded size)."""
    process.run(
        [
            "ffmpeg",
            *GLOBAL_ARGS,
            "-protocol_whitelist",
            "file",
            "-i",
            str(segment),
            "-frames:v",
            "1",
            "-q:v",
            "3",
            str(out),
        ],
        timeout_s=settings.probe_timeout_s,
    )
    return out


def _number(text: str | None) -> float:
    try:
        return float(text or 0)
    except ValueError:
        return 0.0


# --- chunked mode (worker/modes/chunked/: chunk_tasks.py encodes, joining.py joins) -------------
#: Options of ``output_options`` that describe the HLS muxer, not the encoder.
HLS_OPTIONS = ("f", "hls_time", "hls_playlist_type", "hls_flags", "hls_segment_filename")
AUDIO_OPTIONS = ("c:a", "b:a", "ac", "ar")


def video_options(probe: ProbeResult, plan: RenditionPlan, settings: Settings) -> dict[str, object]:
    """``output_options`` without the HLS muxer and audio: what a chunk's video encode uses, so
    chunked and per-rung renditions come from identical encoder settings."""
    options = output_options(probe, plan, Path("."), settings)
    return {k: v for k, v in options.items() if k not in HLS_OPTIONS + AUDIO_OPTIONS}


def audio_options(probe: ProbeResult, settings: Settings) -> dict[str, object]:
    """The audio half of ``output_options`` (chunked mode encodes audio once, separately)."""
    options = output_options(probe, RenditionPlan("a", 2, 2, 1), Path("."), settings)
    return {k: v for k, v in options.items() if k in AUDIO_OPTIONS}


def hls_options(probe: ProbeResult, out_dir: Path, settings: Settings) -> dict[str, object]:
    """The HLS muxer half of ``output_options`` (the join remuxes into it, no re-encode)."""
    options = output_options(probe, RenditionPlan("h", 2, 2, 1), out_dir, settings)
    return {k: v for k, v in options.items() if k in HLS_OPTIONS}


def encoder_settings(
    probe: ProbeResult, plan: RenditionPlan, settings: Settings
) -> dict[str, object]:
    """What the manifest records about how a rendition was encoded (to reproduce or compare it)."""
    options = output_options(probe, plan, Path("."), settings)
    recorded: dict[str, object] = {
        "codec": options["c:v"],
        "preset": options["preset"],
        "profile": options["profile:v"],
        "pix_fmt": options["pix_fmt"],
        "rate_control": {
            "mode": "abr+vbv",
            "x264": options["x264-params"],
            "bitrate": options["b:v"],
            "maxrate": options["maxrate"],
            "bufsize": options["bufsize"],
        },
        "gop": options["g"],
        "keyframes": options["force_key_frames"],
        "sc_threshold": options["sc_threshold"],
        "segment_seconds": options["hls_time"],
        "threads": options["threads"],
    }
    if probe.has_audio:
        recorded["audio"] = {"codec": options["c:a"], "bitrate": options["b:a"]}
    return recorded


def chunk_frames(
    source: Path, chunks: ChunkPlan, index: int, from_start: bool = False
) -> ffmpeg.nodes.FilterableStream:
    """Chunk ``index``'s frames, decoded from the source, with timestamps from 0.

    The decode seeks to the plan's point before the chunk (``from_start``: reads from the
    beginning instead) and keeps the frames between the plan's bounds, which lie midway between
    frames: no frame is near a bound, so no rounding moves one across. ffmpeg's input timeline
    counts from the file's start (``origin`` is the first frame on it), and from the seek point
    after a seek.
    """
    seek, start, end = chunks.decode_range(index)
    seek = 0.0 if from_start else seek
    base = chunks.origin + seek if seek > 0 else 0.0
    options = {**SAFE_INPUT_OPTIONS, **({"ss": f"{base:.6f}"} if base > 0 else {})}
    video = ffmpeg.input(str(source), **options)["v:0"]
    bounds = {"start": f"{chunks.origin + start - base:.6f}"} if index else {}
    if end is not None:
        bounds["end"] = f"{chunks.origin + end - base:.6f}"
    if bounds:
        video = video.filter("trim", **bounds)
    return video.filter("setpts", "PTS-STARTPTS")


def chunk_encode_args(
    source: Path,
    probe: ProbeResult,
    chunks: ChunkPlan,
    index: int,
    plans: list[RenditionPlan],
    outputs: dict[str, Path],
    settings: Settings,
    from_start: bool = False,
) -> list[str]:
    """One ffmpeg for every rung of one chunk: decode the chunk's frames once (``chunk_frames``),
    split, scale, encode each (MPEG-TS).

    Keyframes are forced on the source's segment grid, offset by the chunk's start, so every
    chunk's keyframes fall where a whole-source encode puts them (plus one on the chunk's first
    frame) and the join cuts segments on the same grid. Every frame passes with its own
    timestamp, in the source's time base: a variable-frame-rate chunk keeps all its frames.
    ``force-cfr`` only makes x264 write the nominal frame rate into the stream's timing info, as
    a per-rung encode does: the join's HLS muxer counts segment lengths in frame durations, which
    MPEG-TS does not carry.
    """
    video = chunk_frames(source, chunks, index, from_start)
    branches = video.filter_multi_output("split", len(plans))
    offset = chunks.starts[index] + KEYFRAME_EPSILON_S
    seg = settings.segment_seconds
    keyframes = f"expr:gte(t+{offset:.7f},(n_forced+{math.floor(offset / seg)})*{seg})"
    streams = []
    for i, plan in enumerate(plans):
        options = {
            **video_options(probe, plan, settings),
            **{"f": "mpegts", "an": None, "fps_mode": "passthrough", "enc_time_base": -1},
            "force_key_frames": keyframes,
            "x264-params": f"{RATE_TOLERANCE}:force-cfr=1",
        }
        streams.append(
            ffmpeg.output(scaled(branches.stream(i), plan), str(outputs[plan.name]), **options)
        )
    return with_progress(ffmpeg.merge_outputs(*streams))
