"""HLS bookkeeping: what a rendition's playlist says, and the master playlist that lists them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: ffprobe's H.264 profile names -> the profile_idc byte of an RFC 6381 ``avc1`` codec string.
H264_PROFILE_IDC = {"Constrained Baseline": 0x42, "Baseline": 0x42, "Main": 0x4D, "High": 0x64}
AAC_LC = "mp4a.40.2"
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".jpg": "image/jpeg",
}


@dataclass(frozen=True)
class MediaPlaylistStats:
    segments: int
    duration: float
    #: Peak segment bitrate (what HLS's BANDWIDTH means) and the average, in bits per second.
    peak_bps: int
    average_bps: int
    size_bytes: int


def read_media_playlist(playlist: Path) -> list[tuple[float, str]]:
    """(duration, segment file name) for each segment of a media playlist."""
    return read_media_playlist_text(playlist.read_text())


def read_media_playlist_text(text: str) -> list[tuple[float, str]]:
    entries: list[tuple[float, str]] = []
    duration: float | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:") :].split(",")[0])
        elif line and not line.startswith("#") and duration is not None:
            entries.append((duration, line))
            duration = None
    return entries


def media_playlist_stats(playlist: Path) -> MediaPlaylistStats:
    entries = read_media_playlist(playlist)
    sizes = [(playlist.parent / name).stat().st_size for _, name in entries]
    total_duration = sum(d for d, _ in entries)
    peak = max(
        (size * 8 / d for (d, _), size in zip(entries, sizes, strict=True) if d > 0), default=0
    )
    return MediaPlaylistStats(
        segments=len(entries),
        duration=round(total_duration, 3),
        peak_bps=int(peak),
        average_bps=int(sum(sizes) * 8 / total_duration) if total_duration else 0,
        size_bytes=sum(sizes) + playlist.stat().st_size,
    )


def avc1_codec(profile: str, level: int) -> str:
    """RFC 6381 codec string, e.g. High@3.1 -> avc1.64001f."""
    idc = H264_PROFILE_IDC.get(profile, 0x64)
    constraints = 0xC0 if profile == "Constrained Baseline" else 0x00
    return f"avc1.{idc:02x}{constraints:02x}{level:02x}"


@dataclass(frozen=True)
class Variant:
    uri: str
    bandwidth: int
    average_bandwidth: int
    width: int
    height: int
    codecs: str
    frame_rate: float | None = None


def master_playlist(variants: list[Variant]) -> str:
    """The master playlist, highest bandwidth first (players start from the first entry)."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-INDEPENDENT-SEGMENTS"]
    for v in sorted(variants, key=lambda v: v.bandwidth, reverse=True):
        attrs = [
            f"BANDWIDTH={v.bandwidth}",
            f"AVERAGE-BANDWIDTH={v.average_bandwidth}",
            f"RESOLUTION={v.width}x{v.height}",
            f'CODECS="{v.codecs}"',
        ]
        if v.frame_rate:
            attrs.append(f"FRAME-RATE={v.frame_rate:.3f}")
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), v.uri]
    return "\n".join(lines) + "\n"
