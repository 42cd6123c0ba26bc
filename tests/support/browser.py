"""The dashboard in headless Chromium (Debian's package, driven by Playwright): what the page
tests share. Every wait is on a condition in the page, never on a clock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def watch_errors(page: Any) -> list[str]:
    """Script errors and Content-Security-Policy violations the page runs into."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return errors


def upload_through_page(page: Any, files: Any) -> str:
    """Choose a file in the plain ``input[type=file]``; returns the job id the API answered."""
    with page.expect_response(lambda r: urlsplit(r.url).path == "/api/uploads") as answer:
        page.set_input_files("input[type=file]", files)
    response = answer.value
    assert response.status == 202, response.text()
    return response.json()["job_id"]


def play_and_choose(page: Any, job_id: str, rung: str = "240p") -> list[str]:
    """Play the job in the page's player, then pick ``rung`` in the quality menu and see the
    video switch to it; returns the menu's options."""
    page.click(f'tr[data-job-id="{job_id}"] [data-action="play"]')
    page.wait_for_function(
        "() => { const v = document.getElementById('video');"
        " return v.readyState >= 2 && v.currentTime > 0.5; }",
        timeout=60_000,
    )
    options = page.eval_on_selector_all("#quality option", "os => os.map(o => o.textContent)")
    [level] = [i - 1 for i, o in enumerate(options) if o.startswith(rung)]
    page.select_option("#quality", str(level))
    page.wait_for_function(
        "([level, height]) => { const v = document.getElementById('video');"
        " return v.dataset.level === String(level) && v.videoHeight === height; }",
        arg=[level, int(rung.rstrip("p"))],
        timeout=30_000,
    )
    return options
