"""Chunk plans over a sweep of sources, with real ffmpeg and no broker: every chunk task's decode
(``encoder.chunk_frames``: seek, trim at the plan's bounds) gives exactly the frames its plan gave
it, the chunks together give every frame of the source once, and chunks are as long as each other.

Each run draws its sources at random (the seed is printed; ENCODEQ_SWEEP_SEED=N replays a run):
every frame rate cameras and phones use (23.976 ... 60) and a variable one, every GOP kind (1 s,
2 s, x264's scene cuts, open GOPs), lengths from under a segment to minutes, a few containers, with
or without B-frames, and fleets of 1 to 4 encode consumers. Pictures are 64x36, so minutes of
source decode in seconds. The sources issue 10 saw fail run every time as fixed cases. Frames are
compared by the MD5 of their pictures, as ffmpeg decodes them (the ``framemd5`` muxer): a chunk
that started or ended one frame off would hold another frame's picture.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

import ffmpeg as ffmpeg_python
import pytest
from support.media import FRAME_RATES, GOP_KINDS, decoded_frames, ffmpeg, make_clip, make_mid_gop_ts

from config.ladder import RenditionPlan
from config.settings import Settings
from core.errors import InputError
from worker import encoder
from worker.modes.chunked import chunk_plan
from worker.modes.chunked import strategy as chunked_mode
from worker.modes.chunked.packets import max_packets, video_packets
from worker.probe import probe

pytestmark = pytest.mark.unit

SEED = int(os.environ.get("ENCODEQ_SWEEP_SEED") or random.SystemRandom().randrange(2**32))


@dataclass(frozen=True)
class Case:
    rate: str
    gop: str
    seconds: float
    container: str = "mp4"
    bframes: int = 0
    consumers: int = 2
    #: 0: the plan's own chunk length (from the fleet), else a fixed one
    chunk: float = 0.0

    def __str__(self) -> str:
        rate = self.rate if self.rate == "vfr" else f"{self.rate}fps"
        return (
            f"{rate}-{self.gop}-{self.seconds:g}s-{self.container}-bf{self.bframes}"
            f"-x{self.consumers}-chunk{self.chunk:g}"
        )


#: What issue 10's held-out check saw fail with the default settings, and issue 12's: 23.976,
#: 29.97 and 59.94 fps with ordinary GOPs, whose keyframes never sit on the segment grid.
HELD_OUT = [
    Case("29.97", "2s", 75),
    Case("59.94", "2s", 64),
    Case("23.976", "scene-cut", 90),
    Case("29.97", "scene-cut", 100),
    Case("29.97", "2s", 34, chunk=30),
    Case("29.97", "open-gop", 45, "mp4", 3, consumers=1),
]


def draw(seed: int) -> list[Case]:
    """One source per frame rate; every GOP kind at least once; one source shorter than a
    segment, one of minutes, the rest a few seconds to a minute and a half."""
    rng = random.Random(seed)
    rates = list(FRAME_RATES)
    gops = [*GOP_KINDS, *(rng.choice(GOP_KINDS) for _ in range(len(rates) - len(GOP_KINDS)))]
    rng.shuffle(gops)
    lengths = [rng.uniform(0.5, 1.9), rng.uniform(120, 300)]
    lengths += [math.exp(rng.uniform(math.log(3), math.log(90))) for _ in rates[2:]]
    rng.shuffle(lengths)
    cases = []
    for rate, gop, seconds in zip(rates, gops, lengths, strict=True):
        # (variable-rate MPEG-TS has no average frame rate to probe, only its 90 kHz clock:
        # the probe refuses it as invalid_frame_rate)
        container = rng.choice(["mp4", "mkv"] if rate == "vfr" else ["mp4", "mp4", "mkv", "ts"])
        chunk = rng.choice([0.0, 0.0, round(rng.uniform(1, 20), 2)])
        consumers = rng.randint(1, 4)
        bframes = rng.choice([0, 0, 2])
        cases.append(Case(rate, gop, round(seconds, 2), container, bframes, consumers, chunk))
    return cases


CASES = HELD_OUT + draw(SEED)


def frame_hashes(command: ffmpeg_python.nodes.OutputStream | list[str]) -> list[str]:
    """The MD5 of every picture ffmpeg decodes, in order (no frame dropped or doubled)."""
    argv = command if isinstance(command, list) else command.compile()
    listing = subprocess.run(
        [argv[0], "-v", "error", "-nostdin", *argv[1:]],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return [line.split(",")[-1].strip() for line in listing.splitlines() if line[:1] != "#"]


def to_md5(stream: ffmpeg_python.nodes.FilterableStream) -> ffmpeg_python.nodes.OutputStream:
    return ffmpeg_python.output(stream, "-", f="framemd5", fps_mode="passthrough")


def source_hashes(source: Path) -> list[str]:
    return frame_hashes(to_md5(ffmpeg_python.input(str(source))["v:0"]))


def plan_for(source: Path, settings: Settings, consumers: int) -> chunk_plan.RangePlan:
    found = probe(source, settings)  # the probe accepts it, so chunked mode must handle it
    packets = video_packets(source, settings, limit=max_packets(settings))
    return chunk_plan.plan_packets(packets, found.frame_rate, settings, consumers)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_chunk_decodes_exactly_its_planned_frames(case: Case, media_dir: Path) -> None:
    print(f"sweep seed {SEED} (ENCODEQ_SWEEP_SEED={SEED} replays it): {case}")
    name = f"sweep-{str(case).rsplit('-x', 1)[0]}.{case.container}"
    source = make_clip(media_dir / name, case.rate, case.seconds, case.gop, bframes=case.bframes)
    # tiny sources: a smaller minimum, so they are chunked too
    settings = Settings(chunk_seconds=case.chunk, min_chunk_s=min(4.0, case.seconds / 3))
    plan = plan_for(source, settings, case.consumers)
    chunks = plan.chunks
    assert plan.per_rung is None and chunks.split == "range"

    whole = source_hashes(source)
    # every frame of the source, once: the plan counts them all ...
    assert plan.frames == sum(chunks.frames) == len(whole)
    first = 0
    for index, frames in enumerate(chunks.frames):
        got = frame_hashes(to_md5(encoder.chunk_frames(source, chunks, index)))
        # ... and each chunk's decode holds exactly its own, in order
        assert got == whole[first : first + frames], f"chunk {index} of {chunks.count}"
        first += frames
    # a chunk decoded from the beginning (the task's fallback) holds the same frames
    last = chunks.count - 1
    assert (
        frame_hashes(to_md5(encoder.chunk_frames(source, chunks, last, True)))
        == whole[len(whole) - chunks.frames[last] :]
    )
    # balanced: each chunk starts on the first frame at or after its share of the length, so no
    # chunk is longer than another by more than two of the source's longest frame intervals
    shown = sorted(video_packets(source, settings).times)
    longest = max((b - a for a, b in itertools.pairwise(shown)), default=0.0)
    assert max(chunks.durations) - min(chunks.durations) <= 2 * longest + 1e-6
    assert chunks.reason and f"{chunks.count} chunks" in chunks.reason


def test_the_draw_covers_every_frame_rate_and_gop_kind() -> None:
    cases = draw(SEED)
    assert {c.rate for c in cases} == set(FRAME_RATES)
    assert {c.gop for c in cases} == set(GOP_KINDS)
    assert min(c.seconds for c in cases) < 2 and max(c.seconds for c in cases) >= 120


def test_chunk_count_follows_the_fleet_and_the_limits() -> None:
    """Over random lengths and fleets: a multiple of the fleet's share whenever chunks of at
    least the minimum allow it, none over the maximum, none under the minimum (but one)."""
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    settings = Settings()
    for _ in range(2000):
        span = math.exp(rng.uniform(math.log(0.5), math.log(4 * 3600)))
        consumers = rng.randint(0, 40)
        count, why = chunk_plan.chunk_count(span, consumers, settings)
        share = max(1, consumers) * settings.chunks_per_consumer
        length = span / count
        assert count == 1 or length >= settings.min_chunk_s, (span, consumers, count)
        if span / share >= settings.min_chunk_s:
            assert count % share == 0 and length <= settings.max_chunk_s, (span, consumers)
            assert length > settings.max_chunk_s / 2 or count == share
        else:
            assert count == max(1, math.floor(span / settings.min_chunk_s)) and "fewer" in why


def test_chunk_keyframes_fall_on_the_source_segment_grid(media_dir: Path, tmp_path: Path) -> None:
    """At 29.97 fps no frame sits on a whole second: a chunk starting at 7.007 s forces its
    keyframes on the first frame at or after each multiple of the segment length in the source's
    time (as a whole-source encode does), plus its own first frame; none anywhere else."""
    source = make_clip(media_dir / "grid-2997.mp4", "29.97", 20, "2s")
    settings = Settings(chunk_seconds=7, segment_seconds=4, x264_preset="ultrafast")
    plan = plan_for(source, settings, 1)
    chunks, found = plan.chunks, probe(source, settings)
    times = [n * 1001 / 30000 for n in range(plan.frames)]
    for index in range(chunks.count):
        out = tmp_path / f"chunk{index}.ts"
        rung = RenditionPlan("36p", 64, 36, 100)
        argv = encoder.chunk_encode_args(
            source, found, chunks, index, [rung], {"36p": out}, settings
        )
        subprocess.run(argv, check=True, timeout=120, capture_output=True)
        start = round(chunks.starts[index] * 30000 / 1001)
        listing = video_packets(out, settings, trusted=True)
        zero = min(listing.times)  # MPEG-TS starts its clock at 1.4 s
        keyframes = sorted(
            start + round((t - zero) * 30000 / 1001)
            for t, k in zip(listing.times, listing.keyframe, strict=True)
            if k
        )
        wanted = {start} | {
            next(n for n in range(plan.frames) if times[n] >= g * 4)
            for g in range(1, 6)
            if start
            < next((n for n in range(plan.frames) if times[n] >= g * 4), -1)
            < start + chunks.frames[index]
        }
        assert set(keyframes) == wanted, f"chunk {index} starts on frame {start}"


def test_reading_the_packets_stops_once_they_pass_the_limits(media_dir: Path) -> None:
    source = make_clip(media_dir / "limit.mp4", "25", 20, "2s")  # 500 packets
    settings = Settings(max_duration_s=1)  # at most 240 fps: 240 packets
    with pytest.raises(InputError) as refused:
        video_packets(source, settings, limit=max_packets(settings))
    assert refused.value.code == "too_long" and "more than 240 frames" in refused.value.message


def test_a_capture_that_starts_mid_gop_goes_per_rung(media_dir: Path) -> None:
    """Its first packets promise frames no decoder gives (no keyframe before them): no range
    decode could hold what the packets count, so the plan says so and the job goes per rung."""
    source = make_mid_gop_ts(media_dir / "sweep-mid-gop.ts")
    plan = plan_for(source, Settings(), 1)
    assert plan.per_rung is not None and "keyframe" in plan.per_rung


@pytest.mark.parametrize("trim", [0.5, 1.5, 2.3])
def test_frames_an_edit_list_trims_are_not_planned_or_kept(tmp_path: Path, trim: float) -> None:
    """A trimmed stream copy (``-ss T -c copy``: what phones and editors do) keeps the packets
    before the trim point, marked discard: they are not frames of the video, so the plan does
    not count them and no chunk shows them."""
    source = make_clip(tmp_path / "full.mp4", "30", 6, "2s")
    trimmed = tmp_path / "trimmed.mp4"
    ffmpeg("-ss", str(trim), "-i", str(source), "-c", "copy", str(trimmed))
    shown = decoded_frames(trimmed)
    settings = Settings(chunk_seconds=2)
    plan = plan_for(trimmed, settings, 1)
    assert plan.frames == sum(plan.chunks.frames) == shown
    whole = source_hashes(trimmed)
    got = [
        frame_hashes(to_md5(encoder.chunk_frames(trimmed, plan.chunks, i)))
        for i in range(plan.chunks.count)
    ]
    assert [h for chunk in got for h in chunk] == whole


def test_audio_that_does_not_line_up_with_the_video_goes_per_rung(tmp_path: Path) -> None:
    """Chunked mode encodes audio and video apart and lays them side by side: an offset between
    them (audio starting half a second late) would be lost, so such a source is encoded per rung."""
    video = make_clip(tmp_path / "video.mp4", "25", 8, "2s")
    late = tmp_path / "late-audio.mp4"
    muxed = ["-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac"]
    ffmpeg(
        "-i", str(video), "-itsoffset", "0.5", "-f", "lavfi", "-i", "sine=d=7.5", *muxed, str(late)
    )
    in_sync = tmp_path / "in-sync.mp4"
    ffmpeg("-i", str(video), "-f", "lavfi", "-i", "sine=d=8", *muxed, str(in_sync))
    settings = Settings()
    assert "audio and video differ" in (
        chunked_mode.plan(late, probe(late, settings), 2).per_rung or ""
    )
    assert chunked_mode.plan(in_sync, probe(in_sync, settings), 2).per_rung is None
