"""ffprobe an untrusted upload, under limits, into what the ladder and encoder need
(``ProbeResult``, core/job_model.py: the manifest stores it as it is).

Only the local copy the worker downloaded is ever opened: ``-protocol_whitelist file`` stops a
playlist or concat script from reaching the network, and the demuxer allow-list stops HLS, concat,
image sequences and friends from being parsed at all. Every refusal is an ``InputError`` with a
stable code, which fails the job at once (no retry).
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

from config.settings import Settings
from core.errors import InputError
from core.job_model import ProbeResult
from worker import process

#: Demuxers we accept (ffmpeg names). Not hls, concat, image2, lavfi, tty, or any other that
#: follows references to other files or synthesises input.
ALLOWED_DEMUXERS = ",".join(
    [
        "mov",
        "mp4",
        "m4a",
        "3gp",
        "3g2",
        "mj2",  # the mov demuxer's names
        "matroska",
        "webm",
        "avi",
        "flv",
        "mpegts",
        "mpeg",
        "ogg",
        "asf",
        "h264",
        "hevc",
        "m4v",
        "yuv4mpegpipe",
    ]
)

#: Options that bound how much of the input ffprobe/ffmpeg read before deciding what it is.
SAFE_INPUT_OPTIONS: dict[str, str] = {
    "protocol_whitelist": "file",
    "format_whitelist": ALLOWED_DEMUXERS,
    "probesize": str(32 * 1024 * 1024),
    "analyzeduration": str(20 * 1000 * 1000),
}

#: Codecs that are pictures, not moving video (a cover image is not a video stream).
STILL_IMAGE_CODECS = {"png", "mjpeg", "bmp", "gif", "webp", "tiff", "jpeg2000"}

#: The highest frame rate accepted; with ``max_duration_s`` it bounds how many video packets a
#: source may hold (worker/modes/chunked/packets.py stops reading past that).
MAX_FRAME_RATE = 240

#: How far past its probed duration any ffmpeg may read a source: a container's duration is often
#: a little short of its last frame, never by much unless it lies (``read_limit_s``).
READ_MARGIN_S = 2.0
READ_MARGIN_FRACTION = 0.01


def safe_input_args() -> list[str]:
    return [arg for key, value in SAFE_INPUT_OPTIONS.items() for arg in (f"-{key}", value)]


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            return round(float(side["rotation"])) % 360
    return int(stream.get("tags", {}).get("rotate", 0)) % 360


def _rate(text: str | None) -> float:
    try:
        value = Fraction(text or "0")
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value)


def _even(value: float) -> int:
    return max(2, round(value / 2.0) * 2)


def _seconds(value: Any) -> float:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):  # "N/A", missing
        return 0.0


def _longest(fmt: dict[str, Any], streams: list[dict[str, Any]]) -> float:
    """The largest of the container's and every audio and video stream's duration: a header
    that claims less than a stream holds must not carry a long source past ``max_duration_s``."""
    media = [s for s in streams if s.get("codec_type") in ("video", "audio")]
    return max([_seconds(fmt.get("duration")), *(_seconds(s.get("duration")) for s in media)])


def read_limit_s(duration: float, settings: Settings) -> float:
    """How much of a source (seconds from its start) any ffmpeg reading it may take (``-t``): a
    little past the probed duration, itself within the limit, so a header that lies about the
    duration cannot make ffmpeg read past the limit (it only gets the start of a longer stream)."""
    bounded = min(duration, settings.max_duration_s)
    return round(bounded * (1 + READ_MARGIN_FRACTION) + READ_MARGIN_S, 3)


def probe(path: Path, settings: Settings) -> ProbeResult:
    """Describe ``path`` or raise InputError with the reason it cannot be encoded."""
    if path.stat().st_size == 0:
        raise InputError("empty_file", "the upload is empty")
    argv = [
        "ffprobe",
        "-v",
        "error",
        *safe_input_args(),
        "-print_format",
        "json",
        "-show_format",
        "-show_streams",
        str(path),
    ]
    try:
        info = json.loads(process.run(argv, timeout_s=settings.probe_timeout_s))
    except process.ProcessFailed as exc:
        reason = str(exc).replace(f"{path}: ", "")  # our temp path says nothing to the user
        raise InputError("not_a_video", f"ffprobe could not read the file ({reason})") from None
    except json.JSONDecodeError:
        raise InputError("not_a_video", "ffprobe returned no description") from None
    return check(info, settings)


def check(info: dict[str, Any], settings: Settings) -> ProbeResult:
    """Apply the limits to an ffprobe description."""
    fmt = info.get("format", {})
    streams = info.get("streams", [])
    if len(streams) > settings.max_streams:
        raise InputError(
            "too_many_streams", f"{len(streams)} streams (limit {settings.max_streams})"
        )
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video"
        and not s.get("disposition", {}).get("attached_pic")
        and s.get("codec_name") not in STILL_IMAGE_CODECS
    ]
    if not videos:
        raise InputError("no_video_stream", "the file has no video stream")
    video = videos[0]
    width, height = int(video.get("width") or 0), int(video.get("height") or 0)
    if width <= 0 or height <= 0:
        raise InputError("invalid_dimensions", f"video stream is {width}x{height}")
    if width * height > settings.max_pixels:
        raise InputError(
            "too_large", f"{width}x{height} exceeds {settings.max_pixels} pixels per frame"
        )
    duration = _longest(fmt, streams)
    if duration <= 0:
        raise InputError("invalid_duration", "the file reports no duration")
    if duration > settings.max_duration_s:
        raise InputError(
            "too_long", f"{duration:.0f}s exceeds the limit of {settings.max_duration_s:.0f}s"
        )
    frame_rate = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    if frame_rate <= 0 or frame_rate > MAX_FRAME_RATE:
        raise InputError("invalid_frame_rate", f"frame rate {frame_rate:.2f} is not usable")
    sar = _rate(video.get("sample_aspect_ratio")) or 1.0
    rotation = _rotation(video)
    display_w, display_h = _even(width * sar), _even(height)
    if rotation in (90, 270):
        display_w, display_h = display_h, display_w
    return ProbeResult(
        container=str(fmt.get("format_name", "")),
        duration=duration,
        coded_width=width,
        coded_height=height,
        width=display_w,
        height=display_h,
        rotation=rotation,
        frame_rate=frame_rate,
        video_codec=str(video.get("codec_name", "")),
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
        av_mismatch_s=_av_mismatch(video, streams),
    )


def _av_mismatch(video: dict[str, Any], streams: list[dict[str, Any]]) -> float:
    """The larger of the start-time and length differences between the video and the first
    audio stream, where the file states both (0 without audio)."""
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if audio is None:
        return 0.0
    gaps = []
    for field in ("start_time", "duration"):
        v, a = _stated(video.get(field)), _stated(audio.get(field))
        if v is not None and a is not None:
            gaps.append(abs(v - a))
    return max(gaps, default=0.0)


def _stated(text: Any) -> float | None:
    """A time the file states, or None where it states none (unlike ``_seconds``: 0 is a
    start time, not a missing one)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
