"""The demo's two inputs: a sample video that encodes, and a file that is not a video at all."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

from console.demo.stack import DemoError

SAMPLE_NAME = "sample 720p.mp4"
BROKEN_NAME = "broken.mp4"
#: 1280x720 so the ladder gives 720p, 480p, 360p and 240p; long enough to watch the bars move.
SAMPLE_SIZE, SAMPLE_FPS, SAMPLE_SECONDS = "1280x720", 25, 12
#: Fixed seed: the "broken" file is the same bytes every run, so its outcome is reproducible.
BROKEN_SEED, BROKEN_BYTES = 20240601, 256 * 1024


def make_sample(path: Path) -> None:
    """A test pattern with a tone, H.264 + AAC, keyframes every 2 s."""
    video = f"testsrc2=size={SAMPLE_SIZE}:rate={SAMPLE_FPS}:duration={SAMPLE_SECONDS}"
    tone = f"sine=frequency=440:sample_rate=48000:duration={SAMPLE_SECONDS}"
    inputs = ["-f", "lavfi", "-i", video, "-f", "lavfi", "-i", tone]
    gop = str(2 * SAMPLE_FPS)
    video_codec = ["-c:v", "libx264", "-preset", "ultrafast", "-g", gop, "-pix_fmt", "yuv420p"]
    audio_codec = ["-c:a", "aac", "-b:a", "128k"]
    argv = [
        *("ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y"),
        *inputs,
        *video_codec,
        *audio_codec,
        *("-shortest", "-movflags", "+faststart", str(path)),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise DemoError(f"ffmpeg could not make the sample video: {done.stderr.strip()[-500:]}")


def make_broken(path: Path) -> None:
    """Random bytes with a video's name: the probe refuses it and its message is dead-lettered."""
    path.write_bytes(random.Random(BROKEN_SEED).randbytes(BROKEN_BYTES))
