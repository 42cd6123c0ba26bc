"""encodeq on a three-node RabbitMQ cluster (tests/support/cluster.py), nodes killed under load.

Every client gets the failover list of all three nodes (``ENCODEQ_BROKER_URL`` with ``;``) and the
queues three replicas (``ENCODEQ_QUORUM_REPLICAS=3``); each test a vhost of its own
(tests/support/cluster_run.py). Real worker subprocesses, real S3 (the test stack's), real ffmpeg;
sizes and lengths drawn from a printed seed. The measured failover times are printed (-s).

The unit tests here pin what a single broker must keep: with the setting at 0 every queue keeps
exactly the arguments it had before clusters existed (a new one would fail its redeclare).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from kombu import Connection
from support.broker import consumers
from support.cluster import NODE_NAMES, Cluster, running_cluster
from support.cluster_events import EventLog
from support.cluster_run import (
    REPLICAS,
    ClusterRun,
    Upload,
    assert_written_once,
    cluster_run,
    job_named,
    seeded,
    sources,
    stop_while_connected,
    upload_all,
)
from support.commands import dlq_json
from support.http import start_server
from support.storage import assert_plays_every_frame, jobs, wait_for_job
from support.waiting import wait_for
from test_http_api import TOKEN, EventStream

from config.brokers import connect_retries, split_broker_urls
from config.settings import Settings, get_settings
from config.topology import (
    DEAD_LETTER_QUEUE_NAME,
    ENCODE_EXPRESS_QUEUE_NAME,
    PARKED_QUEUE_NAME,
    WORK_QUEUE_KEYS,
    dead_letter_queue_arguments,
    work_queue_arguments,
)

#: Room for the session's cluster to form (about 40 s) inside the first test's budget.
pytestmark = pytest.mark.timeout(420)

#: Short jobs encode in the express lane (worker/lanes.py): the lane whose leader is killed.
LANE = ENCODE_EXPRESS_QUEUE_NAME
OUR_QUEUES = (*WORK_QUEUE_KEYS, DEAD_LETTER_QUEUE_NAME, PARKED_QUEUE_NAME)


# --- unit: the arguments a single broker keeps ----------------------------------------------------
@pytest.fixture
def replicas(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], None]]:
    def use(count: int) -> None:
        monkeypatch.setenv("ENCODEQ_QUORUM_REPLICAS", str(count))
        get_settings.cache_clear()

    yield use
    monkeypatch.delenv("ENCODEQ_QUORUM_REPLICAS", raising=False)
    get_settings.cache_clear()


@pytest.mark.unit
def test_without_replicas_every_queue_keeps_its_arguments(replicas) -> None:
    replicas(0)
    assert set(work_queue_arguments()) == {
        "x-queue-type",
        "x-dead-letter-exchange",
        "x-dead-letter-strategy",
        "x-overflow",
        "x-delivery-limit",
    }
    assert dead_letter_queue_arguments() == {"x-queue-type": "classic"}
    replicas(1)  # one replica: nothing to survive a node with, the DLQ stays classic
    assert work_queue_arguments()["x-quorum-initial-group-size"] == 1
    assert dead_letter_queue_arguments() == {"x-queue-type": "classic"}


@pytest.mark.unit
def test_replicas_spread_leaders_and_make_the_dlq_a_quorum_queue(replicas) -> None:
    replicas(3)
    args = work_queue_arguments()
    assert args["x-quorum-initial-group-size"] == 3
    assert args["x-queue-leader-locator"] == "balanced"
    dlq = dead_letter_queue_arguments()
    assert dlq["x-queue-type"] == "quorum" and dlq["x-quorum-initial-group-size"] == 3
    assert dlq["x-delivery-limit"] == 2**31 - 1  # no browsing reaches it; -1 breaks 3.10
    assert "x-dead-letter-exchange" not in dlq


@pytest.mark.unit
def test_a_failover_list_is_tried_node_by_node() -> None:
    urls = "amqp://a:5701/v; amqp://b:5702/v;;amqp://c:5703/v"
    assert split_broker_urls(urls) == ["amqp://a:5701/v", "amqp://b:5702/v", "amqp://c:5703/v"]
    assert connect_retries("amqp://a//", 3) == 3  # one broker: as before
    assert connect_retries(urls, 1) == 5  # two rounds over three nodes
    # Settings hand kombu the list without its blanks: kombu splits on ";" as it is.
    assert Connection(Settings(broker_url=urls).broker_url).alt == split_broker_urls(urls)


# --- the cluster ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with running_cluster() as formed:
        print(f"\ncluster of {len(formed.nodes)} nodes formed in {formed.formed_in_s:.1f}s")
        yield formed


@pytest.fixture
def run(cluster: Cluster) -> Iterator[ClusterRun]:
    with cluster_run(cluster) as on:
        yield on


# --- a node dies ---------------------------------------------------------------------------------
@pytest.mark.cluster
def test_killing_the_lanes_leader_mid_batch_loses_nothing(run, workers, media_dir, tmp_path):
    rng = seeded()
    leader = run.leader_of(LANE)
    watcher = run.others(leader)[0]
    print(f"leaders: { {q: run.leader_of(q) for q in OUR_QUEUES} }")
    # Every worker connected to the doomed node: each must fail over, and the lane elect anew.
    fleet = [workers.start(f"cl{i}", env=run.env(first=leader)) for i in range(2)]
    batch = sources(media_dir, rng, 6)
    with EventLog(run.url(first=watcher)) as log:
        job_ids = upload_all([path for path, _ in batch])
        log.wait(lambda e: e["event"] == "rendition.started", 120, "the batch to encode")
        log.wait_count("rendition.started", 2, 60)
        killed_at, clock = datetime.now(UTC), time.monotonic()
        run.cluster.kill(leader)
        wait_for(lambda: consumers(LANE, run.url(watcher)) >= len(fleet), 60, "consumers back")
        consuming_s = time.monotonic() - clock
        wait_for(lambda: log.started_after(killed_at), 120, "a task to start after the kill")
        resumed = log.started_after(killed_at)
        resumed_s = (datetime.fromisoformat(resumed["time"]) - killed_at).total_seconds()
        manifests = [wait_for_job(job_id, timeout=240) for job_id in job_ids]
        runs = Counter((e["job_id"], e["rendition"]) for e in log.of("rendition.started"))
    print(
        f"killed {leader} (leader of {LANE}); workers consuming again after {consuming_s:.1f}s,"
        f" first task started {resumed_s:.1f}s after the kill (new leader:"
        f" {run.leader_of(LANE)}); encodes run twice: {sum(n - 1 for n in runs.values())}"
    )
    for manifest, (_, frames) in zip(manifests, batch, strict=True):
        assert_written_once(manifest)
        assert_plays_every_frame(manifest, frames, tmp_path / manifest.job_id)
    assert run.depth(DEAD_LETTER_QUEUE_NAME) == 0
    assert all(w.proc.poll() is None for w in fleet)
    assert resumed_s <= 10, f"work resumed {resumed_s:.1f}s after the kill"


@pytest.mark.cluster
def test_rolling_restart_under_load_fails_no_job(run, workers, media_dir):
    rng = seeded()
    for i, first in enumerate(NODE_NAMES[:2]):
        workers.start(f"roll{i}", env=run.env(first=first))
    batch = sources(media_dir, rng, 20)
    with EventLog(run.url(first=NODE_NAMES[0])) as log:
        job_ids = upload_all([path for path, _ in batch])
        began = time.monotonic()
        for node in NODE_NAMES:  # one at a time, each back with its replicas before the next
            step = time.monotonic()
            run.cluster.stop_node(node)
            run.cluster.restart(node)
            run.cluster.wait_members(run.vhost, REPLICAS)
            done = len(log.of("job.completed"))
            print(f"{node} restarted in {time.monotonic() - step:.1f}s ({done}/20 jobs done)")
        rolling_s = time.monotonic() - began
        manifests = [wait_for_job(job_id, timeout=300) for job_id in job_ids]
        resubscribed = log.resubscribed
    print(f"rolling restart of 3 nodes: {rolling_s:.1f}s; watcher resubscribed {resubscribed}x")
    assert [m.job_id for m in manifests if m.state != "completed"] == []
    for manifest in manifests:
        assert_written_once(manifest)
    assert run.depth(DEAD_LETTER_QUEUE_NAME) == 0
    assert resubscribed >= 1  # its node was restarted under it, and it followed on another


@pytest.mark.cluster
def test_an_upload_whose_node_dies_completes_or_fails_loudly(run, workers, media_dir):
    """Uploads connected to a node that dies: one following its job (``--wait``), one frozen in
    the middle of its publish (its second connection to that node: topology, probe, confirm),
    two started a random moment before (connecting, checking admission, uploading to S3). Each
    ends with its job completed, or exits non-zero saying so; no job is left queued."""
    rng = seeded()
    victim = rng.choice(NODE_NAMES)
    workers.start("up0", env=run.env(first=run.others(victim)[0]))
    batch = sources(media_dir, rng, 4)
    env = {**os.environ, **run.env(first=victim)}
    port = run.cluster.node(victim).port
    began = datetime.now(UTC).isoformat(timespec="milliseconds")  # as manifests stamp it
    following = Upload(batch[0][0], env)
    wait_for(lambda: following.published_at, 120, "the first upload to follow its job")
    others = [Upload(path, env) for path, _ in batch[2:]]
    time.sleep(rng.uniform(0.0, 1.5))  # a randomised head start, not a condition
    held = Upload(batch[1][0], env)
    nth = stop_while_connected(held.proc, port, nth=2, timeout=60)
    killed = time.monotonic()
    try:
        run.cluster.kill(victim)
    finally:
        os.kill(held.proc.pid, signal.SIGCONT)
    # #1: the admission check; #2: the publish (topology, probe, confirm); later: events, --wait
    print(f"killed {victim} with an upload frozen in its connection #{nth} to it")
    job_ids = []
    for name, upload in [
        ("following", following),
        ("held", held),
        ("early", others[0]),
        ("early", others[1]),
    ]:
        code, out, err = upload.finish()
        at = upload.published_at
        print(f"{name}: published {'never' if at is None else f'{at - killed:+.2f}s'}, exit {code}")
        job_ids += [j for j in [job_named(out, err)] if j]
        if code != 0:  # loud: non-zero, and says what happened to which job
            assert err.strip(), "an upload failed without a word"
            print(f"  failed loudly: {err.strip()[-300:]}")
    finals = [wait_for_job(job_id, timeout=120) for job_id in job_ids]
    assert all(m.state == "completed" or m.error.code == "broker_unavailable" for m in finals)
    assert following.proc.returncode == 0  # its follower moved to another node, saw it end
    ours = [m for m in map(jobs().load, jobs().job_ids()) if m and m.created_at >= began]
    stuck = [m.job_id for m in ours if not m.finished]  # any upload's, printed or not
    assert len(ours) >= len(job_ids) and stuck == [], f"left without a terminal state: {stuck}"


@pytest.mark.cluster
def test_dead_letters_outlive_their_node_and_replay(run, workers, media_dir):
    rng = seeded()
    queue = run.cluster.queues(run.vhost)[DEAD_LETTER_QUEUE_NAME]
    assert queue["type"] == "quorum" and len(queue["members"]) == REPLICAS
    fault = {**run.env(), "ENCODEQ_FAIL_TASKS": "encodeq.probe"}
    poisoned = workers.start("poisoned", env=fault)
    [job_id] = upload_all([sources(media_dir, rng, 1)[0][0]])
    assert wait_for_job(job_id, timeout=120).error.code == "injected_fault"
    wait_for(lambda: run.depth(DEAD_LETTER_QUEUE_NAME) == 1, 60, "the probe in the DLQ")
    poisoned.terminate()
    for _ in range(3):  # browsing a quorum DLQ returns held deliveries: counted, never dropped
        assert [r["job_id"] for r in dlq_json("list")] == [job_id]
    leader = run.leader_of(DEAD_LETTER_QUEUE_NAME)
    run.cluster.kill(leader)
    on_dead_first = run.env(first=leader)  # the inspector's first node is the dead one
    [row] = dlq_json("list", env=on_dead_first)
    assert row["job_id"] == job_id and row["code"] == "injected_fault"
    assert dlq_json("show", row["id"], env=on_dead_first)["args"] == [job_id]
    workers.start("fixed", env=run.env(first=run.others(leader)[0]))
    report = dlq_json("replay", row["id"], env=on_dead_first)
    after = dlq_json("list", env=on_dead_first)
    assert report["ids"] == [row["id"]], (report, after, run.cluster.queues(run.vhost))
    assert report["targets"] == {"encodeq -> control": 1}
    assert wait_for_job(job_id, timeout=120).state == "completed"
    assert run.depth(DEAD_LETTER_QUEUE_NAME) == 0
    print(f"DLQ leader {leader} killed; listed and replayed through the new leader")


@pytest.mark.cluster
def test_queues_have_a_member_on_every_node_and_leaders_spread(run):
    queues = run.cluster.queues(run.vhost)
    for name in OUR_QUEUES:
        assert queues[name]["type"] == "quorum", name
        assert sorted(queues[name]["members"]) == sorted(n.name for n in run.cluster.nodes), name
        assert ["x-queue-leader-locator", "longstr", "balanced"] in queues[name]["arguments"]
    leaders = Counter(queues[name]["leader"] for name in OUR_QUEUES)
    print(f"leaders per node: {dict(leaders)}")
    assert len(leaders) == len(NODE_NAMES)  # every node leads some: none carries them all
    assert max(leaders.values()) <= -(-len(OUR_QUEUES) // len(NODE_NAMES))


@pytest.mark.cluster
def test_the_dashboard_stream_survives_its_node(run, workers, media_dir):
    """The web service's events hub (uploader/web/hub.py) subscribes again on another node when
    its own dies: a browser's open stream carries on, and shows the next job to its end."""
    rng = seeded()
    victim = rng.choice(NODE_NAMES)
    survivor = run.others(victim)[0]
    workers.start("web0", env=run.env(first=survivor))
    server = start_server(env={**run.env(first=victim), "ENCODEQ_API_TOKEN": TOKEN})
    try:
        with EventStream(server.base) as stream:
            run.cluster.kill(victim)
            [job_id] = upload_all([sources(media_dir, rng, 1)[0][0]], run.env(first=survivor))
            ended = stream.until(
                lambda e: e.get("job_id") == job_id and e["event"] == "job.completed", 180
            )
        print(f"killed {victim} under the dashboard; its stream showed {len(ended)} events after")
    finally:
        server.stop()
    assert wait_for_job(job_id, timeout=60).state == "completed"
