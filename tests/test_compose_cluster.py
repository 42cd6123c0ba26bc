"""docker-compose.cluster.yml, checked without a Docker engine: the grown-up stack (three RabbitMQ
nodes, four MinIO nodes) runs docker-compose.yml's own commands, and every client is pointed at
every engine node. The cluster tier (tests/test_cluster.py) runs those commands natively against a
real three-node cluster with the same kind of `;`-separated broker list.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from test_compose import DOT_ENV, ROOT, argv, compose_binary, environment, interpolate, published

from config.settings import Settings

pytestmark = pytest.mark.unit

CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"
CLUSTER_CONF = ROOT / "config" / "rabbitmq" / "cluster.conf"
CLUSTER_ENV = {**DOT_ENV, "RABBITMQ_ERLANG_COOKIE": secrets.token_hex(16)}
RABBITMQ_NODES = {"rabbitmq-1", "rabbitmq-2", "rabbitmq-3"}
MINIO_NODES = {"minio-1", "minio-2", "minio-3", "minio-4"}
#: The services whose commands must be docker-compose.yml's, word for word.
SAME_COMMAND = ("worker", "uploader", "minio-setup")


@pytest.fixture(scope="module")
def cluster() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(CLUSTER_FILE.read_text())["services"]


@pytest.fixture(scope="module")
def single() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def cluster_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: interpolate(v, CLUSTER_ENV) for k, v in environment(service).items()}


def test_the_engines_are_three_rabbitmq_and_four_minio_nodes(cluster: dict) -> None:
    assert {n for n in cluster if n.startswith("rabbitmq")} == RABBITMQ_NODES
    assert {n for n in cluster if n.startswith("minio-") and n != "minio-setup"} == MINIO_NODES


def test_services_run_the_single_host_files_commands(cluster: dict, single: dict) -> None:
    for name in SAME_COMMAND:
        assert argv(cluster[name]) == argv(single[name]), name
        assert cluster[name]["image"] == single[name]["image"]
    assert {cluster[n]["image"] for n in RABBITMQ_NODES} == {single["rabbitmq"]["image"]}
    assert {cluster[n]["image"] for n in MINIO_NODES} == {single["minio"]["image"]}


def test_peer_discovery_names_the_compose_nodes() -> None:
    """classic_config lists rabbit@<hostname> of each node service, and nothing else."""
    conf = CLUSTER_CONF.read_text()
    listed = set(re.findall(r"classic_config\.nodes\.\d+\s*=\s*rabbit@(\S+)", conf))
    assert listed == RABBITMQ_NODES
    assert "consumer_timeout = 7200000" in conf


def test_every_node_mounts_the_cluster_conf_and_a_volume_of_its_own(cluster: dict) -> None:
    volumes = set()
    for name in RABBITMQ_NODES:
        node = cluster[name]
        assert node["hostname"] == name  # RabbitMQ keeps its data per node name
        mounts = {v.split(":")[1]: v.split(":")[0] for v in node["volumes"]}
        assert (ROOT / mounts["/etc/rabbitmq/rabbitmq.conf"]).resolve() == CLUSTER_CONF
        volumes.add(mounts["/var/lib/rabbitmq"])
        env = cluster_env(node)
        cookie = CLUSTER_ENV["RABBITMQ_ERLANG_COOKIE"]
        assert env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] == f"-setcookie {cookie}"
        assert env["RABBITMQ_CTL_ERL_ARGS"] == f"-setcookie {cookie}"
    assert len(volumes) == len(RABBITMQ_NODES)


def test_clients_list_every_broker_node_and_replicate_on_all(cluster: dict) -> None:
    for name in ("worker", "uploader"):
        env = cluster_env(cluster[name])
        urls = [urlsplit(u) for u in env["ENCODEQ_BROKER_URL"].split(";")]
        assert {u.hostname for u in urls} == RABBITMQ_NODES
        assert {(u.port, u.path, u.username) for u in urls} == {(5672, "//", "encodeq")}
        assert Settings(quorum_replicas=int(env["ENCODEQ_QUORUM_REPLICAS"])).quorum_replicas == 3
        settings = {f"ENCODEQ_{f.upper()}" for f in Settings.model_fields}
        assert {k for k in env if k.startswith("ENCODEQ_")} <= settings


def test_minio_is_one_erasure_set_over_the_four_nodes(cluster: dict) -> None:
    """Each node's command names all four (MinIO expands {1...4}); they share the alias the
    clients' endpoint uses."""
    for name in MINIO_NODES:
        node = cluster[name]
        [pool] = [a for a in node["command"] if a.startswith("http://")]
        first, last = re.fullmatch(r"http://minio-\{(\d)\.\.\.(\d)\}/data", pool).groups()
        assert {f"minio-{i}" for i in range(int(first), int(last) + 1)} == MINIO_NODES
        assert node["hostname"] == name
        assert node["networks"]["default"]["aliases"] == ["minio"]
    for name in ("worker", "uploader", "minio-setup"):
        assert urlsplit(cluster_env(cluster[name])["ENCODEQ_S3_ENDPOINT"]).hostname == "minio"


def test_published_ports_listen_on_loopback(cluster: dict) -> None:
    for name, service in cluster.items():
        for mapping in {interpolate(str(p), CLUSTER_ENV) for p in service.get("ports", [])}:
            assert mapping.startswith("127.0.0.1:"), (name, mapping)
    assert published(cluster["rabbitmq-1"], CLUSTER_ENV) >= {"127.0.0.1:5672:5672"}


def test_secrets_have_no_defaults(cluster: dict) -> None:
    for service in cluster.values():
        for key, value in environment(service).items():
            if re.search(r"PASS|SECRET|COOKIE|ERL_ARGS", key):
                with pytest.raises(LookupError):
                    interpolate(value, {})


def compose_config(
    binary: list[str], *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess:
    """``compose -f docker-compose.cluster.yml config ARGS`` with only ``env`` (and PATH) set."""
    return subprocess.run(
        [*binary, "-f", str(CLUSTER_FILE), "config", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", **env},
    )


def test_compose_binary_validates_the_cluster_file_offline() -> None:
    binary = compose_binary()
    if binary is None:
        message = "no `docker compose` plugin nor `docker-compose` here: structure checked above"
        if os.environ.get("CI"):  # .ci/run installs docker-compose: CI always validates
            pytest.fail(message)
        pytest.skip(message)
    run = compose_config(binary, "--services", env=CLUSTER_ENV)
    assert run.returncode == 0, run.stderr
    assert set(run.stdout.split()) == RABBITMQ_NODES | MINIO_NODES | set(SAME_COMMAND)
    missing = compose_config(binary, "-q", env=DOT_ENV)
    assert missing.returncode != 0 and "RABBITMQ_ERLANG_COOKIE" in missing.stderr
