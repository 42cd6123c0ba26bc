"""``encodeq upload``: send videos, start their jobs, and with ``--wait`` follow them to the end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from console.follow import follow
from console.jobs import print_manifests, summary
from console.terminal import err, fail, out
from console.upload_bar import UploadBar, upload_progress
from core.job_model import Manifest
from core.manifest import JobStore
from core.storage import Storage
from uploader.submit import Busy, SubmitError, check_admission, check_file, submit


def upload(
    paths: Annotated[list[Path], typer.Argument(help="Video files to encode.")],
    wait: Annotated[bool, typer.Option(help="Follow the jobs until they end.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest(s) as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 3600.0,
    mode: Annotated[
        str | None,
        typer.Option(
            help="chunked (chunks on many workers, every rung from one decode) or per-rung "
            "(one task per rung); default: chunked for long sources."
        ),
    ] = None,
    priority: Annotated[
        str,
        typer.Option(help="high: the jobs' encodes overtake normal ones at the next free worker."),
    ] = "normal",
) -> None:
    """Upload videos and start their jobs; prints job ids. With --wait: exit 0 when every job
    completed, 1 when any failed (or the timeout passed). Exit 3: the queues are at their bound
    (ENCODEQ_MAX_QUEUED_TASKS), nothing uploaded."""
    if mode not in (None, "chunked", "per-rung"):
        fail(f"--mode must be chunked or per-rung, not {mode!r}")
    if priority not in ("normal", "high"):
        fail(f"--priority must be high or normal, not {priority!r}")
    try:  # refuse before anything is uploaded
        for path in paths:
            check_file(path)
        check_admission()
    except Busy as exc:
        fail(str(exc), code=3)
    except SubmitError as exc:
        fail(str(exc))
    storage = Storage()
    submitted = _submit_all(paths, storage, mode, priority, as_json)
    if not wait:
        if as_json:
            print_manifests(submitted)
        return
    jobs = JobStore(storage)
    ids = [m.job_id for m in submitted]
    final = follow(jobs, ids, timeout, console=err)
    manifests = [final.get(i) or jobs.load(i) or m for i, m in zip(ids, submitted, strict=True)]
    if as_json:
        print_manifests(manifests)
    else:
        for m in manifests:
            summary(m)
    timed_out = [i for i in ids if i not in final]
    if timed_out:
        err.print(f"[yellow]timed out after {timeout:.0f}s waiting for {', '.join(timed_out)}")
    raise typer.Exit(0 if all(m.state == "completed" for m in manifests) else 1)


def _submit_all(
    paths: list[Path], storage: Storage, mode: str | None, priority: str, as_json: bool
) -> list[Manifest]:
    """Upload each file with a bar, printing each job id as it starts (on stderr under --json)."""
    submitted: list[Manifest] = []
    with upload_progress(err) as bars:
        for path in paths:
            try:
                bar = UploadBar(bars, f"upload {path.name}")
                manifest = submit(
                    path,
                    storage,
                    progress=bar,
                    mode=mode,  # type: ignore[arg-type]
                    priority=priority,  # type: ignore[arg-type]
                )
            except Busy as exc:
                fail(str(exc), code=3)
            except SubmitError as exc:
                fail(str(exc))
            submitted.append(manifest)
            (err if as_json else out).print(manifest.job_id, markup=False, highlight=False)
    return submitted
