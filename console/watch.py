"""``encodeq watch [JOB]``: a live terminal view of the pipeline, fed by the lifecycle events.

It subscribes first (a private auto-deleted queue on ``encodeq.events``: pub-sub, it takes no work
from anyone), then reads the manifests of the jobs in flight, so nothing that happens in between is
missed; from then on events drive the view and the manifests are re-read now and then (events are
best effort, manifests are the truth). Queue depths come from passive declares.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from core.events import EventSubscription
from core.manifest import JobStore, Manifest
from core.monitor import JobView, Monitor, queue_depths

#: How often queue depths are sampled and the screen redrawn.
TICK_S = 1.0
#: Manifests of jobs in flight are re-read this often (events may be lost; manifests are not).
POLL_EVERY_S = 3.0
#: Finished jobs shown at start: the most recent failures, so a watcher sees what just broke.
RECENT_FAILED = 5
STATE_STYLE = {
    "queued": "yellow",
    "probing": "cyan",
    "encoding": "blue",
    "completed": "green",
    "failed": "red",
    "pending": "dim",
}


def load_manifests(jobs: JobStore, job_ids: list[str]) -> list[Manifest]:
    """Manifests of ``job_ids``, read in parallel (each is a few S3 round trips)."""
    if not job_ids:
        return []
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(jobs.load, job_ids))
    return [m for m in found if m is not None]


def initial_state(monitor: Monitor, jobs: JobStore, job_id: str | None) -> None:
    """One job, or every job in flight plus the latest failures, from their manifests."""
    if job_id:
        manifest = jobs.load(job_id)
        if manifest is not None:
            monitor.load_manifest(manifest)
        return
    manifests = load_manifests(jobs, jobs.job_ids())
    running = [m for m in manifests if not m.finished]
    failed = sorted((m for m in manifests if m.state == "failed"), key=lambda m: m.updated_at)
    for manifest in [*failed[-RECENT_FAILED:], *running]:
        monitor.load_manifest(manifest)


# --- rendering -----------------------------------------------------------------------------------
def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def _job_panel(job: JobView) -> Panel:
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column("rendition", width=7)
    table.add_column("bar", ratio=1)
    table.add_column("pct", justify="right", width=6)
    table.add_column("state", width=9)
    table.add_column("worker", ratio=1, overflow="ellipsis", no_wrap=True)
    table.add_column("fps", justify="right", width=6)
    table.add_column("speed", justify="right", width=6)
    for r in job.renditions.values():
        table.add_row(
            r.name,
            ProgressBar(total=100, completed=r.progress, width=None),
            f"{r.progress:5.1f}%",
            _state(r.state),
            r.worker or "-",
            f"{r.fps:.0f}" if r.fps else "-",
            f"{r.speed:.1f}x" if r.speed else "-",
        )
    if not job.renditions:
        table.add_row("", Text("waiting for the probe to choose the ladder", style="dim"))
    title = Text.assemble(
        (job.job_id, "bold"), " ", _state(job.state), " ", (job.filename or "", "dim")
    )
    body: list[Any] = [table]
    if job.chunks:
        body.append(_chunk_line(job))
    if job.error_code:
        body.append(Text(f"failed: {job.error_code}: {job.error_message or ''}", style="red"))
    return Panel(Group(*body), title=title, title_align="left", border_style="dim")


CHUNK_MARK = {"completed": ("#", "green"), "encoding": (">", "blue"), "pending": (".", "dim")}


def _chunk_line(job: JobView) -> Text:
    """Chunked mode: one mark per chunk, stragglers flagged with the workers they went to."""
    count = max(job.chunk_count, max(job.chunks) + 1)
    done = sum(c.state == "completed" for c in job.chunks.values())
    line = Text(f"chunks {done}/{count} ")
    for index in range(count):
        chunk = job.chunks.get(index)
        mark, style = CHUNK_MARK.get(chunk.state if chunk else "pending", ("?", ""))
        line.append(
            "!" if chunk and chunk.straggler and chunk.state != "completed" else mark,
            style="bold yellow" if chunk and chunk.straggler else style,
        )
    for chunk in job.chunks.values():
        if chunk.straggler:
            line.append(
                f"  chunk {chunk.index} straggled, offered again (now {chunk.worker})",
                style="yellow",
            )
    return line


def render(monitor: Monitor) -> Group:
    """The whole screen: queues, workers, then one panel per job (running first)."""
    queues = Table("queue", "ready", "consumers", title="queues", title_justify="left")
    for q in monitor.queues:
        queues.add_row(
            q.name,
            "-" if q.messages is None else str(q.messages),
            "-" if q.consumers is None else str(q.consumers),
        )
    workers = Table("worker", "doing", "done", title="workers seen", title_justify="left")
    for w in sorted(monitor.workers.values(), key=lambda w: w.name):
        workers.add_row(escape(w.name), w.doing or Text("idle", style="dim"), str(w.tasks_done))
    if not monitor.workers:
        workers.add_row(Text("none yet", style="dim"), "", "")
    top = Table.grid(padding=(0, 4))
    top.add_row(queues, workers)
    jobs = monitor.sorted_jobs()
    panels: list[Any] = [_job_panel(j) for j in jobs]
    if not jobs:
        panels = [Text("no jobs in flight", style="dim")]
    failed = [j for j in jobs if j.state == "failed"]
    footer = Text(
        f"{len(jobs) - len([j for j in jobs if j.finished])} running, {len(failed)} failed,"
        f" {monitor.events_seen} events",
        style="dim",
    )
    return Group(top, *panels, footer)


# --- the loop ------------------------------------------------------------------------------------
def run_watch(
    connection: Any,
    jobs: JobStore,
    job_id: str | None,
    console: Console,
    until_done: bool = False,
    once: bool = False,
    as_json: bool = False,
    timeout_s: float | None = None,
    on_subscribed: Callable[[str], None] | None = None,
) -> int:
    """Watch until Ctrl-C (or, with ``until_done``, until the job(s) in view ended).

    Returns the exit code: 0, or with ``until_done`` 1 when a job it waited for failed, 3 when the
    timeout passed first, 1 when ``JOB`` does not exist.
    """
    monitor = Monitor(job_filter=job_id)
    with EventSubscription(connection, ("job.*", "rendition.*", "chunk.*")) as events:
        if on_subscribed is not None:
            on_subscribed(events.queue.name)
        initial_state(monitor, jobs, job_id)
        if job_id and monitor.job(job_id) is None:
            console.print(f"[red]no job {escape(job_id)}[/]")
            return 1
        monitor.set_queues(queue_depths(connection))
        if once:
            _emit(monitor, console, as_json)
            return 0
        waited_for = [job_id] if job_id else monitor.in_flight()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        live = Live(
            render(monitor),
            console=console,
            refresh_per_second=4,
            transient=as_json,
            auto_refresh=False,
        )
        code = 0
        with live:
            next_tick, next_poll = 0.0, time.monotonic() + POLL_EVERY_S
            while True:
                for event in events.events(timeout=0.25):
                    monitor.apply(event)
                now = time.monotonic()
                if now >= next_poll:
                    for manifest in load_manifests(jobs, monitor.in_flight()):
                        monitor.load_manifest(manifest)
                    next_poll = now + POLL_EVERY_S
                if now >= next_tick:
                    monitor.set_queues(queue_depths(connection))
                    next_tick = now + TICK_S
                if until_done:
                    done = _ended(monitor, jobs, waited_for)
                    if done is not None:
                        code = done
                        break
                if deadline is not None and now > deadline:
                    code = 3
                    break
                live.update(render(monitor), refresh=True)
            live.update(render(monitor), refresh=True)
    if as_json:
        _emit(monitor, console, as_json=True)
    return code


def _ended(monitor: Monitor, jobs: JobStore, waited_for: list[str]) -> int | None:
    """None while a job waited for still runs; else 0 when all completed, 1 when any failed.

    A job is only taken as ended once its manifest says so: the manifest is what a user reads next.
    """
    views = [monitor.job(j) for j in waited_for]
    if any(v is None or not v.finished for v in views):
        return None
    manifests = load_manifests(jobs, waited_for)
    for manifest in manifests:
        monitor.load_manifest(manifest)
    if len(manifests) < len(waited_for) or any(not m.finished for m in manifests):
        return None
    return 0 if all(m.state == "completed" for m in manifests) else 1


def _emit(monitor: Monitor, console: Console, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(monitor.snapshot(), indent=2) + "\n")
        sys.stdout.flush()
    else:
        console.print(render(monitor))
