"""``encodeq status JOB`` and ``encodeq jobs``: what the manifests say, as tables or JSON."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from console.terminal import fail, out, print_json
from core.job_model import Manifest, is_job_id
from core.manifest import JobStore
from core.storage import Storage
from uploader.cancel import CancelError
from uploader.cancel import cancel as cancel_job


def status(
    job_id: Annotated[str, typer.Argument(help="A job id printed by upload.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one job's manifest."""
    manifest = JobStore(Storage()).load(job_id) if is_job_id(job_id) else None
    if manifest is None:
        fail(f"no job {job_id!r}", code=1)
    if as_json:
        print_json(manifest.model_dump(mode="json"))
        return
    summary(manifest)
    s = manifest.source
    out.print(f"  source: {s.uri} {s.width}x{s.height} {s.duration or 0:.2f}s", highlight=False)
    table = Table("rendition", "size", "state", "worker", "bandwidth", "playlist")
    for r in manifest.renditions:
        table.add_row(
            r.name,
            f"{r.width}x{r.height}",
            r.state,
            r.worker or "",
            str(r.bandwidth or ""),
            r.playlist or "",
        )
    out.print(table)


def list_jobs(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List every job, oldest first."""
    manifests = JobStore(Storage()).list()
    if as_json:
        print_json([m.model_dump(mode="json") for m in manifests])
        return
    table = Table("job", "state", "file", "renditions", "error")
    for m in manifests:
        done = sum(r.state == "completed" for r in m.renditions)
        table.add_row(
            m.job_id,
            m.state,
            m.source.filename,
            f"{done}/{len(m.renditions)}",
            m.error.code if m.error else "",
        )
    out.print(table)


def summary(m: Manifest) -> None:
    """A job in three lines: id, state and file; its error; its master playlist (or, while it
    encodes, the rungs that play already)."""
    colour = {"completed": "green", "failed": "red", "cancelled": "dim"}.get(m.state, "yellow")
    out.print(f"[bold]{m.job_id}[/] [{colour}]{m.state}[/] {m.source.filename}", highlight=False)
    if m.error:
        out.print(f"  [red]{m.error.code}[/]: {m.error.message}", highlight=False)
    if m.master_playlist:
        out.print(f"  master: {m.master_playlist}", highlight=False)
    elif m.state == "encoding" and (live := [r.name for r in m.renditions if r.live_playlist]):
        # the lowest rung plays while the rest encodes (its playlist grows: HLS EVENT)
        out.print(f"  playable now: {', '.join(live)} (still encoding)", highlight=False)


def print_manifests(manifests: list[Manifest]) -> None:
    """One manifest as an object, several as a list (``--json``)."""
    docs = [m.model_dump(mode="json") for m in manifests]
    print_json(docs[0] if len(docs) == 1 else docs)


def cancel(
    job_id: Annotated[str, typer.Argument(help="A job id printed by upload.")],
) -> None:
    """Cancel a job: its ffmpeg stopped on every worker, its queued tasks dropped as they come
    up, its intermediates removed. Exit 1 when the job is unknown or already finished."""
    try:
        cancel_job(job_id)
    except CancelError as exc:
        fail(exc.message, code=1)
    out.print(f"{job_id} cancelled", highlight=False)
