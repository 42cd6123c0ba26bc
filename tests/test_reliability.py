"""Nothing is lost: broker restarts, poison inputs beside good ones, warm shutdowns, and a soak
run with faults firing on a schedule. Every uploaded video ends completed, or failed with its
reason and a dead-lettered message.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from support.broker import consumers, queue_state, rabbitmqctl, scratch_vhost
from support.commands import encodeq, upload_job
from support.dlq import death_reason, dlq_for
from support.events import Events
from support.fleet import WorkerFleet
from support.media import make_video
from support.storage import jobs, storage, stray_renditions, wait_for_job
from support.waiting import wait_for

from config.topology import (
    DEAD_LETTER_QUEUE_NAME,
    WORK_QUEUE_KEYS,
)
from console.tcp_proxy import TcpProxy


@pytest.fixture
def broker_outage() -> Iterator[callable]:
    """``outage()`` stops RabbitMQ's application; it is always started again afterwards."""
    stopped = []

    def outage() -> None:
        rabbitmqctl("stop_app")
        stopped.append(True)

    yield outage
    if stopped:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")


def restart_broker() -> None:
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup")


def assert_renditions_exactly_once(job_id: str) -> None:
    manifest = jobs().load(job_id)
    assert manifest is not None and manifest.state == "completed", manifest
    assert stray_renditions(manifest) == []
    for r in manifest.renditions:
        keys = list(storage().list_keys("renditions", f"{job_id}/{r.name}/"))
        assert len(keys) == r.segments + 1, (r.name, keys)  # segments + playlist, no strays


@pytest.mark.slow
def test_broker_restart_loses_nothing(workers, media_dir, broker_outage) -> None:
    workers.start("r1")
    workers.start("r2")
    sources = [make_video(media_dir / f"restart{i}.mp4", 640, 360, duration=6) for i in range(3)]
    with Events() as events:
        job_ids = [upload_job(source) for source in sources]
        events.wait(lambda e: e["event"] == "rendition.started", 60, "an encode to start")
    broker_outage()
    # During the outage an upload either waits and succeeds...
    waiting = subprocess.Popen(
        ["encodeq", "upload", str(sources[0])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ENCODEQ_BROKER_WAIT_S": "120"},
    )
    # ...or, when it cannot wait that long, fails loudly and says so in the manifest.
    impatient = encodeq("upload", str(sources[1]), env={"ENCODEQ_BROKER_WAIT_S": "1"})
    assert impatient.returncode == 2
    assert "RabbitMQ did not take job" in impatient.stderr
    failed_id = impatient.stderr.split("did not take job ")[1].split()[0]
    restart_broker()
    out, err = waiting.communicate(timeout=180)
    assert waiting.returncode == 0, err
    job_ids.append(out.strip())
    failed = jobs().load(failed_id)
    assert failed.state == "failed" and failed.error.code == "broker_unavailable"
    # Queued and running work survived (quorum, durable, persistent); workers came back by
    # themselves.
    for job_id in job_ids:
        manifest = wait_for_job(job_id, timeout=180)
        assert manifest.state == "completed", (job_id, manifest.error)
        assert_renditions_exactly_once(job_id)
    wait_for(lambda: consumers() >= 2, 60, "both workers to consume again")
    assert all(w.proc.poll() is None for w in workers.workers)


@pytest.mark.slow
def test_poison_input_does_not_block_other_jobs(workers, media_dir) -> None:
    fleet = {"p1": workers.start("p1"), "p2": workers.start("p2")}
    poison = make_video(media_dir / "poison-long.mp4", 426, 240, duration=30)
    good = [make_video(media_dir / f"good{i}.mp4", 320, 180, duration=2) for i in range(3)]
    stop = threading.Event()
    kills: list[str] = []
    with Events() as events:
        poison_id = upload_job(poison, "--mode", "per-rung")  # its one encode dies each time

        def killer() -> None:
            # Every time the poison job's encode starts, its process dies (like an OOM kill).
            while not stop.is_set():
                try:
                    e = events.wait(
                        lambda e: e["event"] == "rendition.started" and e["job_id"] == poison_id,
                        1,
                        "poison",
                    )
                except AssertionError:
                    continue
                worker = fleet[e["worker"].split("@")[0]]
                for child in worker.pool_children():
                    os.kill(child, signal.SIGKILL)
                kills.append(e["worker"])

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            good_ids = [upload_job(g) for g in good]
            for job_id in good_ids:
                assert wait_for_job(job_id, timeout=120).state == "completed"
            message = wait_for(lambda: dlq_for(job_id=poison_id), 120, "the poison in the DLQ")[0]
        finally:
            stop.set()
            thread.join(timeout=10)
    assert death_reason(message) == "delivery_limit"
    assert len(kills) == 3  # delivery limit 2: the third return dead-letters it
    # The job is failed once the reject has reached the broker, a moment after the dead letter.
    failed = wait_for_job(poison_id, timeout=30)
    assert failed.state == "failed" and failed.error.code == "delivery_limit"


@pytest.mark.slow
def test_warm_shutdown_finishes_the_task_in_hand(workers, media_dir) -> None:
    leaving = workers.start("leaving")
    staying = workers.start("staying")
    first = make_video(media_dir / "warm1.mp4", 426, 240, duration=20)
    second = make_video(media_dir / "warm2.mp4", 426, 240, duration=4)
    with Events() as events:
        # One rung, one task: per-rung mode makes "the task in hand" the whole rendition.
        first_id = upload_job(first, "--mode", "per-rung")
        started = events.wait(
            lambda e: e["event"] == "rendition.started" and e["job_id"] == first_id,
            60,
            "the first encode",
        )
        victim = leaving if started["worker"].startswith("leaving@") else staying
        survivor = staying if victim is leaving else leaving
        victim.proc.send_signal(signal.SIGTERM)  # warm shutdown: finish, ack, take nothing new
        second_id = upload_job(second)
        assert victim.proc.wait(timeout=120) == 0
    [rendition] = wait_for_job(first_id, timeout=120).renditions
    assert rendition.worker.startswith(f"{victim.name}@")  # finished by the one shutting down
    [later] = wait_for_job(second_id, timeout=120).renditions
    assert later.worker.startswith(f"{survivor.name}@")
    assert survivor.proc.poll() is None
    for job_id in (first_id, second_id):
        assert_renditions_exactly_once(job_id)


@pytest.mark.slow
def test_storage_outage_past_the_budget_then_replay_completes(workers, media_dir) -> None:
    endpoint = urlsplit(os.environ["ENCODEQ_S3_ENDPOINT"])
    proxy = TcpProxy(endpoint.hostname, endpoint.port).start()
    try:
        workers.start(
            "cutoff", env={"ENCODEQ_S3_ENDPOINT": proxy.endpoint, "ENCODEQ_MAX_RETRIES": "1"}
        )
        proxy.cut()
        job_id = upload_job(make_video(media_dir / "replayable.mp4", 320, 180, duration=2))
        message = wait_for(lambda: dlq_for(job_id=job_id), 90, "the dead letter")[0]
        assert death_reason(message) == "rejected"
        proxy.restore()
        ids = json.loads(encodeq("dlq", "list", "--job", job_id, "--json").stdout)
        assert len(ids) == 1
        replay = encodeq("dlq", "replay", ids[0]["id"])
        assert replay.returncode == 0, replay.stderr
        assert wait_for_job(job_id, timeout=90).state == "completed"
        assert dlq_for(job_id=job_id) == []
    finally:
        proxy.cut()


# --- soak ----------------------------------------------------------------------------------------
@pytest.fixture
def soak_vhost() -> Iterator[dict[str, str]]:
    """A vhost of its own: a higher delivery limit (faults may hit one message several times
    without it being poison), and queue counts that are this test's alone."""
    with scratch_vhost("encodeq-soak") as url:
        yield {
            "ENCODEQ_BROKER_URL": url,
            "ENCODEQ_DELIVERY_LIMIT": "20",
            "ENCODEQ_MAX_RETRIES": "10",
            "ENCODEQ_BUCKET_PREFIX": f"{os.environ['ENCODEQ_BUCKET_PREFIX']}soak-",
        }


@pytest.mark.slow
def test_soak_fifty_jobs_under_faults(soak_vhost, media_dir, tmp_path) -> None:
    env = dict(soak_vhost)
    endpoint = urlsplit(os.environ["ENCODEQ_S3_ENDPOINT"])
    proxy = TcpProxy(endpoint.hostname, endpoint.port).start()
    worker_env = {**env, "ENCODEQ_S3_ENDPOINT": proxy.endpoint}
    fleet = WorkerFleet()
    faults: dict[str, int] = {}
    rng = random.Random(7)
    sources = [make_video(media_dir / f"soak{i % 5}.mp4", 320, 180, duration=2) for i in range(5)]
    started = time.monotonic()
    stop = threading.Event()

    def fire(kind: str) -> None:
        faults[kind] = faults.get(kind, 0) + 1

    schedule = [
        "kill_pool",
        "s3_cut",
        "kill_pool",
        "warm_restart",
        "broker_restart",
        "kill_pool",
        "s3_cut",
        "kill_worker",
    ]

    def chaos() -> None:
        # The whole schedule fires, however fast the jobs go (stop only aborts on an error).
        for kind in schedule:
            if stop.wait(rng.uniform(2.0, 4.0)):
                return
            alive = [w for w in fleet.workers if w.proc.poll() is None]
            if kind == "kill_pool" and alive:
                for child in rng.choice(alive).pool_children():
                    os.kill(child, signal.SIGKILL)
            elif kind == "s3_cut":
                proxy.cut()
                stop.wait(2.0)
                proxy.restore()
            elif kind == "warm_restart" and alive:
                victim = rng.choice(alive)
                victim.terminate(timeout=120)
                fleet.start(f"{victim.name}w", env=worker_env)
            elif kind == "kill_worker" and alive:
                victim = rng.choice(alive)
                victim.kill()
                fleet.start(f"{victim.name}k", env=worker_env)
            elif kind == "broker_restart":
                rabbitmqctl("stop_app")
                stop.wait(2.0)
                restart_broker()
            else:
                continue
            fire(kind)

    try:
        fleet.start("s1", env=worker_env)
        fleet.start("s2", env=worker_env)
        thread = threading.Thread(target=chaos, daemon=True)
        thread.start()
        job_ids = []
        for i in range(50):
            done = encodeq(
                "upload", str(sources[i % 5]), env={**env, "ENCODEQ_BROKER_WAIT_S": "120"}
            )
            assert done.returncode == 0, done.stderr
            job_ids.append(done.stdout.strip())
        thread.join(timeout=300)  # every fault has fired, most while uploads were going on
        assert not thread.is_alive()
        store = jobs_for(env)
        deadline = time.monotonic() + 420
        pending = set(job_ids)
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                manifest = store.load(job_id)
                if manifest is not None and manifest.finished:
                    pending.discard(job_id)
            time.sleep(0.5)  # polling the manifests of 50 jobs, not waiting for a condition
    finally:
        stop.set()
        fleet.stop_all()
        proxy.cut()
    elapsed = time.monotonic() - started
    states = {job_id: store.load(job_id).state for job_id in job_ids}
    lost = [j for j, s in states.items() if s != "completed"]
    # what a duplicate could leave: an extra segment, a live playlist written by a late copy
    s3 = storage_for(env)
    completed = {j: store.load(j) for j in job_ids if j not in lost}
    strays = {j: keys for j, m in completed.items() if (keys := stray_renditions(m, s3))}
    url = env["ENCODEQ_BROKER_URL"]
    dead = queue_state(DEAD_LETTER_QUEUE_NAME, url)[0]
    left = sum(queue_state(q, url)[0] for q in WORK_QUEUE_KEYS)
    print(
        f"\nsoak: {len(job_ids)} jobs, faults {faults} ({sum(faults.values())} in all), "
        f"lost {len(lost)}, stray objects {strays}, dead-lettered {dead}, "
        f"{elapsed:.0f}s"
    )
    assert lost == [], {j: states[j] for j in lost}
    assert strays == {}
    assert dead == 0  # no false poison
    assert left == 0  # nothing stuck
    assert sum(faults.values()) == len(schedule)


def jobs_for(env: dict[str, str]):
    from config.settings import Settings
    from core.manifest import JobStore
    from core.storage import Storage

    return JobStore(Storage(Settings(**_settings_kwargs(env))))


def storage_for(env: dict[str, str]):
    from config.settings import Settings
    from core.storage import Storage

    return Storage(Settings(**_settings_kwargs(env)))


def _settings_kwargs(env: dict[str, str]) -> dict[str, str]:
    return {
        k.removeprefix("ENCODEQ_").lower(): v for k, v in env.items() if k.startswith("ENCODEQ_")
    }
