"""The chunk plan: where a source will be cut for chunk-parallel encoding, decided from its
packets alone (no decode), so the job knows every chunk (its first frame, frame count and duration)
before the first one is cut (split.py then cuts them).

Everything is counted in frames. A chunk starts on the first frame shown at or after a point of the
HLS segment grid (a multiple of ``segment_seconds`` from the first frame), so the keyframes each
chunk's encode forces on the grid relative to its own first frame fall where a whole-source encode
would put them (within a frame), and every rung cuts its segments at the same frames.

* copy: when every such first frame is a keyframe that opens a closed GOP (nothing shown before it
  is decoded after it), the source can be cut by stream copy at those packets;
* accurate: otherwise a chunk starts on each multiple of the chunk length, and the split re-encodes
  losslessly with a keyframe forced there.

A source that cannot be chunked at all gets a plan that says why (``per_rung``): chunking is a way
to encode, not a verdict on the source.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from config.settings import Settings
from core.errors import InputError
from core.job_model import ChunkPlan
from worker.modes.chunked.packets import Packets, max_packets, video_packets

#: Times this close are the same instant (ffprobe prints microseconds).
EPSILON_S = 1e-6
#: How far (in packets) a frame may be shown from where it is decoded for the planning to put
#: the frames in order in compact memory (B-frames move a few; more costs a full sort).
REORDER_WINDOW = 64


def chunk_length(settings: Settings) -> int:
    """The target chunk length rounded up to whole segments (chunk seams are segment seams)."""
    seg = settings.segment_seconds
    return max(seg, math.ceil(settings.chunk_seconds / seg) * seg)


@dataclass(frozen=True)
class SplitPlan:
    """The chunks, the frame number (presentation order, from 0) at which each chunk after the
    first starts, the source's frames in all, and its length from the first frame to the end of
    the last (the packets' word, whatever the header says). ``per_rung``: why the source cannot
    be chunked at all (the job is then encoded per rung)."""

    chunks: ChunkPlan
    cut_frames: list[int]
    frames: int
    span: float
    per_rung: str | None = None


def not_chunked(reason: str, settings: Settings, frames: int = 0) -> SplitPlan:
    """A plan that says the job must go per rung, and why."""
    chunks = ChunkPlan(
        split="accurate",
        seconds=chunk_length(settings),
        starts=[0.0],
        frames=[frames],
        durations=[0.0],
        reason=reason,
    )
    return SplitPlan(chunks, [], frames, 0.0, per_rung=reason)


def plan(source: Path, frame_rate: float, settings: Settings) -> SplitPlan:
    """Where to cut ``source``, from its packets: each chunk's start, frames and duration."""
    return plan_packets(
        video_packets(source, settings, limit=max_packets(settings)), frame_rate, settings
    )


def _presentation(packets: Packets, frame: float) -> tuple[array, array]:
    """Decode indices in presentation order, and the presentation times from the first frame."""
    n = packets.frames
    times: Sequence[float] = packets.times
    if any(math.isnan(t) for t in times):  # no time at all on some packet: trust the order
        times = array("d", (i * frame for i in range(n)))
    order = _reordered(times) or array("l", sorted(range(n), key=times.__getitem__))
    first = times[order[0]]
    return order, array("d", (times[d] - first for d in order))


def _reordered(times: Sequence[float]) -> array | None:
    """Decode indices in presentation order when no frame is shown more than REORDER_WINDOW
    packets away from where it is decoded (B-frames: a few), in compact memory; None otherwise
    (then a full sort, about 60 bytes a packet while it runs)."""
    order, waiting, last = array("l"), [], -math.inf
    for d, t in enumerate(times):
        if len(waiting) < REORDER_WINDOW:
            heapq.heappush(waiting, (t, d))
            continue
        shown, index = heapq.heappushpop(waiting, (t, d))
        if shown < last:
            return None
        order.append(index)
        last = shown
    for shown, index in sorted(waiting):
        if shown < last:
            return None
        order.append(index)
        last = shown
    return order


def _clean_keyframes(packets: Packets, order: array) -> set[int]:
    """Frames (presentation index) a stream copy can start a chunk on: keyframes where exactly the
    frames shown before them are decoded before them (a closed GOP starts there), so the copy cut
    at that packet holds the frames the plan counts."""
    position = array("l", [0]) * len(order)
    for p, d in enumerate(order):
        position[d] = p
    clean, highest = set(), -1
    for d, p in enumerate(position):
        if packets.keyframe[d] and p == d and highest < p:
            clean.add(p)
        highest = max(highest, p)
    return clean


@dataclass(frozen=True)
class _Timeline:
    """A source's frames in presentation order: each frame's time from the first, the span from
    the first frame to the end of the last, and the grid chunks are cut on."""

    times: Sequence[float]
    span: float
    segment: int
    length: int

    @property
    def frames(self) -> int:
        return len(self.times)

    def first_at(self, t: float) -> int:
        """The first frame shown at or after ``t``."""
        return bisect.bisect_left(self.times, t - EPSILON_S)

    def usable(self, s: int, previous: int) -> bool:
        """A chunk may start at frame ``s``: after the previous start, leaving a segment after."""
        return previous < s < self.frames and self.span - self.times[s] >= self.segment


def plan_packets(packets: Packets, frame_rate: float, settings: Settings) -> SplitPlan:
    """The plan for a source with these packets (pure: ``plan`` reads them)."""
    n = packets.frames
    if n == 0:
        return not_chunked("the source has no video packets to split", settings)
    frame = 1 / frame_rate if frame_rate > 0 else 1 / 25
    order, times = _presentation(packets, frame)
    span = times[-1] + (packets.durations[order[-1]] or frame)
    if span > settings.max_duration_s:
        raise InputError(
            "too_long",
            f"its frames last {span:.0f}s, over the limit of {settings.max_duration_s:.0f}s",
        )
    line = _Timeline(times, span, settings.segment_seconds, chunk_length(settings))
    reason = _copy_refused(packets)
    if reason is None and order[0] != 0:
        reason = "the first frame shown is not the first decoded (the source opens on an open GOP)"
    starts = [0]
    if reason is None:
        starts, reason = _copy_starts(packets, order, line)
    if reason is not None:
        starts = _accurate_starts(line)
    bounds = [*starts, n]
    ends = [*(times[s] for s in starts[1:]), span]
    chunks = ChunkPlan(
        split="copy" if reason is None else "accurate",
        seconds=line.length,
        starts=[round(times[s], 6) for s in starts],
        frames=[hi - lo for lo, hi in itertools.pairwise(bounds)],
        durations=[round(end - times[s], 6) for s, end in zip(starts, ends, strict=True)],
        reason=reason,
        # the source's own frame interval across each seam (1/fps for constant frame rate)
        seam_intervals=[round(times[s] - times[s - 1], 6) for s in starts[1:]],
    )
    return SplitPlan(chunks, starts[1:], n, round(span, 6))


def _copy_starts(packets: Packets, order: array, line: _Timeline) -> tuple[list[int], str | None]:
    """Chunk starts for a stream copy: each chunk about ``length`` long, starting on a clean
    keyframe of the segment grid (a short tail joins the last chunk); or why there are none."""
    seg, length = line.segment, line.length
    clean = _clean_keyframes(packets, order)
    starts, target = [0], float(length)
    while line.span - target >= seg:
        found: list[tuple[float, int]] = []
        opened = False
        for m in range(
            max(1, math.ceil((target - length / 2) / seg)),
            math.floor((target + length / 2) / seg) + 1,
        ):
            s = line.first_at(m * seg)
            if line.usable(s, starts[-1]):
                if s in clean:
                    found.append((m * seg, s))
                opened = opened or bool(packets.keyframe[order[s]])
        if not found:
            return starts, (
                f"the keyframes on the {seg}s segment grid near {target:g}s open their GOPs "
                "(frames shown before them are decoded after them)"
                if opened
                else f"no keyframe starts the {seg}s segment grid near {target:g}s"
            )
        grid, s = min(found, key=lambda f: abs(f[0] - target))
        starts.append(s)
        target = grid + length
    return starts, None


def _accurate_starts(line: _Timeline) -> list[int]:
    """Chunk starts for the accurate split: the first frame on each multiple of the length."""
    starts = [0]
    for k in itertools.count(1):
        if line.span - k * line.length < line.segment:
            break
        s = line.first_at(k * line.length)
        if line.usable(s, starts[-1]):
            starts.append(s)
    return starts


def _copy_refused(packets: Packets) -> str | None:
    """Why no stream copy can be planned from these packets at all (None: one may be)."""
    if not packets.timed:
        return "the source's packets carry no presentation times (a stream copy cannot be planned)"
    if not packets.keyframe[0]:
        return "the source does not start on a keyframe"
    if packets.discarded:
        return f"an edit list trims {packets.discarded} frames (a stream copy would show them)"
    return None
