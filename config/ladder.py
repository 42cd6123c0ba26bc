"""The rendition ladder: which rungs exist and how a source maps onto them.

Rungs are named by the short side of the *displayed* picture, so a portrait phone video gets
portrait renditions (720p of a 1080x1920 clip is 720x1280) and nothing is ever upscaled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Rung:
    short_side: int
    video_kbps: int

    @property
    def name(self) -> str:
        return f"{self.short_side}p"


#: Highest first. Bitrates are the average target; maxrate/bufsize derive from them in one place.
LADDER: tuple[Rung, ...] = (
    Rung(1080, 5000),
    Rung(720, 2800),
    Rung(480, 1400),
    Rung(360, 800),
    Rung(240, 400),
)


@dataclass(frozen=True)
class RenditionPlan:
    """One rendition to produce: its name, output size and rate control."""

    name: str
    width: int
    height: int
    video_kbps: int

    @property
    def maxrate_kbps(self) -> int:
        return int(self.video_kbps * 1.07)

    @property
    def bufsize_kbps(self) -> int:
        return self.video_kbps * 2


class Sized(Protocol):
    name: str
    width: int
    height: int


def size_order(rung: Sized) -> tuple[int, str]:
    """Smallest picture first (a rung's plan or its record alike): the order rungs go out in,
    since the smallest is playable soonest."""
    return rung.width * rung.height, rung.name


def _even(value: float) -> int:
    """H.264 with yuv420p needs even dimensions."""
    return max(2, round(value / 2.0) * 2)


def _scaled(display_w: int, display_h: int, short: int) -> tuple[int, int]:
    if display_w >= display_h:
        return _even(display_w * short / display_h), _even(short)
    return _even(short), _even(display_h * short / display_w)


def _kbps_for(short: int) -> int:
    """Bitrate for an off-ladder size: the lowest rung's, scaled by area."""
    lowest = LADDER[-1]
    return max(100, int(lowest.video_kbps * (short / lowest.short_side) ** 2))


def choose_renditions(display_w: int, display_h: int) -> list[RenditionPlan]:
    """The rungs a source gets: every rung not above its short side, or one at its own size."""
    short = min(display_w, display_h)
    plans = [
        RenditionPlan(rung.name, *_scaled(display_w, display_h, rung.short_side), rung.video_kbps)
        for rung in LADDER
        if rung.short_side <= short
    ]
    if not plans:
        own = _even(short)
        plans = [RenditionPlan(f"{own}p", *_scaled(display_w, display_h, own), _kbps_for(own))]
    return plans
