"""The Lessons card of ``encodeq up`` in Chromium: a lesson run from the page narrates as it
happens and ends with the verdict and the broker counters it was computed from; the same lesson
with its mechanism broken through a knob on the page ends with ``fail``; a lesson's workers (in
its scratch vhost) are lanes on the page's timeline, their redelivered run marked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.browser import CHROMIUM, chromium, watch_errors
from support.up import Up

from console.s3server import free_port

pytestmark = pytest.mark.slow
LESSON_MS = 120_000

pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
if not CHROMIUM.exists():  # pragma: no cover - .ci/run installs it
    pytest.skip("apt-get install chromium", allow_module_level=True)


def verdict_of(page: object) -> tuple[str, dict[str, str]]:
    """The verdict the page shows, once it shows one, and its counters table (name -> value)."""
    box = page.wait_for_selector(  # type: ignore[attr-defined]
        "#lesson-verdict:not([hidden])[data-verdict]", timeout=LESSON_MS
    )
    rows = box.query_selector_all("table tbody tr")
    counters = {
        r.query_selector("th").inner_text(): r.query_selector("td").inner_text() for r in rows
    }
    return box.get_attribute("data-verdict"), counters


@pytest.fixture
def lessons_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The dashboard of a fresh ``encodeq up`` (one worker) in Chromium, its Lessons card shown;
    the page logged no error when the test ends, and ``up`` exits 0 on Ctrl-C."""
    monkeypatch.setenv("ENCODEQ_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    up = Up(tmp_path / "data", workers=1)
    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors = watch_errors(page)
            page.goto(up.link)
            page.wait_for_selector("#lessons:not([hidden])")
            yield page
            assert errors == []
    finally:
        assert up.interrupt() == 0, up.output()


def test_a_lesson_from_the_page_and_the_same_one_broken(lessons_page: Any) -> None:
    page = lessons_page
    names = page.eval_on_selector_all(
        "#lesson-list li[data-lesson]", "ls => ls.map((l) => l.dataset.lesson)"
    )
    assert {"consumers-vs-pubsub", "durability", "back-pressure", "log"} <= set(names)

    page.click('#lesson-list button[data-lesson="back-pressure"]')
    verdict, counters = verdict_of(page)
    assert verdict == "pass", counters
    assert counters["lost"] == "0" and int(counters["nacks"]) > 0
    assert page.locator("#lesson-steps li").count() >= 3  # narrated, step by step

    page.uncheck("#knob-back-pressure-wait_for_confirms")
    page.click('#lesson-list button[data-lesson="back-pressure"]')
    page.wait_for_selector("#lesson-verdict[hidden]", state="attached")
    verdict, counters = verdict_of(page)
    assert verdict == "fail", counters
    assert int(counters["lost"]) > 0 and counters["nacks"] == "0"
    assert "broken: wait_for_confirms=false" in page.inner_text("#lesson-title")


def test_a_lessons_workers_are_on_the_timeline(lessons_page: Any) -> None:
    """The delivery lesson kills a worker mid-task under late acks: the page's timeline shows the
    lesson's workers as lanes of their own beside the fleet's, and the task the broker delivered
    again as a redelivered bar."""
    page = lessons_page
    page.click('#lesson-list button[data-lesson="delivery"]')
    verdict, counters = verdict_of(page)
    assert verdict == "pass", counters
    lanes = page.locator('#timeline-lanes .lane[data-lesson="delivery"]')
    assert lanes.count() >= 2  # the killed worker and the one that took its task over
    assert "lesson delivery" in lanes.first.inner_text()
    assert lanes.locator('.bar[data-redelivered="true"]').count() >= 1
    # the fleet's own worker keeps its lane, apart from the lesson's
    assert page.locator("#timeline-lanes .lane:not([data-lesson])").count() >= 1
