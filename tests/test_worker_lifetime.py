"""ffmpeg dies with its task, and a dead task's scratch folder does not outlive the next start.

A pool process SIGKILLed (as the OOM killer or Celery's hard time limit does) or a whole worker
killed must take its ffmpeg with it at once, while the redelivered task encodes again; the dead
task's scratch folder is swept when a worker starts; and ffmpeg stops on its own clock when the
Python that started it cannot act. Real workers, real ffmpeg, processes found through /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support.commands import upload_job
from support.fleet import hold_ffmpeg, kill_processes_with, processes_with
from support.media import make_video
from support.storage import wait_for_job
from support.waiting import wait_for

from config.settings import get_settings
from worker import process, scratch

#: Threads per ffmpeg in these workers: one, so an encode lasts long enough to be caught (and
#: the machine's other tests keep their cores).
SLOW = {"ENCODEQ_FFMPEG_THREADS": "1"}


def _scratch_of(host: Path, job_id: str) -> str:
    """The prefix of every scratch folder of the job on a host (worker/scratch.py)."""
    return f"{host}/work/encodeq-{job_id}-"


def _private(host: Path) -> list[str]:
    """Files and folders under a host's work and cache folders that others could read."""
    loose = []
    for top in (host / "work", host / "cache"):
        for path in [top, *top.rglob("*")]:
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:  # the task moved on meanwhile
                continue
            if mode & 0o077:
                loose.append(f"{path} {oct(mode)}")
    return loose


def _dies_with(what: str, scratch: str) -> float:
    """Seconds until nothing runs any more with the scratch folder in its arguments."""
    started = time.monotonic()
    wait_for(lambda: not processes_with(scratch), 20, f"ffmpeg to die with {what}", 0.02)
    return time.monotonic() - started


@pytest.mark.slow
def test_ffmpeg_dies_with_its_task_and_a_restart_sweeps_what_the_task_left(
    workers, media_dir: Path, tmp_path: Path
) -> None:
    host = tmp_path / "host"
    env = {"ENCODEQ_WORK_DIR": str(host), **SLOW}
    worker = workers.start("life", env=env)
    source = make_video(media_dir / "lifetime-240p-40s.mp4", 426, 240, duration=40)

    # 1. The pool process is SIGKILLed mid-encode, as the OOM killer or the hard time limit do.
    rung_job = upload_job(source, "--mode", "per-rung")
    scratch = _scratch_of(host, rung_job)
    try:
        held = hold_ffmpeg(scratch)  # the rung's encode, stopped mid-file
        assert _private(host) == []  # every folder 0700, every file 0600
        [pool] = worker.pool_children()
        os.kill(pool, signal.SIGKILL)
        seconds = _dies_with("its pool process", scratch)
        print(f"ffmpeg {held} gone {seconds:.2f}s after its pool process was killed")
    finally:
        kill_processes_with(scratch)
    manifest = wait_for_job(rung_job, timeout=180)  # redelivered, encoded again, completed
    assert manifest.state == "completed", (manifest.error, worker.output()[-3000:])

    # 2. The whole worker (main process and pool) is SIGKILLed mid-chunk.
    chunk_job = upload_job(source, "--mode", "chunked")
    scratch = _scratch_of(host, chunk_job)
    try:
        hold_ffmpeg(scratch, also="split")  # a chunk's encode: one decode split to every rung
        worker.kill()  # its process group; ffmpeg runs in a session of its own
        seconds = _dies_with("its worker", scratch)
        print(f"ffmpeg gone {seconds:.2f}s after its worker was killed")
        assert list(host.glob(f"work/encodeq-{chunk_job}-*"))  # what the dead task left
    finally:
        kill_processes_with(scratch)

    # 3. A new worker on the host sweeps what dead tasks left, and completes the job.
    workers.start("life-again", env=env)
    manifest = wait_for_job(chunk_job, timeout=180)
    assert manifest.state == "completed", manifest.error
    for job_id in (rung_job, chunk_job):
        wait_for(lambda j=job_id: not list(host.glob(f"work/encodeq-{j}-*")), 30, "the sweep")


@pytest.mark.unit
def test_a_sweep_removes_only_the_scratch_folders_of_dead_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "work_dir", str(tmp_path / "host"))
    env = {**os.environ, "ENCODEQ_WORK_DIR": str(tmp_path / "host")}
    job_id = uuid.uuid4().hex
    script = (
        "import sys, time\n"
        "from worker import scratch\n"
        "with scratch.folder(sys.argv[1]) as folder:\n"
        "    (folder / 'out.ts').write_bytes(b'x')\n"
        "    print(folder, flush=True)\n"
        "    time.sleep(600)\n"
    )
    tasks = [
        subprocess.Popen([sys.executable, "-c", script, job_id], env=env, stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    try:
        folders = [Path(t.stdout.readline().decode().strip()) for t in tasks]
        assert all(f.is_dir() for f in folders)
        dead, alive = tasks[0], tasks[1:]
        dead.kill()
        dead.wait(timeout=30)
        assert scratch.busy(job_id)  # the live ones hold theirs
        assert scratch.sweep() == [folders[0]]
        assert not folders[0].exists() and all(f.is_dir() for f in folders[1:])
        for task in alive:
            task.kill()
            task.wait(timeout=30)
        assert not scratch.busy(job_id)
        assert sorted(scratch.sweep()) == sorted(folders[1:])
    finally:
        for task in tasks:
            task.kill()
            task.wait(timeout=30)


# --- the mechanism itself, without a worker ------------------------------------------------------
def _endless(token: str) -> list[str]:
    """An ffmpeg that never ends on its own (a live test source, read in real time)."""
    source = ["-re", "-f", "lavfi", "-i", "testsrc=s=32x32:r=5"]
    quiet = ["-hide_banner", "-nostdin", "-loglevel", "error"]
    return ["ffmpeg", *quiet, *source, "-metadata", f"title={token}", "-f", "null", "-"]


@pytest.mark.unit
def test_ffmpeg_dies_with_the_python_that_runs_it(tmp_path: Path) -> None:
    token = f"encodeq-lifetime-{uuid.uuid4().hex}"
    script = "import sys; from worker import process; process.run(sys.argv[1:], timeout_s=600)"
    python = subprocess.Popen([sys.executable, "-c", script, *_endless(token)])
    try:
        wait_for(lambda: processes_with(token, "ffmpeg"), 30, "ffmpeg to start")
        python.kill()
        python.wait(timeout=30)
        wait_for(lambda: not processes_with(token), 20, "ffmpeg to die with its Python", 0.02)
    finally:
        python.kill()
        kill_processes_with(token)


@pytest.mark.unit
def test_ffmpeg_stops_on_its_own_clock_when_python_cannot_act(tmp_path: Path) -> None:
    token = f"encodeq-lifetime-{uuid.uuid4().hex}"
    limit_s = 2.0
    argv = process.bounded_argv(_endless(token), limit_s)
    script = "import subprocess, sys; subprocess.run(sys.argv[1:], start_new_session=True)"
    python = subprocess.Popen([sys.executable, "-c", script, *argv])
    try:
        wait_for(lambda: processes_with(token, "ffmpeg"), 30, "ffmpeg to start")
        started = time.monotonic()
        python.send_signal(signal.SIGSTOP)  # Python can do nothing about it from here

        def stopped() -> bool:  # Python itself (stopped) still has the token in its arguments
            return not processes_with(token, "ffmpeg") and not processes_with(token, "timeout")

        wait_for(stopped, 60, "ffmpeg's own time limit", 0.05)
        print(f"ffmpeg stopped {time.monotonic() - started:.1f}s after Python (limit {limit_s}s)")
    finally:
        python.kill()
        python.wait(timeout=30)
        kill_processes_with(token)
