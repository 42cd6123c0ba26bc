"""``encodeq demo``: the whole pipeline on this machine, started and stopped by one command.

A new user has RabbitMQ and ffmpeg and nothing else. The demo supplies the rest for the length of
the run (an embedded S3 server when none answers, two ``encodeq worker`` processes, a sample video
and a broken file), drives them through the same code paths a user does (``submit``, ``follow``),
then explains the outcome: where the renditions are, and what the dead-letter queue holds and why.
Everything it starts is stopped again, on success, on errors and on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kombu import Connection
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from config.settings import get_settings
from config.topology import DEAD_LETTER_QUEUE_NAME, ENCODE_QUEUE_NAME, declare_topology
from console.s3server import EmbeddedS3, answers
from core.failures import FailureRecord, load_failure
from core.layout import RENDITIONS, job_prefix
from core.manifest import JobStore, Manifest
from core.monitor import queue_depths
from core.storage import Storage, parse_uri

DEMO_DIR = Path("encodeq-demo")
SAMPLE_NAME = "sample 720p.mp4"
BROKEN_NAME = "broken.mp4"
#: 1280x720 so the ladder gives 720p, 480p, 360p and 240p; long enough to watch the bars move.
SAMPLE_SIZE, SAMPLE_FPS, SAMPLE_SECONDS = "1280x720", 25, 12
#: The demo's workers cut chunks this long (the default, 30 s, would leave the 12 s sample whole),
#: so the same sample also shows chunked mode: three chunks, encoded in parallel, then joined.
DEMO_CHUNK_SECONDS = 4
#: Fixed seed: the "broken" file is the same bytes every run, so its outcome is reproducible.
BROKEN_SEED, BROKEN_BYTES = 20240601, 256 * 1024

WORKER_START_TIMEOUT_S = 90.0
FOLLOW_TIMEOUT_S = 600.0
#: How long the dead letter of a failed job may lag behind its manifest.
DLQ_WAIT_S = 20.0
#: Warm shutdown lets a worker finish the task in hand; after this it is killed (process group).
WORKER_STOP_TIMEOUT_S = 20.0
#: Peeking holds every DLQ message unacked at once; a DLQ bigger than this is sampled.


class DemoError(Exception):
    """Something the demo needs is missing or broke; the message tells the user what."""


@dataclass
class DemoWorker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class DeadLetter:
    """One DLQ message of this demo: where it died (x-death) and why (the failure record)."""

    job_id: str
    task: str
    task_id: str
    reason: str
    queue: str
    record: FailureRecord | None


def run_demo(workers: int, keep: bool, console: Console) -> int:
    """Run the demo; 0 when the sample completed and the broken file was failed and dead-lettered.

    Resources are registered on an ExitStack as they are started, so whatever happens after
    (an error, Ctrl-C, SIGTERM) they are stopped in reverse order: workers, then S3, then files.
    """
    if workers < 1:
        console.print("[red]--workers must be at least 1")
        return 2
    previous_sigterm = _sigterm_as_interrupt()
    ok = False
    try:
        with ExitStack() as stack:
            folder = _demo_folder(keep, stack, lambda: ok, console)
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
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise DemoError(f"{tool} is not installed (Debian/Ubuntu: apt-get install ffmpeg)")

    _step(console, 1, "object storage")
    embedded = _ensure_storage(stack, console)
    settings = get_settings()  # final from here on: workers and the Celery app see the same
    storage = Storage(settings)
    jobs = JobStore(storage)

    _step(console, 2, "broker and workers")
    broker = stack.enter_context(Connection(settings.broker_url, connect_timeout=5))
    try:
        broker.ensure_connection(max_retries=1)
    except Exception as exc:
        raise DemoError(f"RabbitMQ does not answer at {broker.as_uri()}: {exc}") from None
    declare_topology(broker)  # before anything publishes or counts consumers
    console.print(f"  RabbitMQ at {escape(broker.as_uri())}, queues declared", highlight=False)
    already = _consumers(broker)
    if already:
        console.print(
            f"  [yellow]{already} other worker(s) already consume {ENCODE_QUEUE_NAME} here; they"
            " will compete for the demo's tasks"
            + (" but cannot reach its embedded S3" if embedded else "")
        )
    fleet = _start_workers(workers, folder, stack, console)

    _step(console, 3, "sample files")
    sample, broken = folder / SAMPLE_NAME, folder / BROKEN_NAME
    with console.status(f"making a {SAMPLE_SECONDS}s {SAMPLE_SIZE} test video with ffmpeg"):
        _make_sample(sample)
    broken.write_bytes(random.Random(BROKEN_SEED).randbytes(BROKEN_BYTES))
    console.print(f"  {escape(str(sample))} ({decimal(sample.stat().st_size)})", highlight=False)
    console.print(
        f"  {escape(str(broken))} ({decimal(BROKEN_BYTES)} of random bytes: not a video)",
        highlight=False,
    )
    with console.status(f"waiting for {workers} worker(s) to consume {ENCODE_QUEUE_NAME}"):
        _wait_for_consumers(broker, already + workers, fleet)
    console.print(f"  {workers} worker(s) consuming", highlight=False)

    _step(console, 4, "upload")
    from console.cli import _UploadBar  # the upload command's bar: same look as `encodeq upload`
    from console.follow import follow  # imports the Celery app: only now that the env is final
    from uploader.submit import submit

    submitted: list[Manifest] = []
    with Progress(
        "{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console
    ) as bars:
        # the sample twice: one task per rung, and one task per chunk doing every rung
        for path, mode in ((sample, "per-rung"), (sample, "chunked"), (broken, None)):
            bar = _UploadBar(bars, f"  upload {path.name}" + (f" ({mode})" if mode else ""))
            submitted.append(submit(path, storage, progress=bar, mode=mode))
    for m in submitted:
        mode = f" ({m.mode})" if m.mode else ""
        console.print(f"  {escape(m.source.filename)}{mode} -> job {m.job_id}", highlight=False)
    good_id, chunked_id, broken_id = (m.job_id for m in submitted)

    _step(console, 5, f"encoding on {workers} competing worker(s), live")
    ids = [m.job_id for m in submitted]
    final = follow(jobs, ids, FOLLOW_TIMEOUT_S, console=console)
    manifests = {i: final.get(i) or jobs.load(i) or m for i, m in zip(ids, submitted, strict=True)}
    if len(final) < len(ids):
        console.print(f"[yellow]  gave up following after {FOLLOW_TIMEOUT_S:.0f}s")

    _step(console, 6, "results")
    with console.status("reading the dead-letter queue"):
        # Only a failed job has a dead letter on its way; otherwise one look is enough.
        wait_s = DLQ_WAIT_S if manifests[broken_id].state == "failed" else 0.0
        dead, others = _wait_for_dead_letters(broker, storage, ids, broken_id, wait_s)
    for m in manifests.values():
        _show_job(m, storage, console)
        if keep and m.master_playlist:
            _download(storage, m.job_id, folder, console)
    _show_dead_letters(dead, others, manifests, console)
    _show_workers(manifests[good_id], console)
    if embedded:
        console.print(
            "  [dim]the embedded S3 server stops with the demo: its URLs and objects go too;"
            " run MinIO (docker compose up) to keep them"
        )

    ok = (
        manifests[good_id].state == "completed"
        and manifests[chunked_id].state == "completed"
        and manifests[broken_id].state == "failed"
        and any(d.job_id == broken_id for d in dead)
    )
    if ok:
        console.print(
            "\n[bold green]demo OK[/]: the sample completed in both modes; the broken file failed"
            " and its message was dead-lettered"
        )
    else:
        console.print(
            f"\n[bold red]demo did not go as expected[/] (worker logs in {escape(str(folder))})"
        )
    return ok


# --- steps ---------------------------------------------------------------------------------------
def _step(console: Console, number: int, title: str) -> None:
    console.print(f"\n[bold cyan]{number}/6[/] [bold]{title}[/]")


def _demo_folder(
    keep: bool, stack: ExitStack, succeeded: Callable[[], bool], console: Console
) -> Path:
    """./encodeq-demo with --keep, else a temp folder removed at the end (kept when a run with
    workers failed, so their logs can be read)."""
    if keep:
        DEMO_DIR.mkdir(exist_ok=True)
        return DEMO_DIR.resolve()
    folder = Path(tempfile.mkdtemp(prefix="encodeq-demo-"))

    def cleanup() -> None:
        if succeeded() or not any(folder.glob("worker-*.log")):
            shutil.rmtree(folder, ignore_errors=True)
        else:
            console.print(f"[dim]demo files and worker logs kept in {folder}", highlight=False)

    stack.callback(cleanup)
    return folder


def _ensure_storage(stack: ExitStack, console: Console) -> bool:
    """Use the configured S3 endpoint if it answers; else start an embedded one for this run.

    The endpoint goes into ``os.environ`` (the workers inherit it) and the settings cache is
    cleared, before anything imports the Celery app or builds a Storage. Returns True if embedded.
    """
    endpoint = get_settings().s3_endpoint
    if answers(endpoint):
        console.print(f"  using the S3 server at {escape(endpoint)}", highlight=False)
        return False
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request log
    server = EmbeddedS3()
    new_endpoint = server.start()
    stack.callback(server.stop)
    os.environ["ENCODEQ_S3_ENDPOINT"] = new_endpoint
    get_settings.cache_clear()
    console.print(
        f"  nothing answers at {escape(endpoint)}: started an embedded S3 server at"
        f" {new_endpoint} for this run",
        highlight=False,
        soft_wrap=True,
    )
    return True


def _start_workers(
    count: int, folder: Path, stack: ExitStack, console: Console
) -> list[DemoWorker]:
    """``encodeq worker --concurrency 1`` processes, each in its own process group (so stopping
    one reaches its pool and any ffmpeg), logging to files in the demo folder."""
    fleet: list[DemoWorker] = []
    stack.callback(_stop_workers, fleet, console)  # registered first: stops even a partial fleet
    host = socket.gethostname()
    for index in range(1, count + 1):
        name = f"demo-{index}"
        log = folder / f"worker-{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "console.cli",
                    "worker",
                    "--concurrency",
                    "1",
                    "--hostname",
                    f"{name}@%h",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ENCODEQ_CHUNK_SECONDS": str(DEMO_CHUNK_SECONDS)},
                start_new_session=True,
            )
        fleet.append(DemoWorker(name, proc, log))
        console.print(
            f"  started worker {name}@{host} (pid {proc.pid}), log {escape(str(log))}",
            highlight=False,
            soft_wrap=True,
        )
    return fleet


def _stop_workers(fleet: list[DemoWorker], console: Console) -> None:
    """SIGTERM (warm shutdown), then SIGKILL to the whole process group after a bound."""
    running = [w for w in fleet if w.proc.poll() is None]
    if not running:
        return
    with _signals_ignored():  # a second Ctrl-C must not leave workers behind
        console.print(f"\n[dim]stopping {len(running)} worker(s)")
        for w in running:
            w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for w in running:
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                console.print(f"[yellow]  {w.name} did not stop in time: killing it")
            # Anything left in its group (a pool child, an ffmpeg) goes too.
            with suppress(ProcessLookupError):
                os.killpg(w.proc.pid, signal.SIGKILL)
            w.proc.wait(timeout=30)


def _make_sample(path: Path) -> None:
    video = f"testsrc2=size={SAMPLE_SIZE}:rate={SAMPLE_FPS}:duration={SAMPLE_SECONDS}"
    tone = f"sine=frequency=440:sample_rate=48000:duration={SAMPLE_SECONDS}"
    argv = [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-y",
        "-f",
        "lavfi",
        "-i",
        video,
        "-f",
        "lavfi",
        "-i",
        tone,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        str(2 * SAMPLE_FPS),
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-shortest",
        "-movflags",
        "+faststart",
        str(path),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise DemoError(f"ffmpeg could not make the sample video: {done.stderr.strip()[-500:]}")


# --- broker views --------------------------------------------------------------------------------
def _consumers(broker: Connection) -> int:
    return queue_depths(broker, (ENCODE_QUEUE_NAME,))[0].consumers or 0


def _wait_for_consumers(broker: Connection, expected: int, fleet: list[DemoWorker]) -> None:
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while _consumers(broker) < expected:
        for w in fleet:
            if w.proc.poll() is not None:
                raise DemoError(f"worker {w.name} exited at start:\n{w.log_tail()}")
        if time.monotonic() > deadline:
            raise DemoError(f"workers did not consume within {WORKER_START_TIMEOUT_S:.0f}s")
        time.sleep(0.25)


def _dead_letters(
    broker: Connection, storage: Storage, job_ids: list[str]
) -> tuple[list[DeadLetter], int]:
    """This demo's dead letters, and how many other messages the DLQ holds. Looked at with the
    DLQ inspector's own peek, which leaves every message in place and in order."""
    from dlq_inspector.browse import peek

    messages = peek(broker, DEAD_LETTER_QUEUE_NAME)
    mine = [
        DeadLetter(
            job_id=m.job_id,
            task=m.task or "?",
            task_id=m.key,
            reason=m.reason,
            queue=m.died_in,
            record=load_failure(storage, m.key),
        )
        for m in messages
        if m.job_id in job_ids
    ]
    return mine, len(messages) - len(mine)


def _wait_for_dead_letters(
    broker: Connection, storage: Storage, job_ids: list[str], expected_job: str, wait_s: float
) -> tuple[list[DeadLetter], int]:
    """The job is marked failed just before its message is rejected: give the dead letter time."""
    deadline = time.monotonic() + wait_s
    while True:
        dead, others = _dead_letters(broker, storage, job_ids)
        if any(d.job_id == expected_job for d in dead) or time.monotonic() > deadline:
            return dead, others
        time.sleep(0.3)


# --- the summary ---------------------------------------------------------------------------------
def _show_job(m: Manifest, storage: Storage, console: Console) -> None:
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
        checked = [r for r in m.renditions if r.seam_check is not None]
        passed = sum(1 for r in checked if r.seam_check and r.seam_check.passed)
        console.print(
            f"  chunked: {m.chunks.count} chunks of {m.chunks.seconds}s ({m.chunks.split} split),"
            f" audio once, seam check passed on {passed}/{len(m.renditions)} renditions",
            highlight=False,
        )
    if m.renditions:
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
        console.print(table)
    if m.master_playlist:
        _, key = parse_uri(m.master_playlist)
        console.print(f"  master playlist: {m.master_playlist}", highlight=False, soft_wrap=True)
        url = storage.presigned_url(RENDITIONS, key)
        console.print(f"  presigned URL (1 h): {url}", highlight=False, soft_wrap=True)


def _download(storage: Storage, job_id: str, folder: Path, console: Console) -> None:
    """--keep: copy the renditions next to the sample, playable after the demo's S3 is gone."""
    target = folder / "renditions"
    for key in storage.list_keys(RENDITIONS, job_prefix(job_id)):
        storage.download(RENDITIONS, key, target / key)
    master = target / job_id / "master.m3u8"
    console.print(f"  downloaded: ffplay '{escape(str(master))}'", highlight=False, soft_wrap=True)


def _show_dead_letters(
    dead: list[DeadLetter], others: int, manifests: dict[str, Manifest], console: Console
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


def _show_workers(m: Manifest, console: Console) -> None:
    """Which worker encoded how many rungs: competing consumers, visibly."""
    counts: dict[str, int] = {}
    for r in m.renditions:
        if r.worker:
            counts[r.worker] = counts.get(r.worker, 0) + 1
    if counts:
        shares = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
        console.print(f"\n  renditions per worker: {shares}", highlight=False)


# --- signals -------------------------------------------------------------------------------------
def _sigterm_as_interrupt() -> Any:
    """Make SIGTERM unwind like Ctrl-C, so the finally blocks stop the workers and the S3 server.
    Returns the previous handler (None when not on the main thread, where it cannot be set)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt) or signal.SIG_DFL
    except ValueError:
        return None


@contextmanager
def _signals_ignored() -> Iterator[None]:
    try:
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
