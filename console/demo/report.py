"""What the demo prints: step headers, each job's outcome, the dead letters, the worker shares."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table

from config.topology import DEAD_LETTER_QUEUE_NAME
from console.demo.dead_letters import DemoDeadLetter
from core.job_model import Manifest
from core.layout import RENDITIONS, job_prefix, master_key
from core.storage import Storage, parse_uri

STEPS = 6


def step(console: Console, number: int, title: str) -> None:
    console.print(f"\n[bold cyan]{number}/{STEPS}[/] [bold]{title}[/]")


def show_job(m: Manifest, storage: Storage, console: Console) -> None:
    """State and error, the source, chunking and seam checks, the renditions, where to play it."""
    colour = {"completed": "green", "failed": "red"}.get(m.state, "yellow")
    console.print(
        f"\n[bold]{escape(m.source.filename)}[/]  job {m.job_id}  [{colour}]{m.state}[/]",
        highlight=False,
    )
    if m.error:
        console.print(f"  [red]{m.error.code}[/]: {escape(m.error.message)}", highlight=False)
    if m.source.width:
        console.print(
            f"  source: {m.source.width}x{m.source.height}, {m.source.duration or 0:.1f}s,"
            f" {escape(m.source.uri)}",
            highlight=False,
            soft_wrap=True,
        )
    if m.chunks is not None:
        joined = [r for r in m.renditions if r.name not in m.chunks.whole_rungs]
        passed = sum(1 for r in joined if r.seam_check and r.seam_check.passed)
        whole = (
            f", {', '.join(m.chunks.whole_rungs)} from the whole source"
            if m.chunks.whole_rungs
            else ""
        )
        console.print(
            f"  chunked: {m.chunks.count} chunks of {m.chunks.seconds:g}s, each decoded by range,"
            f" audio once, seam check passed on {passed}/{len(joined)} joined renditions{whole}",
            highlight=False,
        )
    if m.renditions:
        console.print(_renditions_table(m))
    if m.master_playlist:
        _, key = parse_uri(m.master_playlist)
        console.print(f"  master playlist: {m.master_playlist}", highlight=False, soft_wrap=True)
        url = storage.presigned_url(RENDITIONS, key)
        console.print(f"  presigned URL (1 h): {url}", highlight=False, soft_wrap=True)


def _renditions_table(m: Manifest) -> Table:
    table = Table("rendition", "resolution", "size", "state", "worker")
    table.add_column("playlist", overflow="fold")
    for r in m.renditions:
        table.add_row(
            r.name,
            f"{r.width}x{r.height}",
            decimal(r.size_bytes) if r.size_bytes else "",
            r.state,
            r.worker or "",
            r.playlist or "",
        )
    return table


def download(storage: Storage, job_id: str, folder: Path, console: Console) -> None:
    """--keep: copy the renditions next to the sample, playable after the demo's S3 is gone."""
    target = folder / "renditions"
    for key in storage.list_keys(RENDITIONS, job_prefix(job_id)):
        storage.download(RENDITIONS, key, target / key)
    master = target / master_key(job_id)
    console.print(f"  downloaded: ffplay '{escape(str(master))}'", highlight=False, soft_wrap=True)


def show_dead_letters(
    dead: list[DemoDeadLetter], others: int, manifests: dict[str, Manifest], console: Console
) -> None:
    console.print(f"\n[bold]dead-letter queue[/] {DEAD_LETTER_QUEUE_NAME} (peeked, left as it was)")
    if not dead:
        console.print("  nothing from this demo")
    for d in dead:
        filename = manifests[d.job_id].source.filename if d.job_id in manifests else d.job_id
        why = (
            f"{d.record.code}: {escape(d.record.message)}"
            if d.record
            else "[dim]no failure record[/]"
        )
        console.print(
            f"  {escape(filename)}  task {d.task} {d.task_id}  reason [bold]{d.reason}[/] in"
            f" {d.queue}  ->  {why}",
            highlight=False,
            soft_wrap=True,
        )
    if others:
        console.print(f"  [dim]{others} other message(s) from earlier runs not shown")
    console.print("  [dim]explore it with: encodeq dlq list")


def show_workers(m: Manifest, console: Console) -> None:
    """Which worker encoded how many rungs: competing consumers, visibly."""
    counts: dict[str, int] = {}
    for r in m.renditions:
        if r.worker:
            counts[r.worker] = counts.get(r.worker, 0) + 1
    if counts:
        shares = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
        console.print(f"\n  renditions per worker: {shares}", highlight=False)


def verdict(ok: bool, folder: Path, console: Console) -> None:
    if ok:
        console.print(
            "\n[bold green]demo OK[/]: the sample completed in both modes; the broken file failed"
            " and its message was dead-lettered"
        )
    else:
        console.print(
            f"\n[bold red]demo did not go as expected[/] (worker logs in {escape(str(folder))})"
        )
