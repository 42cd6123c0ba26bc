"""Follow jobs until they end: live progress from events, the truth from the manifests."""

from __future__ import annotations

import time
from collections.abc import Iterable

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from core.events import EventSubscription
from core.manifest import JobStore, Manifest

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


class JobFollower:
    """Keeps one progress bar per (job, rendition) up to date."""

    def __init__(self, jobs: JobStore, job_ids: Iterable[str], progress: Progress) -> None:
        self.jobs = jobs
        self.pending = list(job_ids)
        self.final: dict[str, Manifest] = {}
        self.progress = progress
        self.bars: dict[tuple[str, str], TaskID] = {}

    def _bar(self, job_id: str, name: str) -> TaskID:
        key = (job_id, name)
        if key not in self.bars:
            label = f"{job_id[:8]} {name:>6}"
            self.bars[key] = self.progress.add_task(label, total=100, status="queued")
        return self.bars[key]

    def on_event(self, event: dict) -> bool:
        """Apply an event; True when it says a job ended (time to read its manifest)."""
        job_id = event.get("job_id")
        if job_id not in self.pending:
            return False
        kind = event.get("event", "")
        name = event.get("rendition")
        if kind.startswith("rendition.") and name:
            bar = self._bar(job_id, name)
            worker = event.get("worker") or ""
            if kind == "rendition.progress":
                status = f"{worker} {event.get('fps', 0):.0f} fps {event.get('speed', 0):.1f}x"
                self.progress.update(bar, completed=event.get("progress", 0), status=status)
            elif kind == "rendition.completed":
                self.progress.update(bar, completed=100, status=f"{worker} done")
            else:
                self.progress.update(bar, status=f"{worker} {kind.split('.')[1]}")
        return kind in ("job.completed", "job.failed")

    def poll(self) -> None:
        for job_id in list(self.pending):
            manifest = self.jobs.load(job_id)
            if manifest is None:
                continue
            for r in manifest.renditions:
                bar = self._bar(job_id, r.name)
                status = f"{r.worker or ''} {r.state}".strip()
                self.progress.update(bar, completed=max(r.progress, 0), status=status)
            if manifest.finished:
                self.pending.remove(job_id)
                self.final[job_id] = manifest


def follow(
    jobs: JobStore, job_ids: list[str], timeout_s: float, console: Console | None = None
) -> dict[str, Manifest]:
    """Block until every job ended or ``timeout_s`` passed; returns the manifests of ended jobs."""
    from worker.app import app

    progress = rendition_progress(console)
    follower = JobFollower(jobs, job_ids, progress)
    deadline = time.monotonic() + timeout_s
    with (
        app.connection_for_read() as connection,
        EventSubscription(connection, ("job.*", "rendition.*")) as events,
        progress,
    ):
        next_poll = 0.0
        while follower.pending and time.monotonic() < deadline:
            if time.monotonic() >= next_poll:
                follower.poll()
                next_poll = time.monotonic() + POLL_EVERY_S
            ended = False
            for event in events.events(timeout=0.5):
                ended |= follower.on_event(event)
            if ended:
                next_poll = 0.0
    return follower.final
