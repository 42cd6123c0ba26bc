"""Cut a source into chunks for chunk-parallel encoding: at keyframes by stream copy, or accurately.

``plan`` decides the cuts from the source's packets alone (no decode), so the job knows every chunk
(its start, frame count and duration) before the first one is cut; ``split`` then cuts them and
hands each over the moment ffmpeg closes it, so chunks are uploaded and encoded while the rest of
the source is still being cut.

Every chunk starts on the HLS segment grid (a multiple of ``segment_seconds`` from the first frame),
so the forced keyframes of each chunk's encode fall where a whole-source encode would put them and
every rung cuts its segments at the same instants. The stream-copy split is taken only when the
source has a keyframe on that grid near every target boundary (within half a frame); otherwise the
source is decoded once and re-encoded losslessly (x264 ``-qp 0``) with keyframes forced exactly on
the boundaries: slower, never wrong. Either way every chunk must hold exactly the frames the plan
gave it: a copy cut that does not (an open GOP, a keyframe off by more than the plan assumed) hands
the rest of the source to the accurate split, and an accurate cut that does not fails the job.
"""

from __future__ import annotations

import bisect
import csv
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config.settings import Settings
from encodeq.errors import EncodeError
from encodeq.manifest import ChunkPlan
from worker import process
from worker.encoder import GLOBAL_ARGS
from worker.probe import safe_input_args

CHUNK_PATTERN = "chunk_%05d.mp4"
#: ffmpeg appends a line here as it closes each chunk.
CHUNK_LIST = "chunks.csv"
#: How often ffmpeg reports progress during a split, i.e. how soon a closed chunk is noticed.
SPLIT_POLL_S = 0.1


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


@dataclass(frozen=True)
class SplitPlan:
    """The chunks, where exactly each cut falls (seconds from the first frame), and the first
    frame's own timestamp (the stream-copy split cuts on the source's timeline)."""

    chunks: ChunkPlan
    cuts: list[float]
    first_pts: float


class ChunkMismatch(Exception):
    """A cut chunk does not hold the frames the plan gave it."""

    def __init__(self, index: int, frames: int, expected: int) -> None:
        super().__init__(f"chunk {index} holds {frames} frames, not {expected}")
        self.index = index


def plan(source: Path, frame_rate: float, settings: Settings) -> SplitPlan:
    """Where to cut ``source``, from its packets: each chunk's start, frames and duration."""
    length = chunk_length(settings)
    packets = video_packets(source, settings)
    if not packets.frames:
        raise EncodeError("split_failed", "the source has no video packets to split")
    starts, reason = plan_cuts(packets, frame_rate, length, settings)
    first = min(packets.pts)
    fallback_frame = 1 / frame_rate
    frames_in_order = sorted(
        (t - first, d or fallback_frame)
        for t, d in zip(packets.pts, packets.durations, strict=True)
    )
    times = [t for t, _ in frames_in_order]
    if reason is None:  # cut at the keyframe itself, which may sit up to half a frame off the grid
        keys = [t - first for t, k in zip(packets.pts, packets.keyframe, strict=True) if k]
        cuts = [min(keys, key=lambda t, s=s: abs(t - s)) for s in starts[1:]]
    else:  # the accurate split forces a keyframe on the first frame at or after each start
        cuts = list(starts[1:])
    # Chunk k holds the frames shown from cut k-1 on, up to cut k (indices into ``times``).
    bounds = [0, *(bisect.bisect_left(times, c - 1e-6) for c in cuts), len(times)]
    frames, durations = [], []
    for lo, hi in itertools.pairwise(bounds):
        frames.append(hi - lo)
        if hi > lo:
            last_t, last_d = frames_in_order[hi - 1]
            durations.append(round(last_t + last_d - times[lo], 6))
    if 0 in frames:
        raise EncodeError("split_failed", f"a chunk would be empty: cuts at {cuts}")
    # the source's own frame interval across each seam (1/fps for constant frame rate)
    half_frame = 0.5 / frame_rate
    intervals = []
    for cut in cuts:
        after = bisect.bisect_left(times, cut - half_frame)
        intervals.append(round(times[after] - times[after - 1], 6))
    chunks = ChunkPlan(
        split="copy" if reason is None else "accurate",
        seconds=length,
        starts=[round(s, 6) for s in starts],
        frames=frames,
        durations=durations,
        reason=reason,
        seam_intervals=intervals,
    )
    return SplitPlan(chunks, cuts, first)


def split(
    source: Path,
    out_dir: Path,
    split_plan: SplitPlan,
    frame_rate: float,
    settings: Settings,
    ready: Callable[[int, Path], None],
    fallback: Callable[[str], None],
) -> None:
    """Cut ``source`` as planned, calling ``ready(index, file)`` for each chunk as soon as it is
    closed and verified. A copy cut that misses the plan calls ``fallback(reason)``, then cuts the
    chunks from there on accurately (those before it were right, and stay handed over)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chunks = split_plan.chunks
    start = 0
    if chunks.split == "copy":
        try:
            cuts = [split_plan.first_pts + c for c in split_plan.cuts]
            _cut(_copy_args(source, out_dir, cuts, frame_rate), out_dir, chunks, settings, ready)
            return
        except ChunkMismatch as exc:
            start = exc.index
            fallback(f"the stream-copy split missed the plan: {exc}")
            for f in out_dir.iterdir():
                f.unlink()
    try:
        _cut(_accurate_args(source, out_dir, split_plan.cuts), out_dir, chunks, settings, ready,
             start)  # fmt: skip
    except ChunkMismatch as exc:
        raise EncodeError("split_failed", f"the accurate split missed the plan: {exc}") from None


def _cut(
    argv: list[str],
    out_dir: Path,
    chunks: ChunkPlan,
    settings: Settings,
    ready: Callable[[int, Path], None],
    start: int = 0,
) -> None:
    """Run the split; hand over each chunk from ``start`` on as ffmpeg lists it (closed)."""
    listed = out_dir / CHUNK_LIST
    handed: list[int] = []

    def hand_over_closed(_progress: object = None) -> None:
        if not listed.exists():
            return
        with listed.open(newline="") as f:
            names = [Path(row[0]).name for row in csv.reader(f) if row]
        for index in range(len(handed) + start, len(names)):
            path = out_dir / names[index]
            frames = video_packets(path, settings, trusted=True).frames
            if index >= chunks.count or frames != chunks.frames[index]:
                expected = chunks.frames[index] if index < chunks.count else 0
                raise ChunkMismatch(index, frames, expected)
            ready(index, path)
            handed.append(index)

    process.run(argv, timeout_s=settings.encode_time_limit_s, on_progress=hand_over_closed)
    hand_over_closed()
    if len(handed) + start != chunks.count:
        raise ChunkMismatch(len(handed) + start, 0, chunks.frames[len(handed) + start])


def _segment_args(out_dir: Path, times: str) -> list[str]:
    return ["-f", "segment", "-segment_format", "mp4", "-segment_times", times,
            "-reset_timestamps", "1", "-segment_list", str(out_dir / CHUNK_LIST),
            "-segment_list_type", "csv", str(out_dir / CHUNK_PATTERN)]  # fmt: skip


def _copy_args(source: Path, out_dir: Path, cuts: list[float], frame_rate: float) -> list[str]:
    """Stream copy at keyframes. ``-copyts``: the cut times are the source's own timestamps; MP4
    keeps the rotation so each chunk decodes exactly like the source."""
    times = ",".join(f"{max(0.0, t - 0.25 / frame_rate):.6f}" for t in cuts) or "1e9"
    return ["ffmpeg", *GLOBAL_ARGS, "-progress", "pipe:1", "-stats_period", str(SPLIT_POLL_S),
            *safe_input_args(), "-copyts", "-i", str(source), "-map", "0:v:0", "-c", "copy",
            *_segment_args(out_dir, times)]  # fmt: skip


def _accurate_args(source: Path, out_dir: Path, cuts: list[float]) -> list[str]:
    """Decode once, re-encode losslessly with a keyframe exactly on every cut, split there."""
    times = ",".join(f"{t:.6f}" for t in cuts)
    return ["ffmpeg", *GLOBAL_ARGS, "-progress", "pipe:1", "-stats_period", str(SPLIT_POLL_S),
            *safe_input_args(), "-i", str(source), "-map", "0:v:0",
            "-fps_mode", "passthrough", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0",
            *(["-force_key_frames", times] if cuts else []),
            *_segment_args(out_dir, times or "1e9")]  # fmt: skip
