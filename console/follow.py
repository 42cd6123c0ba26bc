"""``encodeq upload --wait`` (and the demo): progress bars per rendition until the jobs end.

The following itself is the live job model's (``core/live_feed.py``); this module only draws it:
one bar per (job, rendition) with the worker, fps and speed of a running encode.
"""

from __future__ import annotations

import time

from kombu import Connection
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from config.settings import get_settings
from core.job_model import Manifest
from core.live_feed import LiveFeed
from core.manifest import JobStore
from core.monitor import JobView, Monitor, RenditionView

#: Manifests are re-read this often even when no event says so (events are best effort).
POLL_EVERY_S = 2.0


def rendition_progress(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("[dim]{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )


class RenditionBars:
    """One progress bar per (job, rendition), drawn from the model's job views."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.bars: dict[tuple[str, str], TaskID] = {}

    def draw(self, job: JobView) -> None:
        for rendition in job.renditions.values():
            key = (job.job_id, rendition.name)
            if key not in self.bars:
                label = f"{job.job_id[:8]} {rendition.name:>6}"
                self.bars[key] = self.progress.add_task(label, total=100, status="queued")
            self.progress.update(
                self.bars[key], completed=rendition.progress, status=_status(rendition)
            )


def _status(rendition: RenditionView) -> str:
    worker = rendition.worker or ""
    if rendition.state == "completed":
        return f"{worker} done".strip()
    if rendition.state == "encoding" and rendition.fps is not None:
        return f"{worker} {rendition.fps:.0f} fps {rendition.speed or 0:.1f}x".strip()
    return f"{worker} {rendition.state}".strip()


def follow(
    jobs: JobStore, job_ids: list[str], timeout_s: float, console: Console | None = None
) -> dict[str, Manifest]:
    """Block until every job ended or ``timeout_s`` passed; returns the manifests of ended jobs."""
    progress = rendition_progress(console)
    bars = RenditionBars(progress)
    monitor = Monitor(job_filter=job_ids)
    final: dict[str, Manifest] = {}
    deadline = time.monotonic() + timeout_s
    with (
        Connection(get_settings().broker_url, heartbeat=0) as connection,
        LiveFeed(connection, jobs, monitor, poll_every_s=POLL_EVERY_S) as feed,
        progress,
    ):
        feed.load(job_ids)
        while len(final) < len(job_ids) and time.monotonic() < deadline:
            feed.tick(timeout=0.5)
            final.update(feed.ended(j for j in job_ids if j not in final))
            for job_id in job_ids:
                view = monitor.job(job_id)
                if view is not None:
                    bars.draw(view)
    return final
