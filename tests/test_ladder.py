"""The rendition ladder: right rungs, right sizes, never upscaled, portrait stays portrait."""

import pytest

from config.ladder import LADDER, choose_renditions

pytestmark = pytest.mark.unit


def sizes(w: int, h: int) -> list[tuple[str, int, int]]:
    return [(p.name, p.width, p.height) for p in choose_renditions(w, h)]


def test_full_hd_landscape_gets_every_rung() -> None:
    assert sizes(1920, 1080) == [
        ("1080p", 1920, 1080),
        ("720p", 1280, 720),
        ("480p", 854, 480),
        ("360p", 640, 360),
        ("240p", 426, 240),
    ]


def test_portrait_phone_video_keeps_portrait_rungs() -> None:
    assert sizes(1080, 1920)[:2] == [("1080p", 1080, 1920), ("720p", 720, 1280)]


def test_never_upscales() -> None:
    assert [name for name, _, _ in sizes(854, 480)] == ["480p", "360p", "240p"]
    assert all(w <= 854 and h <= 480 for _, w, h in sizes(854, 480))


def test_source_below_every_rung_gets_one_rendition_at_its_own_size() -> None:
    assert sizes(160, 90) == [("90p", 160, 90)]
    plan = choose_renditions(160, 90)[0]
    assert 0 < plan.video_kbps < LADDER[-1].video_kbps


def test_dimensions_are_even_for_yuv420p() -> None:
    for w, h in [(1000, 563), (563, 1000), (333, 241), (101, 75)]:
        for _, rw, rh in sizes(w, h):
            assert rw % 2 == 0 and rh % 2 == 0
