"""Run ffmpeg/ffprobe on untrusted input without letting it hang, flood or outlive us.

argv lists only (no shell), its own process group (killed whole on timeout, cancel or a Celery soft
time limit), stderr drained on a thread into a bounded tail (a chatty ffmpeg cannot block on a full
pipe), and ``-progress pipe:1`` blocks parsed from stdout as they arrive. Every program runs under
``bounded_argv``: it dies with the process that started it and within a wall clock of its own, so
a pool process killed outright (SIGKILL, the OOM killer, Celery's hard time limit) leaves nothing
running.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from core.errors import EncodeError

STDERR_TAIL_LINES = 40


class ProcessFailed(Exception):
    def __init__(self, returncode: int, stderr_tail: str) -> None:
        super().__init__(returncode, stderr_tail)
        self.returncode = returncode
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        last = self.stderr_tail.strip().splitlines()[-1:] or ["(no output)"]
        return f"exit {self.returncode}: {last[0]}"


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


#: The program's own wall clock sits this far above ``run``'s timer, which normally fires first
#: and says why (``timeout``); the program's own limit is the backstop when Python cannot.
OWN_LIMIT_MARGIN_S = 5.0
#: util-linux ``setpriv``: PR_SET_PDEATHSIG, then exec. The kernel sends SIGKILL when the *thread*
#: that forked it exits; ``run`` is called on the pool process's main thread (billiard runs a
#: task there), so that is when the pool process dies. Not inherited by fork, kept across exec.
_DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")


def bounded_argv(argv: Sequence[str], limit_s: float) -> list[str]:
    """``argv`` wrapped so it dies with the thread that starts it and after ``limit_s`` seconds of
    wall clock whatever happens to Python.

    ``setpriv --pdeathsig KILL timeout --signal=KILL LIMIT setpriv --pdeathsig KILL PROGRAM``:
    coreutils ``timeout`` holds the wall clock (ffmpeg's ``-timelimit`` counts CPU seconds, so a
    stalled or stopped ffmpeg would never reach it); each of the two gets the parent-death signal
    (it is not inherited across ``timeout``'s fork): the task's process dies, so ``timeout`` is
    killed, and its death kills the program. No ``preexec_fn``: running Python between fork and
    exec is unsafe in a process with threads (segment uploads, stderr drains), and well-kept tools
    do the same. All stay in the caller's new process group, so ``_kill_group`` still kills all.
    """
    clock = ("timeout", "--signal=KILL", f"{limit_s:.3f}")
    return [*_DIE_WITH_PARENT, *clock, *_DIE_WITH_PARENT, *argv]


def run(
    argv: Sequence[str],
    timeout_s: float,
    on_progress: Callable[[dict[str, str]], None] | None = None,
    watch_dir: Path | None = None,
    max_output_bytes: int | None = None,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Run ``argv``; return its stdout (when not a progress stream). Raises ProcessFailed on a
    non-zero exit and EncodeError(``timeout``/``output_too_large``) when a limit stops it.
    ``on_line``: each stdout line as it arrives, none kept (a long listing is never held whole);
    whatever it raises stops the program and propagates."""
    proc = _start(argv, timeout_s)
    stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    drain = threading.Thread(target=lambda: stderr_tail.extend(proc.stderr), daemon=True)
    drain.start()
    stopped_for: list[EncodeError] = []

    def stop(reason: EncodeError) -> None:
        stopped_for.append(reason)
        _kill_group(proc)

    deadline = threading.Timer(
        timeout_s, stop, args=(EncodeError("timeout", f"ffmpeg ran past {timeout_s:.0f}s"),)
    )
    deadline.daemon = True
    deadline.start()

    def output_too_large() -> bool:
        return bool(watch_dir and max_output_bytes and _dir_size(watch_dir) > max_output_bytes)

    too_large = EncodeError("output_too_large", f"output exceeded {max_output_bytes} bytes")

    def check_size() -> None:  # at every progress report (twice a second)
        if output_too_large():
            stop(too_large)

    out: list[str] = []
    try:
        out = _read_stdout(proc, on_line, on_progress, check_size)
        proc.wait()
        if not stopped_for and output_too_large():  # finished between two reports
            stopped_for.append(too_large)
    finally:
        deadline.cancel()
        if proc.poll() is None:  # interrupted (soft time limit, cancel): leave nothing running
            _kill_group(proc)
            proc.wait()
        drain.join(timeout=5)
    if stopped_for:
        raise stopped_for[0]
    if proc.returncode != 0:
        raise ProcessFailed(proc.returncode, "".join(stderr_tail))
    return "".join(out)


def _start(argv: Sequence[str], timeout_s: float) -> subprocess.Popen[str]:
    """In its own process group (killed whole), no stdin, under its own time limit too, with
    this process's CPU share (its lane's niceness)."""
    proc = subprocess.Popen(
        bounded_argv(argv, timeout_s + OWN_LIMIT_MARGIN_S),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        text=True,
        errors="replace",
    )
    _autogroup_nice(proc.pid, os.getpriority(os.PRIO_PROCESS, 0))
    return proc


def _autogroup_nice(pid: int, nice: int) -> None:
    """Give the program's session the niceness the program inherited.

    A new session is an autogroup of its own where the kernel has autogroups on (most do):
    CFS shares the CPU between autogroups first, by the autogroup's nice, and only then between
    processes within one by theirs. An ffmpeg at nice 19 in a session of its own would otherwise
    weigh as much as any other session's (measured on this machine: 277 to 320 CPU ticks
    against a nice 0 loop on one core; with its autogroup at 19, 11 to 590). Best effort: no
    autogroups, nothing to do; the kernel takes one such write per 100 ms from a non-root user.
    """
    if nice <= 0:
        return
    for _ in range(5):
        try:
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
            return
        except BlockingIOError:  # EAGAIN: another write within 100 ms
            threading.Event().wait(0.11)
        except OSError:  # no autogroups here, or the program is gone already
            return


def _read_stdout(
    proc: subprocess.Popen[str],
    on_line: Callable[[str], None] | None,
    on_progress: Callable[[dict[str, str]], None] | None,
    after_progress: Callable[[], None],
) -> list[str]:
    """Read the program's stdout to its end: each line to ``on_line``, else each ``-progress``
    block to ``on_progress`` (then ``after_progress``), else kept and returned."""
    out: list[str] = []
    block: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if on_line is not None:
            on_line(line)
            continue
        if on_progress is None:
            out.append(line)
            continue
        key, _, value = line.strip().partition("=")
        block[key] = value
        if key != "progress":
            continue
        on_progress(block)
        block = {}
        after_progress()
    return out


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
