"""``encodeq watch [JOB]``: a live terminal view of the pipeline.

What it shows is the live job model (``core/monitor.py``) as the live feed keeps it
(``core/live_feed.py``: subscribed first, then the manifests, then events, manifests re-read now and
then, queue depths by passive declares); this module draws it and decides when to stop.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from kombu import Connection
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from config.settings import get_settings
from console.terminal import err, fail, out
from core.job_model import is_job_id
from core.live_feed import LiveFeed
from core.manifest import JobStore
from core.monitor import JobView, Monitor
from core.storage import Storage

#: How often queue depths are sampled and the screen redrawn.
TICK_S = 1.0
#: Manifests of jobs in flight are re-read this often (events may be lost; manifests are not).
POLL_EVERY_S = 3.0
STATE_STYLE = {
    "queued": "yellow",
    "probing": "cyan",
    "encoding": "blue",
    "completed": "green",
    "failed": "red",
    "pending": "dim",
}


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


# --- the command ---------------------------------------------------------------------------------
def watch(
    job_id: Annotated[str | None, typer.Argument(metavar="[JOB]", help="Only this job.")] = None,
    until_done: Annotated[
        bool, typer.Option(help="Exit when the job (or every job in flight) ended: 0 completed.")
    ] = False,
    once: Annotated[bool, typer.Option(help="Print the current state once and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final state as JSON.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
) -> None:
    """Live view: per job one bar per rendition (worker, fps, speed), queue depths, workers."""
    if job_id is not None and not is_job_id(job_id):
        fail(f"no job {job_id!r}", code=1)
    with Connection(get_settings().broker_url, heartbeat=0) as connection:
        code = run_watch(
            connection,
            JobStore(Storage()),
            job_id,
            err if as_json else out,
            until_done=until_done,
            once=once,
            as_json=as_json,
            timeout_s=timeout,
        )
    raise typer.Exit(code)


def run_watch(
    connection: Connection,
    jobs: JobStore,
    job_id: str | None,
    console: Console,
    until_done: bool = False,
    once: bool = False,
    as_json: bool = False,
    timeout_s: float | None = None,
) -> int:
    """Watch until Ctrl-C (or, with ``until_done``, until the job(s) in view ended).

    Returns the exit code: 0, or with ``until_done`` 1 when a job it waited for failed, 3 when the
    timeout passed first, 1 when ``JOB`` does not exist.
    """
    monitor = Monitor(job_filter=job_id)
    feed = LiveFeed(connection, jobs, monitor, poll_every_s=POLL_EVERY_S, sample_every_s=TICK_S)
    with feed:
        feed.load([job_id] if job_id else None)
        if job_id and monitor.job(job_id) is None:
            console.print(f"[red]no job {escape(job_id)}[/]")
            return 1
        feed.sample_queues()
        if once:
            _emit(monitor, console, as_json)
            return 0
        waited_for = [job_id] if job_id else monitor.in_flight()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with Live(
            render(monitor),
            console=console,
            refresh_per_second=4,
            transient=as_json,
            auto_refresh=False,
        ) as live:
            code = _follow(feed, live, waited_for if until_done else None, deadline)
            live.update(render(monitor), refresh=True)
    if as_json:
        _emit(monitor, console, as_json=True)
    return code


def _follow(
    feed: LiveFeed, live: Live, waited_for: list[str] | None, deadline: float | None
) -> int:
    """Redraw after every turn of the feed until the jobs waited for ended (0: all completed, 1:
    any failed) or the deadline passed (3); without either, until Ctrl-C."""
    while True:
        feed.tick(timeout=0.25)
        if waited_for is not None:
            ended = feed.ended(waited_for)
            if len(ended) == len(waited_for):
                return 0 if all(m.state == "completed" for m in ended.values()) else 1
        if deadline is not None and time.monotonic() > deadline:
            return 3
        live.update(render(feed.monitor), refresh=True)


def _emit(monitor: Monitor, console: Console, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(monitor.snapshot(), indent=2) + "\n")
        sys.stdout.flush()
    else:
        console.print(render(monitor))
