"""Seam quality control of a joined rendition, before it is published.

Read from the rendition's own playlist, packets only (no decode): the video frame count equals the
source's, the interval between the last frame of a chunk and the first of the next is one nominal
frame (no gap, no overlap) at every seam, timestamps only ever increase, and audio and video last
as long as each other. A rendition that fails is never published: the job fails with
``seam_check_failed``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from config.settings import Settings
from core.job_model import SeamCheck
from worker import process

#: A frame interval at a seam may deviate from the nominal one by this fraction of a frame.
SEAM_TOLERANCE_FRAMES = 0.5


def _packets(
    playlist: Path, settings: Settings
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, Any]]:
    """(pts, duration) of every packet, per codec type, as the HLS demuxer reads the playlist;
    and the video stream's profile and level (the CODECS attribute), from the same read."""
    argv = [
        "ffprobe",
        "-v",
        "error",
        "-protocol_whitelist",
        "file",
        "-f",
        "hls",
        "-show_entries",
        "packet=codec_type,pts_time,duration_time:stream=codec_type,profile,level",
        "-of",
        "json",
        str(playlist),
    ]
    doc = json.loads(process.run(argv, timeout_s=settings.probe_timeout_s * 4))
    found: dict[str, list[tuple[float, float]]] = {"video": [], "audio": []}
    for p in doc.get("packets", []):
        if p.get("pts_time") in (None, "N/A") or p.get("codec_type") not in found:
            continue
        found[p["codec_type"]].append((float(p["pts_time"]), float(p.get("duration_time") or 0)))
    video = next((s for s in doc.get("streams", []) if s.get("codec_type") == "video"), {})
    return found, video


def _span(packets: list[tuple[float, float]], fallback: float) -> float:
    if not packets:
        return 0.0
    pts = sorted(packets)
    return pts[-1][0] + (pts[-1][1] or fallback) - pts[0][0]


def check(
    playlist: Path,
    expected_frames: int,
    seams: list[float],
    frame_rate: float,
    has_audio: bool,
    settings: Settings,
    intervals: list[float] | None = None,
) -> tuple[SeamCheck, dict[str, Any]]:
    """Check a joined rendition; ``seams`` are the chunk start times after the first, and
    ``intervals`` the source's frame interval at each (default: one nominal frame). Also the
    video stream as ffprobe saw it (its profile and level)."""
    packets, video_stream = _packets(playlist, settings)
    frame = 1.0 / frame_rate
    video = sorted(pts for pts, _ in packets["video"])
    problems: list[str] = []
    if len(video) != expected_frames:
        problems.append(f"{len(video)} video frames, the source has {expected_frames}")
    worst = 0.0
    if video:
        first = video[0]
        for n, seam in enumerate(seams):
            expected = intervals[n] if intervals else frame
            after = next((i for i, t in enumerate(video) if t - first >= seam - frame / 2), None)
            if after is None or after == 0:
                problems.append(f"no frame after the seam at {seam:.3f}s")
                continue
            gap = video[after] - video[after - 1]
            error = abs(gap - expected)
            worst = max(worst, error)
            if error > SEAM_TOLERANCE_FRAMES * frame:
                problems.append(f"seam at {seam:.3f}s: frames {gap:.4f}s apart, not {expected:.4f}")
    dts_order = [pts for pts, _ in packets["video"]]
    if len(set(dts_order)) != len(dts_order):
        problems.append("duplicate video timestamps")
    video_duration = round(_span(packets["video"], frame), 4)
    audio_duration = None
    if has_audio:
        audio_duration = round(_span(packets["audio"], 0.0), 4)
        allowed = settings.seam_av_tolerance_s + frame
        if abs(audio_duration - video_duration) > allowed:
            problems.append(
                f"audio lasts {audio_duration:.3f}s, video {video_duration:.3f}s "
                f"(allowed difference {allowed:.3f}s)"
            )
    check = SeamCheck(
        passed=not problems,
        frames=len(video),
        expected_frames=expected_frames,
        seams=len(seams),
        max_seam_error_s=round(worst, 6),
        video_duration=video_duration,
        audio_duration=audio_duration,
        problems=problems,
    )
    return check, video_stream
