"""``encodeq learn``: the lessons listed, a name that is none refused, an unreachable broker told
plainly; each worker lesson run for real, its verdict from the broker's and S3's counts, and each
one failed by breaking its mechanism with a knob (the verdict follows the counts, not a script).
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kombu import Connection
from rich.console import Console
from support.commands import encodeq
from typer.testing import CliRunner

from console.cli import app
from console.learn.broker_admin import ManagementApi, QueueCounts
from console.learn.catalog import find
from console.learn.command import parse_knob
from console.learn.lesson import Outcome, SilentNarrator
from console.learn.narration import RichNarrator
from console.learn.scratch import run_scenario, scratch_space, scratch_urls, settings_of
from core.storage import Storage

MINE = ("consumers-vs-pubsub", "delivery", "poison")


def seeded() -> int:
    seed = random.randrange(2**31)
    print(f"seed {seed}")
    return seed


# --- the command ---------------------------------------------------------------------------------
@pytest.mark.unit
def test_learn_lists_every_lesson() -> None:
    result = CliRunner().invoke(app, ["learn"])
    assert result.exit_code == 0, result.output
    for name in MINE:
        assert name in result.output
    listed = json.loads(CliRunner().invoke(app, ["learn", "--json"]).stdout)
    names = [s["name"] for s in listed["scenarios"]]
    assert set(MINE) <= set(names)
    assert all({"name", "title", "summary"} <= set(s) for s in listed["scenarios"])
    delivery = next(s for s in listed["scenarios"] if s["name"] == "delivery")
    assert delivery["knobs"] == {"late_ack": True, "idempotent_keys": True}


@pytest.mark.unit
def test_an_unknown_lesson_exits_2_and_names_the_lessons() -> None:
    result = CliRunner().invoke(app, ["learn", "no-such-lesson"])
    assert result.exit_code == 2
    assert "no lesson 'no-such-lesson'" in result.output
    assert all(name in result.output for name in MINE)


@pytest.mark.unit
def test_an_unknown_knob_exits_2_before_touching_the_broker() -> None:
    result = CliRunner().invoke(app, ["learn", "delivery", "--json", "--knob", "late_acks=false"])
    assert result.exit_code == 2
    assert "no knob late_acks" in result.output and "late_ack" in result.output


@pytest.mark.unit
def test_an_unreachable_broker_is_a_sentence_and_exit_2() -> None:
    dead = "amqp://guest:guest@127.0.0.1:1//"
    result = encodeq("learn", "poison", "--json", env={"ENCODEQ_BROKER_URL": dead}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "RabbitMQ does not answer at amqp://guest:**@127.0.0.1:1//" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.unit
def test_knob_values_and_failover_urls() -> None:
    assert parse_knob("late_ack=false") == ("late_ack", False)
    assert parse_knob("workers=3") == ("workers", 3)
    assert parse_knob("name=text") == ("name", "text")
    urls = "amqp://u:p@a:5672/one?heartbeat=5;amqp://u:p@b:5673/one"
    assert scratch_urls(urls, "encodeq-learn-x") == (
        "amqp://u:p@a:5672/encodeq-learn-x?heartbeat=5;amqp://u:p@b:5673/encodeq-learn-x"
    )


@pytest.mark.unit
def test_the_narrator_tells_steps_tables_and_the_ending() -> None:
    console = Console(record=True, width=100)
    narrator = RichNarrator(console)
    narrator.step("a worker starts")
    narrator.table("side by side", {"early": {"runs": 1}, "late": {"runs": 2, "same": True}})
    narrator.ending(Outcome(False, {"runs": 1}, "Keep this.", "core/celery_app.py"))
    text = console.export_text()
    assert "• a worker starts" in text
    runs = next(line for line in text.splitlines() if "runs" in line)
    assert runs.split("│")[2:4] == ["     1 ", "    2 "]  # one row, a column each
    assert "yes" in text and "verdict: fail" in text and "see core/celery_app.py" in text


class FakeManagement(BaseHTTPRequestHandler):
    """The management API's few routes the scratch space uses, recording each request."""

    calls: list[tuple[str, str, Any]] = []

    def _answer(self, document: Any = None) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        sent = json.loads(self.rfile.read(length)) if length else None
        self.calls.append((self.command, self.path, sent))
        body = json.dumps(document).encode() if document is not None else b""
        self.send_response(200 if body else 204)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        queue = {"name": "q", "messages_ready": 2, "messages_unacknowledged": 1, "consumers": 3}
        self._answer([queue] if self.path.startswith("/api/queues/") else {"ok": True})

    do_PUT = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def management() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeManagement)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.unit
def test_the_management_api_makes_and_deletes_the_vhost(management: int) -> None:
    api = ManagementApi("127.0.0.1", "guest", "guest", port=management)
    assert api.answers()
    api.add_vhost("encodeq-learn-x", "guest")
    assert api.queues("encodeq-learn-x") == {"q": QueueCounts(ready=2, unacked=1, consumers=3)}
    api.delete_vhost("encodeq-learn-x")
    calls = [(method, path) for method, path, _ in FakeManagement.calls]
    assert calls[1:] == [
        ("PUT", "/api/vhosts/encodeq-learn-x"),
        ("PUT", "/api/permissions/encodeq-learn-x/guest"),
        ("GET", "/api/queues/encodeq-learn-x"),
        ("DELETE", "/api/vhosts/encodeq-learn-x"),
    ]


def vhost_answers(url: str) -> bool:
    """Whether RabbitMQ lets us in (a deleted vhost refuses the connection)."""
    try:
        with Connection(url, connect_timeout=5) as connection:
            connection.ensure_connection(max_retries=0)
    except Exception:
        return False
    return True


def test_the_scratch_space_is_gone_afterwards() -> None:
    with scratch_space("t") as scratch:
        assert vhost_answers(scratch.broker_url)
        assert scratch.broker_url.endswith(f"/{scratch.vhost}")
        storage = Storage(settings_of(scratch.env))
        storage.put_bytes("learn", "x", b"x", "text/plain")
        bucket = storage.bucket("learn")
        assert bucket.startswith(scratch.env["ENCODEQ_BUCKET_PREFIX"])
        assert scratch.workdir.is_dir()
    assert not vhost_answers(scratch.broker_url)
    assert not storage.client.bucket_exists(bucket)
    assert not scratch.workdir.exists()


# --- the lessons, for real -----------------------------------------------------------------------
def learn_json(name: str, *knobs: str) -> tuple[int, dict[str, Any]]:
    options = [o for knob in knobs for o in ("--knob", knob)]
    result = encodeq("learn", name, "--json", "--seed", str(seeded()), *options, timeout=240)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert doc["scenario"] == name and doc["verdict"] in ("pass", "fail")
    return result.returncode, doc


def run_with(name: str, **knobs: Any) -> Any:
    scenario = find(name)
    assert scenario is not None
    return run_scenario(scenario, SilentNarrator(), seeded(), knobs)


@pytest.mark.slow
def test_consumers_compete_while_every_subscriber_gets_every_event() -> None:
    code, doc = learn_json("consumers-vs-pubsub")
    c = doc["counters"]
    assert code == 0 and doc["verdict"] == "pass", c
    assert c["encode_tasks"] == c["rungs"] == 4 and c["most_runs_of_a_task"] == 1
    assert c["workers_used"] == 2 and c["tasks_worker1"] + c["tasks_worker2"] == 4
    assert c["subscriber_queues"] == 3
    published = c["events_published"]
    assert published > 0
    assert c["events_watch"] == c["events_notifications"] == c["events_analytics"] == published
    assert doc["see"] and doc["lesson"]


@pytest.mark.slow
def test_subscribers_sharing_one_queue_compete_for_the_events() -> None:
    outcome = run_with("consumers-vs-pubsub", private_subscriber_queues=False)
    c = outcome.counters
    assert outcome.verdict == "fail", c
    assert c["subscriber_queues"] == 1
    received = [c["events_watch"], c["events_notifications"], c["events_analytics"]]
    assert sum(received) == c["events_published"]  # each event to exactly one of them
    assert max(received) < c["events_published"]
    assert c["most_runs_of_a_task"] == 1  # the work queue still competes as it should


@pytest.mark.slow
def test_delivery_at_most_at_least_effectively_once() -> None:
    result = encodeq("learn", "delivery", "--seed", str(seeded()), timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verdict: pass" in result.stdout and "a worker killed mid-task" in result.stdout
    assert "core/celery_app.py" in result.stdout


@pytest.mark.slow
def test_delivery_without_late_acks_loses_the_killed_tasks() -> None:
    outcome = run_with("delivery", late_ack=False)
    c = outcome.counters
    assert outcome.verdict == "fail", c
    assert c["early_runs"] == 1 and c["early_back_in_queue"] == 0 and c["early_objects"] == 0
    # late acks off: the killed task is gone as in the first act, never run again
    assert c["late_runs"] == 1 and c["late_back_in_queue"] == 0 and c["late_redelivered"] == 0
    assert c["idempotent_runs"] == 1 and c["idempotent_back_in_queue"] == 0


@pytest.mark.slow
def test_delivery_without_idempotent_keys_writes_the_duplicate() -> None:
    outcome = run_with("delivery", idempotent_keys=False)
    c = outcome.counters
    assert outcome.verdict == "fail", c
    assert c["late_runs"] == 2 and c["late_objects"] == 2  # late acks still redeliver
    # the last act is now the second: run twice, and both runs' outputs stay
    assert c["idempotent_runs"] == 2 and c["idempotent_redelivered"] == 1
    assert c["idempotent_objects"] == 2


@pytest.mark.slow
def test_poison_is_dead_lettered_explained_and_replayed() -> None:
    code, doc = learn_json("poison")
    c = doc["counters"]
    assert code == 0 and doc["verdict"] == "pass", c
    assert c["dead_letters"] == 1 and c["poison_probe_runs"] == 1
    assert c["death_reason"] == "rejected" and c["died_in"] == "encodeq.control"
    assert c["failure_code"] == "not_a_video" and c["good_job_completed"] is True
    assert c["replayed"] == 1 and c["poison_completed"] is True and c["dead_letters_after"] == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "knob, dead_letters, dead_letters_after",
    [("dead_letter", 0, 0), ("fix_before_replay", 1, 1)],
)
def test_poison_without_its_mechanism_fails(
    knob: str, dead_letters: int, dead_letters_after: int
) -> None:
    outcome = run_with("poison", **{knob: False})
    c = outcome.counters
    assert outcome.verdict == "fail", c
    assert c["dead_letters"] == dead_letters and c["dead_letters_after"] == dead_letters_after
    assert c["good_job_completed"] is True  # either way the poison blocked nothing
    assert c["poison_completed"] is False
