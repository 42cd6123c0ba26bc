"""``encodeq up`` and ``encodeq scale``: the whole system on one machine, and its size.

``up`` brings up S3 (MinIO, else the embedded server kept on disk), declares the broker's
topology, starts N supervised workers (``encodeq worker --concurrency 1`` each: N competing
consumers on every work queue) and serves the dashboard with their controls, until Ctrl-C, which
stops all of it warm. ``scale`` finds the running ``up`` through its data directory's ``up.json``
and asks its API, then waits until the broker reports N consumers on the encode queue.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from config.settings import get_settings
from console.demo.stack import (
    DemoError,
    check_tools,
    connect_broker,
    signals_ignored,
    sigterm_as_interrupt,
)
from console.learn.dashboard import LessonRunner
from console.terminal import err, fail, out
from console.up.control import ConsumerCount, UpControl
from console.up.faults import BrokerRestart
from console.up.instance import AlreadyRunning, Instance, UpState, default_data_dir, read_state
from console.up.stack import port_free, start_storage
from console.up.supervisor import Supervisor
from uploader.web.fleet import MAX_WORKERS

HOST = "127.0.0.1"
#: How long ``encodeq scale`` waits for the broker to see the workers it asked for.
SCALE_TIMEOUT_S = 120.0

DataDir = Annotated[
    Path | None,
    typer.Option(
        envvar="ENCODEQ_DATA_DIR",
        help="Where up keeps S3 objects, worker logs and up.json (default ~/.local/share/encodeq).",
    ),
]


def up(
    data_dir: DataDir = None,
    workers: Annotated[
        int | None,
        typer.Option(min=0, max=MAX_WORKERS, help="Workers to start (default: one per core)."),
    ] = None,
    port: Annotated[int, typer.Option(help="The dashboard's port, on 127.0.0.1.")] = 8000,
) -> None:
    """The whole stack on this machine until Ctrl-C: S3, N workers, the dashboard."""
    data_dir = (data_dir or default_data_dir()).resolve()
    count = workers if workers is not None else min(os.cpu_count() or 1, MAX_WORKERS)
    started = time.monotonic()
    console = Console(soft_wrap=True, highlight=False)
    try:
        check_tools()
        with ExitStack() as stack:
            instance = stack.enter_context(Instance(data_dir))
            if not port_free(port, HOST):
                raise DemoError(f"port {port} is taken: choose another with --port")
            configured = get_settings().s3_endpoint
            app, state = _bring_up(data_dir, count, port, stack, console)
            instance.publish(state)
            _guide(console, state, count, configured, time.monotonic() - started)
            _serve_until_interrupted(app, port)
            console.print("\nstopping: workers warm (tasks in hand finish or go back to the queue)")
            with signals_ignored():  # a second Ctrl-C must not leave workers behind
                stack.close()
            console.print("stopped.")
    except (AlreadyRunning, DemoError) as exc:
        fail(str(exc))


def _bring_up(
    data_dir: Path, count: int, port: int, stack: ExitStack, console: Console
) -> tuple[Any, UpState]:
    # Imported here: FastAPI and uvicorn take most of a second, and `encodeq` mounts this module.
    from uploader.web.server import ServeError, prepare

    console.print(f"encodeq up: data in {data_dir}")
    link = start_storage(data_dir, stack, console)
    settings = get_settings()
    with ExitStack() as once:
        connect_broker(settings, once, console)
    consumers = ConsumerCount(settings.broker_url)
    stack.callback(consumers.close)
    fleet = Supervisor(data_dir / "logs", dict(os.environ), consumers)
    stack.callback(fleet.stop)
    fleet.start(count)
    control = UpControl(fleet, link, BrokerRestart(settings.broker_url))
    lessons = LessonRunner()  # the page's lessons, each in a scratch vhost of its own
    stack.callback(lessons.stop)
    try:
        app, token, _ = prepare(HOST, settings, fleet=control, lessons=lessons)
    except ServeError as exc:
        raise DemoError(str(exc)) from None
    state = UpState(
        os.getpid(), f"http://{HOST}:{port}/", token, link.proxy.endpoint, str(data_dir)
    )
    return app, state


def _guide(console: Console, state: UpState, count: int, configured: str, took: float) -> None:
    console.print(
        f"\n[bold]encodeq is up[/] ({took:.1f}s). Open the dashboard:\n\n    {state.link()}\n\n"
        f"  {count} workers (w1..w{count}) start, each `encodeq worker --concurrency 1`;"
        f" logs in {state.data_dir}/logs\n"
        "  Upload a video on the page (or `encodeq upload FILE` in another terminal), watch the"
        " timeline, then break something with the page's buttons.\n"
        f"  `encodeq scale N{_data_dir_option(state.data_dir)}` changes the workers;"
        " `encodeq watch` and `encodeq dlq list` work"
        " from another terminal"
        + (
            ""
            if state.s3_endpoint == configured
            else f" with ENCODEQ_S3_ENDPOINT={state.s3_endpoint}"
        )
        + ".\n  Ctrl-C stops everything, warm: tasks in hand finish or go back to their queue.\n"
    )


def _data_dir_option(data_dir: str) -> str:
    return "" if Path(data_dir) == default_data_dir().resolve() else f" --data-dir {data_dir}"


def _serve_until_interrupted(app: Any, port: int) -> None:
    from uploader.web.server import run

    sigterm_as_interrupt()  # uvicorn re-raises the signal it stopped on: unwind, do not die
    with suppress(KeyboardInterrupt):
        run(app, HOST, port, log_level="warning")


def scale(
    workers: Annotated[int, typer.Argument(min=0, max=MAX_WORKERS, help="Workers to run.")],
    data_dir: DataDir = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker.")] = (
        SCALE_TIMEOUT_S
    ),
) -> None:
    """Scale the running `encodeq up` to N workers; returns once N consume the encode queue."""
    data_dir = (data_dir or default_data_dir()).resolve()
    state = read_state(data_dir)
    if state is None:
        fail(f"no encodeq up runs on {data_dir}: start one with `encodeq up`")
    started = time.monotonic()
    _api(state, "/api/fleet/scale", {"workers": workers})
    while True:
        fleet = _api(state, "/api/fleet")
        staying = [w for w in fleet["workers"] if w["state"] != "stopping"]
        running = [w for w in staying if w["state"] == "running"]
        counts = set((fleet.get("consumers_by_queue") or {None: None}).values())
        if len(staying) == len(running) == workers and counts == {workers}:
            break  # a worker finishing its task warm counts no more once it stopped consuming
        if time.monotonic() - started > timeout:
            seen = fleet["consumers"]
            broker = "the broker does not answer" if seen is None else f"the broker sees {seen}"
            fail(
                f"after {timeout:.0f}s: {len(running)} workers running, {broker} consumers"
                f" (logs in {data_dir}/logs)",
                code=1,
            )
        time.sleep(0.25)
    names = ", ".join(w["name"] for w in running) or "none"
    took = time.monotonic() - started
    out.print(f"{workers} workers consume the encode queue ({names}), after {took:.1f}s")


def _api(state: UpState, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        state.url.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {state.token}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        fail(f"encodeq up refused: {_message(exc)}")
    except ValueError:
        fail(f"encodeq up (pid {state.pid}) answered something that is not JSON at {state.url}")
    except OSError as exc:
        err.print(f"[dim]{state.url}: {exc}")
        fail(f"encodeq up (pid {state.pid}) does not answer at {state.url}")


def _message(exc: urllib.error.HTTPError) -> str:
    """The API's ``error.message``, else the HTTP reason (a proxy's page, a server restarting)."""
    try:
        return str(json.loads(exc.read())["error"]["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return f"HTTP {exc.code} {exc.reason}"
