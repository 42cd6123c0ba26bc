"""The demo's six steps, in the order a user would do them by hand, and the ``encodeq demo``
command that runs them: storage, broker and workers, sample files, upload, live encoding, results.
"""

from __future__ import annotations

import signal
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from kombu import Connection
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape

from config.settings import get_settings
from config.topology import ENCODE_QUEUE_NAME
from console.demo.dead_letters import wait_for_dead_letters
from console.demo.report import (
    download,
    show_dead_letters,
    show_job,
    show_workers,
    step,
    verdict,
)
from console.demo.samples import (
    BROKEN_BYTES,
    BROKEN_NAME,
    SAMPLE_NAME,
    SAMPLE_SECONDS,
    SAMPLE_SIZE,
    make_broken,
    make_sample,
)
from console.demo.stack import (
    DemoError,
    DemoWorker,
    check_tools,
    connect_broker,
    consumers,
    demo_folder,
    ensure_storage,
    sigterm_as_interrupt,
    start_workers,
    wait_for_consumers,
)
from console.follow import follow
from console.terminal import out
from console.upload_bar import UploadBar, upload_progress
from core.job_model import Manifest
from core.manifest import JobStore
from core.storage import Storage
from uploader.submit import submit

FOLLOW_TIMEOUT_S = 600.0
#: How long the dead letter of a failed job may lag behind its manifest.
DLQ_WAIT_S = 20.0


def demo(
    workers: Annotated[int, typer.Option(help="Worker processes to start.")] = 2,
    keep: Annotated[bool, typer.Option(help="Leave the sample files in ./encodeq-demo.")] = False,
) -> None:
    """The whole pipeline on this machine: sample video + a broken file, two workers, live view."""
    raise typer.Exit(run_demo(workers=workers, keep=keep, console=out))


def run_demo(workers: int, keep: bool, console: Console) -> int:
    """Run the demo; 0 when the sample completed and the broken file was failed and dead-lettered.

    Resources are registered on an ExitStack as they are started (``stack.py``), so whatever
    happens after (an error, Ctrl-C, SIGTERM) they are stopped again.
    """
    if workers < 1:
        console.print("[red]--workers must be at least 1")
        return 2
    previous_sigterm = sigterm_as_interrupt()
    ok = False
    try:
        with ExitStack() as stack:
            folder = demo_folder(keep, stack, lambda: ok, console)
            ok = _run(workers, folder, keep, stack, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything the demo started has been stopped")
        return 130
    except DemoError as exc:
        console.print(f"[bold red]demo failed:[/] {escape(str(exc))}")
    except Exception as exc:
        console.print(f"[bold red]demo failed:[/] {type(exc).__name__}: {escape(str(exc))}")
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return 0 if ok else 1


def _run(workers: int, folder: Path, keep: bool, stack: ExitStack, console: Console) -> bool:
    """The steps, in the order a user would do them by hand."""
    check_tools()

    step(console, 1, "object storage")
    embedded = ensure_storage(stack, console)
    settings = get_settings()  # final from here on: workers and this process see the same
    storage = Storage(settings)

    step(console, 2, "broker and workers")
    broker = connect_broker(settings, stack, console)
    already = consumers(broker)
    if already:
        console.print(
            f"  [yellow]{already} other worker(s) already consume {ENCODE_QUEUE_NAME} here; they"
            " will compete for the demo's tasks"
            + (" but cannot reach its embedded S3" if embedded else "")
        )
    fleet = start_workers(workers, folder, stack, console)

    step(console, 3, "sample files")
    sample, broken = _sample_files(folder, console)
    _wait_for_workers(broker, already, fleet, console)

    step(console, 4, "upload")
    submitted = _upload(storage, sample, broken, console)

    step(console, 5, f"encoding on {workers} competing worker(s), live")
    manifests = _follow(JobStore(storage), submitted, console)

    step(console, 6, "results")
    ok = _results(broker, storage, manifests, folder, keep, console)
    if embedded:
        console.print(
            "  [dim]the embedded S3 server stops with the demo: its URLs and objects go too;"
            " run MinIO (docker compose up) to keep them"
        )
    verdict(ok, folder, console)
    return ok


def _sample_files(folder: Path, console: Console) -> tuple[Path, Path]:
    sample, broken = folder / SAMPLE_NAME, folder / BROKEN_NAME
    with console.status(f"making a {SAMPLE_SECONDS}s {SAMPLE_SIZE} test video with ffmpeg"):
        make_sample(sample)
    make_broken(broken)
    console.print(f"  {escape(str(sample))} ({decimal(sample.stat().st_size)})", highlight=False)
    console.print(
        f"  {escape(str(broken))} ({decimal(BROKEN_BYTES)} of random bytes: not a video)",
        highlight=False,
    )
    return sample, broken


def _wait_for_workers(
    broker: Connection, already: int, fleet: list[DemoWorker], console: Console
) -> None:
    with console.status(f"waiting for {len(fleet)} worker(s) to consume {ENCODE_QUEUE_NAME}"):
        wait_for_consumers(broker, already + len(fleet), fleet)
    console.print(f"  {len(fleet)} worker(s) consuming", highlight=False)


def _upload(storage: Storage, sample: Path, broken: Path, console: Console) -> list[Manifest]:
    """The sample twice (one task per rung; one task per chunk doing every rung), then the broken
    file, with the upload command's bars; in that order: per-rung, chunked, broken."""
    submitted: list[Manifest] = []
    with upload_progress(console) as bars:
        for path, mode in ((sample, "per-rung"), (sample, "chunked"), (broken, None)):
            bar = UploadBar(bars, f"  upload {path.name}" + (f" ({mode})" if mode else ""))
            submitted.append(submit(path, storage, progress=bar, mode=mode))
    for m in submitted:
        mode = f" ({m.mode})" if m.mode else ""
        console.print(f"  {escape(m.source.filename)}{mode} -> job {m.job_id}", highlight=False)
    return submitted


def _follow(jobs: JobStore, submitted: list[Manifest], console: Console) -> dict[str, Manifest]:
    """``upload --wait``'s bars until every job ended; the latest manifest of each, by job id."""
    ids = [m.job_id for m in submitted]
    final = follow(jobs, ids, FOLLOW_TIMEOUT_S, console=console)
    if len(final) < len(ids):
        console.print(f"[yellow]  gave up following after {FOLLOW_TIMEOUT_S:.0f}s")
    return {i: final.get(i) or jobs.load(i) or m for i, m in zip(ids, submitted, strict=True)}


def _results(
    broker: Connection,
    storage: Storage,
    manifests: dict[str, Manifest],
    folder: Path,
    keep: bool,
    console: Console,
) -> bool:
    """Every job, the dead letters, the worker shares; True when the demo went as it should."""
    ids = list(manifests)
    good_id, chunked_id, broken_id = ids
    with console.status("reading the dead-letter queue"):
        # Only a failed job has a dead letter on its way; otherwise one look is enough.
        wait_s = DLQ_WAIT_S if manifests[broken_id].state == "failed" else 0.0
        dead, others = wait_for_dead_letters(broker, storage, ids, broken_id, wait_s)
    for m in manifests.values():
        show_job(m, storage, console)
        if keep and m.master_playlist:
            download(storage, m.job_id, folder, console)
    show_dead_letters(dead, others, manifests, console)
    show_workers(manifests[good_id], console)
    return (
        manifests[good_id].state == "completed"
        and manifests[chunked_id].state == "completed"
        and manifests[broken_id].state == "failed"
        and any(d.job_id == broken_id for d in dead)
    )
