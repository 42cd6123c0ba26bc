"""Join a rung's encoded chunks (and the job's audio) into its HLS rendition, without re-encoding.

The concat demuxer lays the chunks end to end, each starting where the previous one ended by its
recorded duration (measured on the source chunk, not guessed from the encoded file), and the HLS
muxer cuts the result on the segment grid the chunk encodes forced keyframes on. Audio is muxed
into the same segments, as in per-rung mode: every player plays muxed TS, the master playlist stays
the same for both modes, and the audio, encoded once for the whole source, has no seams at all.
"""

from __future__ import annotations

from pathlib import Path

import ffmpeg

from config.settings import Settings
from core.job_model import ProbeResult
from core.layout import PLAYLIST_NAME
from worker import encoder, process
from worker.probe import read_limit_s


def concat_list(chunks: list[Path], durations: list[float], path: Path) -> Path:
    """An ffconcat script next to the chunks (names only: the demuxer's safe mode holds)."""
    lines = ["ffconcat version 1.0"]
    for chunk, duration in zip(chunks, durations, strict=True):
        plain = chunk.name.replace("_", "").replace(".", "").isalnum()
        if chunk.parent != path.parent or not plain:
            raise ValueError(f"chunk {chunk} must sit beside {path} with a plain name")
        lines += [f"file {chunk.name}", f"duration {duration:.6f}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def join_args(
    script: Path, audio: Path | None, probe: ProbeResult, out_dir: Path, settings: Settings
) -> list[str]:
    """The ffmpeg argv of a join: copy video from the concat script (and audio) into HLS."""
    video = ffmpeg.input(str(script), f="concat", protocol_whitelist="file")
    streams = [video["v:0"]]
    if audio is not None:
        streams.append(ffmpeg.input(str(audio), protocol_whitelist="file")["a:0"])
    options = {**encoder.hls_options(probe, out_dir, settings), "c": "copy"}
    return encoder.with_progress(ffmpeg.output(*streams, str(out_dir / PLAYLIST_NAME), **options))


def join(
    chunks: list[Path],
    durations: list[float],
    audio: Path | None,
    probe: ProbeResult,
    out_dir: Path,
    settings: Settings,
) -> Path:
    """Write the rendition's playlist and segments into ``out_dir``; returns the playlist."""
    out_dir.mkdir(parents=True, exist_ok=True)
    script = concat_list(chunks, durations, chunks[0].parent / "chunks.ffconcat")
    process.run(
        join_args(script, audio, probe, out_dir, settings),
        timeout_s=settings.encode_time_limit_s,
        on_progress=lambda block: None,
        watch_dir=out_dir,
        max_output_bytes=settings.max_output_bytes,
    )
    return out_dir / PLAYLIST_NAME


def audio_args(source: Path, probe: ProbeResult, out: Path, settings: Settings) -> list[str]:
    """The whole source's audio, once, with the same settings as per-rung mode (MPEG-TS), and
    like every read of the source never much past its probed duration (``read_limit_s``)."""
    bound = read_limit_s(probe.duration, settings)
    stream = ffmpeg.input(str(source), t=f"{bound:.3f}", **encoder.SAFE_INPUT_OPTIONS)["a:0"]
    options = {**encoder.audio_options(probe, settings), "f": "mpegts"}
    return encoder.with_progress(ffmpeg.output(stream, str(out), **options))
