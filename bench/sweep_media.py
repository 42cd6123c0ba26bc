"""The sweep's sources and its quality measure (bench_sweep.py).

Sources are the suite's clips (``tests/support/media.make_clip``: testsrc2 whose picture turns
negative every couple of seconds, a 440 Hz tone), at a size, frame rate and GOP kind, cached in a
folder by their parameters so a rerun skips making them. Quality is ffmpeg's ``psnr`` and ``ssim``
filters against the source scaled to each rung's size (Debian's ffmpeg has no libvmaf).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from support.media import make_clip

#: GOP kinds of the sweep -> (make_clip's GOP kind, B-frames). "closed": a keyframe every 2 s,
#: closed GOPs, no B-frames; "open": the same with x264 ``open-gop=1`` and 3 B-frames (frames
#: shown before a keyframe decoded after it); "closed-b": closed GOPs with 3 B-frames.
GOPS: dict[str, tuple[str, int]] = {
    "closed": ("2s", 0),
    "open": ("open-gop", 3),
    "closed-b": ("2s", 3),
}


@dataclass(frozen=True)
class Source:
    """One source of the sweep: length (s), frame rate (a FRAME_RATES key), GOP kind, size."""

    length: float
    rate: str
    gop: str
    width: int
    height: int

    @property
    def name(self) -> str:
        return f"{self.length:g}s {self.rate}fps {self.gop}"

    def file_name(self) -> str:
        return f"testsrc2-{self.width}x{self.height}-{self.rate}fps-{self.gop}-{self.length:g}s.mp4"


def make_source(source: Source, folder: Path) -> tuple[Path, float]:
    """The source's file in ``folder`` (made unless already there) and the seconds making took.

    Made under a temporary name and renamed when whole, so an interrupted run leaves no half file
    that a rerun would take for the source."""
    path = folder / source.file_name()
    if path.exists():
        return path, 0.0
    partial = path.with_name(f".{path.stem}.part.mp4")
    partial.unlink(missing_ok=True)
    gop, bframes = GOPS[source.gop]
    started = time.perf_counter()
    size = f"{source.width}x{source.height}"
    make_clip(partial, source.rate, source.length, gop, size, bframes=bframes, audio=True)
    os.replace(partial, path)
    return path, time.perf_counter() - started


_SUMMARY = re.compile(r"\[(psnr|ssim)@q(\w+) @ [^\]]*\] (?:PSNR|SSIM) .*?(?:average|All):(\S+)")


def quality(
    source: Path, rungs: dict[str, tuple[Path, int, int]], timeout: float = 3600
) -> dict[str, dict[str, float]]:
    """PSNR (dB, from the mean squared error over all frames, as ffmpeg's summary) and SSIM (mean
    over frames, Y/U/V weighted: ffmpeg's "All") of each rung's playlist or file against the
    source scaled to the rung's size, both timelines starting at 0 (HLS starts at 1.4 s).

    ``rungs``: name -> (playlist, width, height). One ffmpeg decodes the source once for all."""
    names = sorted(rungs)
    inputs: list[str] = ["-i", str(source)]
    graph = [
        f"[0:v]setpts=PTS-STARTPTS,split={len(names)}"
        + "".join(f"[s{i}]" for i in range(len(names)))
    ]
    for i, name in enumerate(names):
        playlist, width, height = rungs[name]
        inputs += ["-i", str(playlist)]
        graph += [
            f"[s{i}]scale={width}:{height},setsar=1,split[r{i}a][r{i}b]",
            f"[{i + 1}:v]setpts=PTS-STARTPTS,setsar=1,split[d{i}a][d{i}b]",
            f"[d{i}a][r{i}a]psnr@q{name}",
            f"[d{i}b][r{i}b]ssim@q{name}",
        ]
    argv = ["ffmpeg", "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info", *inputs]
    argv += ["-filter_complex", ";".join(graph), "-f", "null", "-"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"quality of {source.name} failed:\n{out.stderr[-2000:]}")
    found: dict[str, dict[str, float]] = {name: {} for name in names}
    for measure, name, value in _SUMMARY.findall(out.stderr):
        found[name][measure] = float(value)
    missing = [name for name, values in found.items() if set(values) != {"psnr", "ssim"}]
    if missing:
        raise RuntimeError(f"no PSNR/SSIM summary for {missing}:\n{out.stderr[-2000:]}")
    return found
