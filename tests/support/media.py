"""The one synthetic-media recipe: sample videos made by ffmpeg from its lavfi test sources.

Tests, benches and the sweeps all make their sources here, so "a 640x360 clip with a tone" means
the same file everywhere; ``ffprobe``/``decoded_frames`` read them back.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

#: Frame rates as cameras and phones record them (ffmpeg's spelling), and "vfr": variable.
FRAME_RATES = {
    "23.976": "24000/1001",
    "24": "24",
    "25": "25",
    "29.97": "30000/1001",
    "30": "30",
    "50": "50",
    "59.94": "60000/1001",
    "60": "60",
    "vfr": "30",
}
#: Keyframe patterns: every 1 s or 2 s, x264's own choice (scene cuts, at most every 250 frames),
#: or open GOPs (B-frames shown before a keyframe are decoded after it).
GOP_KINDS = ("1s", "2s", "scene-cut", "open-gop")


def ffmpeg(*args: str, timeout: float = 120) -> None:
    """Run ffmpeg quietly (sample media), overwriting its output."""
    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args]
    subprocess.run(command, check=True, timeout=timeout)


def make_video(
    path: Path,
    width: int = 640,
    height: int = 360,
    duration: float = 3.0,
    audio: bool = True,
    rotate: int | None = None,
    fps: int = 25,
    preset: str = "ultrafast",
    crf: int | None = None,
    gop: int | None = None,
    x264: tuple[str, ...] = (),
) -> Path:
    """A real H.264(/AAC) MP4 of testsrc2 (and a 440 Hz tone), made once per path.

    ``rotate`` adds a display matrix; ``gop`` forces a keyframe every that many frames (x264's
    default is at most 250, a sparse source for short chunks); ``preset``/``crf``/``x264`` tune
    the encoder (the benches use ``fast``, CRF 18: a source worth encoding again)."""
    if path.exists():
        return path
    raw = path.with_suffix(".raw.mp4") if rotate is not None else path
    args = ["-f", "lavfi", "-i", f"testsrc2=s={width}x{height}:r={fps}:d={duration}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=f=440:d={duration}", "-c:a", "aac", "-shortest"]
    args += ["-c:v", "libx264", "-preset", preset]
    if crf is not None:
        args += ["-crf", str(crf)]
    if gop is not None:
        args += ["-g", str(gop)]
    ffmpeg(*args, *x264, "-pix_fmt", "yuv420p", str(raw), timeout=600)
    if rotate is not None:
        ffmpeg("-i", str(raw), "-c", "copy", "-metadata:s:v:0", f"rotate={rotate}", str(path))
        raw.unlink()
    return path


def make_clip(
    path: Path,
    rate: str,
    duration: float,
    gop: str,
    size: str = "64x36",
    bframes: int = 0,
    audio: bool = False,
) -> Path:
    """An H.264 clip of ``rate`` (a FRAME_RATES key) and ``gop`` (a GOP_KINDS value) whose picture
    turns negative every couple of seconds (a scene cut for x264). "vfr": 30 fps timestamps
    jittered by up to 0.4 frame, every 13th frame dropped (about 27.7 fps, intervals 0.6 to 2.2
    frames), on a 90 kHz clock. Tiny by default, so minutes of it take seconds."""
    if path.exists():
        return path
    fps = FRAME_RATES[rate]
    num, _, den = fps.partition("/")
    nominal = round(int(num) / int(den or 1))
    picture = "negate=enable='lt(mod(t,4.3),2.1)'"
    timing: list[str] = []
    if rate == "vfr":
        jitter = "settb=1/90000,setpts='(N+0.2*sin(1.7*N))/30/TB'"
        picture += f",{jitter},select='not(eq(mod(n,13),7))'"
        timing = ["-fps_mode", "passthrough", "-enc_time_base", "1:90000"]
        if path.suffix in (".mp4", ".mov"):
            timing += ["-video_track_timescale", "90000"]
    every = {"1s": nominal, "2s": 2 * nominal, "open-gop": 2 * nominal}.get(gop)
    keyframes = ["-sc_threshold", "40"]  # scene-cut: x264's defaults (keyint 250, scene cuts)
    if every is not None:
        keyframes = ["-g", str(every), "-keyint_min", str(every), "-sc_threshold", "0"]
    if gop == "open-gop":
        keyframes += ["-x264-params", "open-gop=1:b-pyramid=0"]
        bframes = max(bframes, 3)
    args = ["-f", "lavfi", "-i", f"testsrc2=s={size}:r={fps}:d={duration}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=f=440:d={duration}", "-c:a", "aac", "-shortest"]
    args += ["-vf", picture, *timing, "-c:v", "libx264", "-preset", "veryfast", *keyframes]
    ffmpeg(*args, "-bf", str(bframes), "-pix_fmt", "yuv420p", str(path), timeout=300)
    return path


def make_mid_gop_ts(path: Path) -> Path:
    """An MPEG-TS recording that starts in the middle of a GOP (its first bytes cut off, as a
    capture started late): ffprobe lists packets a decoder cannot use (no keyframe, no SPS
    before them), so no split can hold the frames the packets promise."""
    if not path.exists():
        whole = path.with_suffix(".whole.ts")
        inputs = ["-f", "lavfi", "-i", "testsrc2=s=160x90:r=25:d=12", "-f", "lavfi", "-i", "sine"]
        codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-c:a", "aac"]
        ffmpeg(*inputs, *codecs, "-shortest", str(whole))
        data = whole.read_bytes()
        path.write_bytes(data[len(data) // 7 // 188 * 188 :])
    return path


def decoded_frames(path: Path) -> int:
    """Frames a decoder shows (what a viewer sees) of a file or a rendition's playlist, counted
    by ffprobe."""
    entries = ["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"]
    argv = ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", *entries]
    out = subprocess.run([*argv, str(path)], capture_output=True, text=True, check=True, timeout=60)
    # an HLS playlist lists its stream twice (in its program and on its own): the first count
    return int(out.stdout.split()[0])


def ffprobe(path_or_url: str) -> dict[str, Any]:
    """ffprobe's JSON (format and streams) of a file or URL."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", path_or_url],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(out.stdout)
