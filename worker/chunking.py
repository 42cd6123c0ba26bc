"""Cut a source into chunks for chunk-parallel encoding: at keyframes by stream copy, or accurately.

Every chunk starts on the HLS segment grid (a multiple of ``segment_seconds`` from the first frame),
so the forced keyframes of each chunk's encode fall where a whole-source encode would put them and
every rung cuts its segments at the same instants. The stream-copy split is taken only when the
source has a keyframe on that grid near every target boundary (within half a frame); otherwise the
source is decoded once and re-encoded losslessly (x264 ``-qp 0``) with keyframes forced exactly on
the boundaries: slower, never wrong. Either way the chunks' frame counts must add up to the
source's, or the split is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from config.settings import Settings
from encodeq.errors import EncodeError
from encodeq.manifest import ChunkPlan
from worker import process
from worker.encoder import GLOBAL_ARGS
from worker.probe import safe_input_args

CHUNK_PATTERN = "chunk_%05d.mp4"


@dataclass(frozen=True)
class Packets:
    """Video packets of a file: presentation times (s), keyframe flags, frame durations."""

    pts: list[float]
    keyframe: list[bool]
    durations: list[float]

    @property
    def frames(self) -> int:
        return len(self.pts)

    def span(self, fallback_frame: float) -> float:
        """First presented frame to the end of the last one."""
        if not self.pts:
            return 0.0
        last = max(range(len(self.pts)), key=self.pts.__getitem__)
        return self.pts[last] + (self.durations[last] or fallback_frame) - min(self.pts)


def chunk_length(settings: Settings) -> int:
    """The target chunk length rounded up to whole segments (chunk seams are segment seams)."""
    seg = settings.segment_seconds
    return max(seg, math.ceil(settings.chunk_seconds / seg) * seg)


def video_packets(path: Path, settings: Settings, trusted: bool = False) -> Packets:
    """Read the video packets without decoding (cheap: demux only)."""
    argv = ["ffprobe", "-v", "error", *([] if trusted else safe_input_args()),
            "-select_streams", "v:0", "-show_entries", "packet=pts_time,duration_time,flags",
            "-of", "json", str(path)]  # fmt: skip
    doc = json.loads(process.run(argv, timeout_s=settings.probe_timeout_s * 4))
    pts, key, durations = [], [], []
    for packet in doc.get("packets", []):
        if packet.get("pts_time") in (None, "N/A"):
            continue
        pts.append(float(packet["pts_time"]))
        key.append("K" in packet.get("flags", ""))
        durations.append(float(packet.get("duration_time") or 0.0))
    return Packets(pts, key, durations)


def plan_cuts(
    packets: Packets, frame_rate: float, length: int, settings: Settings
) -> tuple[list[float], str | None]:
    """Chunk start times (seconds from the first frame) and why a copy split is impossible (None:
    it is possible: a keyframe sits on the segment grid near every target boundary)."""
    seg = settings.segment_seconds
    first = min(packets.pts)
    end = packets.span(1 / frame_rate)
    targets = [k * length for k in range(1, math.ceil(end / length)) if end - k * length >= seg]
    half_frame = 0.5 / frame_rate
    keyframes = sorted(t - first for t, k in zip(packets.pts, packets.keyframe, strict=True) if k)
    grid = [(t, round(t / seg) * seg) for t in keyframes]
    on_grid = [g for t, g in grid if abs(t - g) < half_frame]
    starts = [0.0]
    target = float(length)
    while end - target >= seg:  # each chunk about ``length`` long, the short tail joins the last
        near = [g for g in on_grid if abs(g - target) <= length / 2 and starts[-1] < g <= end - seg]
        if not near:
            reason = f"no keyframe on the {seg}s segment grid near {target:g}s"
            return [0.0, *map(float, targets)], reason
        starts.append(float(min(near, key=lambda g: abs(g - target))))
        target = starts[-1] + length
    return starts, None


def split(
    source: Path, out_dir: Path, frame_rate: float, settings: Settings, force_accurate: bool = False
) -> tuple[ChunkPlan, list[Path]]:
    """Cut ``source`` into chunk files in ``out_dir`` (video only): the plan and the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    length = chunk_length(settings)
    packets = video_packets(source, settings)
    if not packets.frames:
        raise EncodeError("split_failed", "the source has no video packets to split")
    starts, reason = plan_cuts(packets, frame_rate, length, settings)
    if force_accurate and reason is None:
        reason = "accurate split requested"
    first = min(packets.pts)
    if reason is None:
        files = _copy_split(source, out_dir, [first + s for s in starts[1:]], frame_rate, settings)
        counted = [video_packets(f, settings, trusted=True) for f in files]
        if len(files) != len(starts) or sum(c.frames for c in counted) != packets.frames:
            reason = "the stream-copy split did not partition the frames exactly"
            for f in files:
                f.unlink()
    if reason is not None:
        files = _accurate_split(source, out_dir, starts[1:], settings)
        counted = [video_packets(f, settings, trusted=True) for f in files]
    if len(files) != len(starts) or sum(c.frames for c in counted) != packets.frames:
        raise EncodeError(
            "split_failed",
            f"{len(files)} chunks with {sum(c.frames for c in counted)} frames, "
            f"expected {len(starts)} with {packets.frames}",
        )
    ordered = sorted(t - first for t in packets.pts)
    intervals = []
    for start in starts[1:]:
        after = next(i for i, t in enumerate(ordered) if t >= start - 0.5 / frame_rate)
        intervals.append(round(ordered[after] - ordered[after - 1], 6))
    plan = ChunkPlan(
        split="copy" if reason is None else "accurate",
        seconds=length,
        starts=[round(s, 6) for s in starts],
        frames=[c.frames for c in counted],
        durations=[round(c.span(1 / frame_rate), 6) for c in counted],
        reason=reason,
        seam_intervals=intervals,
    )
    return plan, files


def _copy_split(
    source: Path, out_dir: Path, cuts: list[float], frame_rate: float, settings: Settings
) -> list[Path]:
    """Stream copy at keyframes. ``-copyts``: the cut times are the source's own timestamps; MP4
    keeps the rotation so each chunk decodes exactly like the source."""
    times = ",".join(f"{max(0.0, t - 0.25 / frame_rate):.6f}" for t in cuts) or "1e9"
    argv = ["ffmpeg", *GLOBAL_ARGS, *safe_input_args(), "-copyts", "-i", str(source),
            "-map", "0:v:0", "-c", "copy", "-f", "segment", "-segment_format", "mp4",
            "-segment_times", times, "-reset_timestamps", "1",
            str(out_dir / CHUNK_PATTERN)]  # fmt: skip
    process.run(argv, timeout_s=settings.encode_time_limit_s)
    return sorted(out_dir.glob("chunk_*.mp4"))


def _accurate_split(
    source: Path, out_dir: Path, cuts: list[float], settings: Settings
) -> list[Path]:
    """Decode once, re-encode losslessly with a keyframe exactly on every cut, split there."""
    times = ",".join(f"{t:.6f}" for t in cuts)
    argv = ["ffmpeg", *GLOBAL_ARGS, *safe_input_args(), "-i", str(source), "-map", "0:v:0",
            "-fps_mode", "passthrough", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0",
            *(["-force_key_frames", times] if cuts else []),
            "-f", "segment", "-segment_format", "mp4", "-segment_times", times or "1e9",
            "-reset_timestamps", "1", str(out_dir / CHUNK_PATTERN)]  # fmt: skip
    process.run(argv, timeout_s=settings.encode_time_limit_s)
    return sorted(out_dir.glob("chunk_*.mp4"))
