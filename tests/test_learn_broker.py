"""The broker lessons (ordering, request-reply, back-pressure, log): each run against a scratch
vhost of its own passes, with the broker's figures to show for it, and each fails once its
mechanism is broken through a knob. The seed is printed: a failure reruns with
``ENCODEQ_LEARN_SEED=<seed>``. Each run costs a vhost (about two seconds of rabbitmqctl), so the
broken runs of request-reply and log, and a second way to break ordering and back-pressure, are in
the slow tier.
"""

from __future__ import annotations

import json
import os
import random
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from kombu import Connection, Producer
from support.broker import scratch_vhost
from support.http import http_json
from support.waiting import wait_for

from config.settings import Settings
from console.learn.dashboard import LessonRunner
from console.learn.lesson import Counter, LessonContext, Outcome, SilentNarrator
from console.learn.scenarios import back_pressure, log, ordering, request_reply
from console.s3server import free_port
from core.events import publish_event
from uploader.web.app import create_app
from uploader.web.lessons import LessonError


@pytest.fixture
def seed() -> int:
    chosen = int(os.environ.get("ENCODEQ_LEARN_SEED") or random.SystemRandom().randrange(2**32))
    print(f"seed={chosen}")
    return chosen


@pytest.fixture
def vhost() -> Iterator[str]:
    with scratch_vhost("learn") as url:
        yield url


def lesson(module: object, url: str, seed: int, **knobs: Counter) -> Outcome:
    """Run one lesson's ``SCENARIO`` as the runner would, with ``knobs`` over its defaults."""
    scenario = module.SCENARIO  # type: ignore[attr-defined]
    assert set(knobs) <= set(scenario.knobs), "a knob the scenario does not read"
    context = LessonContext(
        broker_url=url,
        narrator=SilentNarrator(),
        rng=random.Random(seed),
        knobs={**scenario.knobs, **knobs},
    )
    outcome = scenario.run(context)
    print(scenario.name, knobs, outcome.verdict, outcome.counters)
    return outcome


def test_ordering_kept_per_partition_not_by_competing_consumers(vhost: str, seed: int) -> None:
    outcome = lesson(ordering, vhost, seed)
    counters = outcome.counters
    assert outcome.passed
    assert counters["competing_handled"] == counters["partitioned_handled"] == counters["events"]
    assert counters["competing_out_of_order"] > 0
    assert counters["partitioned_out_of_order"] == 0
    assert counters["jobs_split_across_partitions"] == 0


@pytest.mark.parametrize(
    "knobs",
    [
        pytest.param({"consumers_per_partition": 2}, id="two-per-partition"),
        pytest.param({"hash_on": "message"}, id="hash-per-message", marks=pytest.mark.slow),
    ],
)
def test_ordering_broken_reorders_a_jobs_events(
    vhost: str, seed: int, knobs: dict[str, Counter]
) -> None:
    outcome = lesson(ordering, vhost, seed, **knobs)
    assert not outcome.passed
    assert outcome.counters["partitioned_out_of_order"] > 0


@pytest.mark.unit
def test_ordering_never_enables_a_plugin_on_another_machine() -> None:
    refusal = ordering._plugin_refusal("amqp://u:p@rabbit.example:5672/v;amqp://u:p@other:5672/v")
    assert refusal is not None and "rabbit.example" in refusal


def test_request_reply_answers_times_out_and_drops_a_stale_reply(vhost: str, seed: int) -> None:
    outcome = lesson(request_reply, vhost, seed)
    counters = outcome.counters
    assert outcome.passed
    assert counters["answered_correctly"] == counters["questions"] - 1
    assert counters["timeouts"] == 1
    assert counters["waiting_while_responder_down"] == 1
    assert counters["stale_replies_dropped"] == 1
    assert counters["wrong_answers"] == 0


@pytest.mark.slow  # the default suite's time budget
def test_request_reply_without_correlation_accepts_a_stale_reply(vhost: str, seed: int) -> None:
    outcome = lesson(request_reply, vhost, seed, correlate=False)
    assert not outcome.passed
    assert outcome.counters["wrong_answers"] == 1
    assert outcome.counters["stale_replies_dropped"] == 0


def test_back_pressure_slows_the_producer_and_loses_nothing(vhost: str, seed: int) -> None:
    outcome = lesson(back_pressure, vhost, seed)
    counters = outcome.counters
    assert outcome.passed
    assert counters["consumed"] == counters["published"]
    assert counters["lost"] == counters["duplicates"] == 0
    assert counters["nacks"] > 0
    assert counters["publish_attempts"] == counters["published"] + counters["nacks"]
    assert counters["deepest_at_nack"] <= counters["queue_bound"]


@pytest.mark.parametrize(
    "knobs",
    [
        pytest.param({"wait_for_confirms": False}, id="no-confirms"),
        pytest.param({"overflow": "drop-head"}, id="drop-head", marks=pytest.mark.slow),
    ],
)
def test_back_pressure_broken_loses_messages(
    vhost: str, seed: int, knobs: dict[str, Counter]
) -> None:
    outcome = lesson(back_pressure, vhost, seed, **knobs)
    assert not outcome.passed
    assert outcome.counters["lost"] > 0
    assert outcome.counters["nacks"] == 0


def test_log_replays_history_the_work_queue_forgot(vhost: str, seed: int) -> None:
    outcome = lesson(log, vhost, seed)
    counters = outcome.counters
    assert outcome.passed
    assert counters["work_queue_consumed"] == counters["events_published"]
    assert counters["work_queue_left"] == counters["work_queue_second_consumer"] == 0
    assert counters["stream_replayed"] == counters["events_published"]
    assert counters["first_offset"] == 0
    assert counters["jobs_rebuilt_correctly"] == counters["jobs"]
    assert counters["read_model_matches"] is True


@pytest.mark.slow  # the default suite's time budget
def test_log_late_subscriber_at_next_sees_no_history(vhost: str, seed: int) -> None:
    outcome = lesson(log, vhost, seed, offset="next")
    assert not outcome.passed
    assert outcome.counters["stream_replayed"] == 0
    assert outcome.counters["jobs_rebuilt_correctly"] == 0


# --- the lessons on the dashboard (encodeq up): the HTTP API and its runner --------------------

TOKEN = "learn-token-" + os.urandom(4).hex()
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture
def lessons_api() -> Iterator[str]:
    """The app as ``encodeq up`` builds it, with the real lesson runner (scratch vhosts through
    console/learn/scratch.py), served by uvicorn on a thread; yields its base URL."""
    with served(LessonRunner()) as base:
        yield base


@contextmanager
def served(lessons: LessonRunner) -> Iterator[str]:
    """The dashboard's app with ``lessons``, served by uvicorn on a thread: its base URL."""
    app = create_app(Settings(api_token=TOKEN), lessons=lessons)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="learn-api", daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "the lessons API to listen")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def finished_run(base: str, name: str, knobs: dict[str, Counter]) -> dict[str, Any]:
    """Start a lesson through the API and poll its run until it is no longer running."""
    body = json.dumps({"knobs": knobs}).encode()
    status, started = http_json("POST", f"{base}/api/lessons/{name}", body=body, headers=AUTH)
    assert status == 202, started

    def finished() -> dict[str, Any] | None:
        _, run = http_json("GET", f"{base}/api/lessons/runs/{started['id']}", headers=AUTH)
        return run if run["state"] != "running" else None

    return wait_for(finished, 120, f"the {name} lesson to finish")


def test_lessons_through_the_dashboard_api(lessons_api: str) -> None:
    base = lessons_api
    assert http_json("GET", f"{base}/api/lessons")[0] == 401
    status, listed = http_json("GET", f"{base}/api/lessons", headers=AUTH)
    assert status == 200
    assert {"ordering", "request-reply", "back-pressure", "log"} <= {
        lesson["name"] for lesson in listed["lessons"]
    }
    run = finished_run(base, "log", {})
    assert run["verdict"] == "pass", run
    assert run["counters"]["stream_replayed"] == run["counters"]["events_published"]
    kinds = [step["kind"] for step in run["steps"]]
    assert "step" in kinds and "table" in kinds
    assert run["lesson"] and run["see"]
    broken = finished_run(base, "log", {"offset": "next"})
    assert broken["verdict"] == "fail" and broken["counters"]["stream_replayed"] == 0
    for path, body, expected in [
        ("/api/lessons/log", {"knobs": {"no_such_knob": 1}}, (400, "unknown_knob")),
        ("/api/lessons/no-such-lesson", {}, (404, "no_such_lesson")),
    ]:
        status, doc = http_json("POST", base + path, body=json.dumps(body).encode(), headers=AUTH)
        assert (status, doc["error"]["code"]) == expected, doc
    status, doc = http_json("GET", f"{base}/api/lessons/runs/0123456789ab", headers=AUTH)
    assert (status, doc["error"]["code"]) == (404, "no_such_run")


def test_a_lessons_task_runs_are_on_the_dashboards_timeline(vhost: str) -> None:
    """A lesson's workers run in its scratch vhost, whose events the page's subscription never
    sees: their task runs are relayed to the timeline (``GET /api/timeline``), tagged with the
    lesson (the lesson's job event among them is no run)."""
    served_at: dict[str, str] = {}

    def timeline() -> list[dict[str, Any]]:
        return http_json("GET", f"{served_at['base']}/api/timeline", headers=AUTH)[1]["runs"]

    def workers_run(scenario: Any, narrator: Any, seed: int, knobs: Any, watch: Any = None):
        assert watch is not None, "the dashboard's runner relays no task events"
        run = {"task_id": uuid.uuid4().hex, "task": "encode", "worker": "learn1@host", "pid": 7}
        with watch(vhost), Connection(vhost) as connection:  # a lesson's worker, in its vhost
            producer = Producer(connection)
            publish_event(producer, "task.started", **run, job_id="scratch-job")
            publish_event(producer, "job.queued", job_id="scratch-job", filename="a.mp4")
            publish_event(producer, "task.finished", **run, outcome="ok", runtime_s=0.5)
            wait_for(
                lambda: any(r["outcome"] == "ok" for r in timeline()), 30, "the relayed run's end"
            )
        return Outcome(passed=True, counters={"runs": 1}, lesson="relayed", see="here")

    with served(LessonRunner(runner=workers_run)) as base:
        served_at["base"] = base
        done = finished_run(base, "log", {})
        assert done["state"] == "done", done
        runs = timeline()
    assert [(r["worker"], r["lesson"], r["outcome"], r["job_id"]) for r in runs] == [
        ("learn1@host", "log", "ok", "scratch-job")
    ]


@pytest.mark.unit
def test_one_lesson_at_a_time_on_the_dashboard() -> None:
    """A second start while one runs is refused (409); the first still finishes."""
    release = threading.Event()

    def held(scenario: Any, narrator: Any, seed: int, knobs: Any, watch: Any = None) -> Outcome:
        narrator.step("holding")
        release.wait(30)
        return Outcome(passed=True, counters={"n": 1}, lesson="kept", see="here")

    runner = LessonRunner(runner=held)
    first = runner.start("log", {})
    with pytest.raises(LessonError) as refused:
        runner.start("ordering", {})
    assert refused.value.status == 409
    release.set()
    runner.stop()
    done = runner.state(first["id"])
    assert done["state"] == "done" and done["verdict"] == "pass" and done["counters"] == {"n": 1}
    assert [s["text"] for s in done["steps"] if s["kind"] == "step"][-1] == "holding"
