"""A new user's first minutes with ``encodeq up``, timed in a real browser (issue 14).

What README's first command leads to, step by step, each step timed from the previous one:
``encodeq up`` (default workers: one per core) until it prints its guide and until the page
shows every worker consuming; a phone-like source (``--length`` s of 720p at 29.97 fps, 2 s GOP)
uploaded through the page, until the job's player can start and until it completed; ``+ worker``
until the broker counts one more consumer; a second upload whose encode is SIGKILLed from the
page, until the narration shows it redelivered and the job completed; Ctrl-C until ``up`` exited;
``encodeq up`` again until the first job shows on the page, restored from the data directory.

    python bench/bench_up.py --media /work/sweep-media [--length 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # the suite's helpers: one browser, one up, one media

from support.broker import scratch_vhost  # noqa: E402
from support.browser import chromium, upload_through_page  # noqa: E402
from support.fleet import hold_ffmpeg, worker_holding  # noqa: E402
from support.up import Up  # noqa: E402
from support.waiting import wait_for  # noqa: E402
from sweep_media import Source, make_source  # noqa: E402

from console.s3server import free_port  # noqa: E402

RUNNING = """(n) => { const ws = [...document.querySelectorAll('#fleet-workers li')];
  return ws.length === n && ws.every((w) => w.dataset.state === 'running'); }"""
MINUTES = 600_000  # Playwright's milliseconds


def completed(job_id: str) -> str:
    return f'tr[data-job-id="{job_id}"][data-state="completed"]'


class Clock:
    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []
        self._last = time.monotonic()

    def step(self, what: str) -> None:
        now = time.monotonic()
        self.steps.append((what, round(now - self._last, 2)))
        self._last = now
        print(f"  {self.steps[-1][1]:7.2f}s  {what}", flush=True)


def first_minutes(media: Path, length: float, data_dir: Path) -> list[tuple[str, float]]:
    source, _ = make_source(Source(length, "29.97", "closed", 1280, 720), media)
    second, _ = make_source(Source(15, "29.97", "closed", 1280, 720), media)
    clock = Clock()
    up = Up(data_dir, workers=os.cpu_count() or 1)
    clock.step("encodeq up printed its guide and the dashboard answers")
    try:
        with chromium() as browser:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.goto(up.link)
            page.wait_for_selector("body[data-ready=true]")
            clock.step("the page is open (the link's token taken)")
            workers = os.cpu_count() or 1
            page.wait_for_function(RUNNING, arg=workers, timeout=MINUTES)
            clock.step(f"{workers} workers consuming, as the page shows")
            job = upload_through_page(page, str(source))
            clock.step(f"uploaded {length:g} s of 720p through the page")
            page.wait_for_selector(f'tr[data-job-id="{job}"] [data-action="play"]', timeout=MINUTES)
            clock.step("the job can be played (lowest rung first)")
            page.wait_for_selector(
                f'tr[data-job-id="{job}"][data-state="completed"]', timeout=MINUTES
            )
            clock.step("the job completed")
            page.click("#scale-up")
            wait_for(lambda: up.running(workers + 1), 120, "one more consumer", every=0.1)
            clock.step("+ worker: the broker counts one more consumer")
            other = upload_through_page(page, str(second))
            held = hold_ffmpeg(other, timeout=120)
            holder = worker_holding(held, {w["pid"]: w["name"] for w in up.fleet()["workers"]})
            clock.step("a second upload is encoding")
            page.click(f'#fleet-workers [data-kill="{holder}"]')
            page.wait_for_selector('#narration li[data-kind="redelivered"]', timeout=MINUTES)
            clock.step(f"kill -9 {holder}: its task redelivered")
            page.wait_for_selector(
                f'tr[data-job-id="{other}"][data-state="completed"]', timeout=MINUTES
            )
            clock.step("that job completed anyway")
            assert up.interrupt() == 0, up.output()[-2000:]
            clock.step("Ctrl-C: up stopped, warm")
            up = Up(data_dir, workers=1)
            page.goto(up.link)
            page.wait_for_selector(
                f'tr[data-job-id="{job}"][data-state="completed"]', timeout=MINUTES
            )
            clock.step("encodeq up again: the first job is back on the page")
    finally:
        if up.proc.poll() is None:
            up.interrupt()
    return clock.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=Path("/tmp/encodeq-bench-media"))
    parser.add_argument("--length", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench_up.json")
    args = parser.parse_args()
    args.media.mkdir(parents=True, exist_ok=True)
    with scratch_vhost("encodeq-bench-up") as broker_url, TemporaryDirectory() as tmp:
        os.environ["ENCODEQ_BROKER_URL"] = broker_url
        os.environ["ENCODEQ_S3_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
        steps = first_minutes(args.media, args.length, Path(tmp) / "data")
    total = sum(seconds for _, seconds in steps)
    report: dict[str, Any] = {"length_s": args.length, "steps": steps, "total_s": round(total, 2)}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"total {total:.1f}s; written to {args.out}")


if __name__ == "__main__":
    main()
