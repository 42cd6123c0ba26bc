"""docker-compose.yml, the Dockerfile and the RabbitMQ files, checked without a Docker engine.

The structure is read with PyYAML and checked against the project's own settings; the commands the
containers run (the worker's, Flower's, minio-setup's) are run here natively, exactly as written,
against this test run's RabbitMQ vhost and S3 server, and must do their job. When a compose binary
is installed (`docker compose` or `docker-compose`), it validates the file offline too.

Exposure (issue 10, item 13): every published port binds 127.0.0.1 unless ENCODEQ_BIND says
otherwise; no secret has a usable default (compose refuses to start without them, and the services
refuse the well-known ones off loopback); Flower asks for a password; the workers and the dashboard
hold storage users of their own, whose policies are checked here by a real policy evaluator: moto
with IAM enforcement, S3 requests signed with each user's key (there is no MinIO server here, and
moto has no MinIO admin API, so ``minio-setup``'s admin half is shown failing loudly instead).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from minio import Minio
from minio.error import S3Error
from support.broker import consumers
from support.commands import SERVE_COMMAND, WORKER_COMMAND, encodeq, resolve
from support.fleet import WorkerFleet, worker_argv
from support.http import serve_argv
from support.media import make_video
from support.waiting import wait_for

from config.exposure import KNOWN_DEFAULT_SECRETS, exposed_defaults
from config.settings import Settings
from config.topology import CONTROL_QUEUE_NAME, ENCODE_QUEUE_NAME
from console import minio_setup
from console.s3server import free_port
from core import metrics
from core.layout import AUDIT, BUCKETS, FAILURES, JOBS, RENDITIONS, UPLOADS
from uploader.web.security import allowed_hosts

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
RABBITMQ_CONF = ROOT / "config" / "rabbitmq" / "rabbitmq.conf"
ENABLED_PLUGINS = ROOT / "config" / "rabbitmq" / "enabled_plugins"
PROMETHEUS_CONF = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "encodeq.json"
#: RabbitMQ's Prometheus plugin: its port, and the per-queue families the dashboard reads.
RABBITMQ_PROMETHEUS_PORT = 15692
RABBITMQ_FAMILIES = ("queue_coarse_metrics", "queue_consumer_count")

SERVICES = {
    "minio",
    "minio-setup",
    "rabbitmq",
    "worker",
    "flower",
    "uploader",
    "prometheus",
    "grafana",
}
SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|BASIC_AUTH", re.IGNORECASE)
INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
)
SETTINGS_NAMES = {f"ENCODEQ_{name.upper()}" for name in Settings.model_fields}
#: Compose-only variables (not settings of a service): where the published ports listen.
COMPOSE_NAMES = {"ENCODEQ_BIND"}
#: What an operator puts in .env (README): random values, as the README's one-liner makes them.
DOT_ENV = {
    "MINIO_ROOT_PASSWORD": secrets.token_hex(16),
    "RABBITMQ_DEFAULT_PASS": secrets.token_hex(16),
    "WORKER_S3_SECRET_KEY": secrets.token_hex(16),
    "DASHBOARD_S3_SECRET_KEY": secrets.token_hex(16),
    "FLOWER_BASIC_AUTH": f"admin:{secrets.token_hex(16)}",
    "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16),
}


# --- reading the files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}`` with ``env`` (default:
    the operator's .env above, nothing else set)."""
    env = DOT_ENV if env is None else env

    def one(m: re.Match) -> str:
        value = env.get(m["name"])
        # ":-" and ":?" treat an empty value as unset; "-" and "?" only a missing one.
        unset = not value if m["op"] in (":-", ":?") else value is None
        if not unset:
            return str(value)
        if m["op"] in (":?", "?"):
            raise LookupError(f"${{{m['name']}}} is required: {m['arg']}")
        return m["arg"] if m["op"] in (":-", "-") else ""

    return INTERPOLATION.sub(one, value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment (mapping or list form), as written, values as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert isinstance(command, list), "commands are exec-form lists: no shell in between"
    return [interpolate(str(part)) for part in command]


def duration_s(text: str) -> float:
    """A compose duration ("31m", "1h30m", "90s", "1m30s") in seconds."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?", str(text).strip())
    assert parts and any(parts.groups()), f"not a compose duration: {text!r}"
    h, m, s, ms = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def rabbitmq_conf() -> dict[str, str]:
    conf = {}
    for line in RABBITMQ_CONF.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, sep, value = line.partition("=")
            assert sep, f"not a key = value line in rabbitmq.conf: {line!r}"
            conf[key.strip()] = value.strip()
    return conf


def hard_time_limit_s(worker: dict[str, Any]) -> int:
    """Celery's hard limit in the compose worker: from its environment's soft limit, else the
    default."""
    value = environment(worker).get("ENCODEQ_ENCODE_TIME_LIMIT_S")
    if value is None:
        return Settings().hard_time_limit_s
    return Settings(encode_time_limit_s=int(interpolate(value))).hard_time_limit_s


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def published(service: dict[str, Any], env: dict[str, str] | None = None) -> set[str]:
    """A service's port mappings as compose resolves them."""
    return {interpolate(str(p), env) for p in service.get("ports", [])}


# --- structure ------------------------------------------------------------------------------------
@pytest.mark.unit
def test_every_service_is_there_and_nothing_else(services: dict) -> None:
    assert set(services) == SERVICES


@pytest.mark.unit
def test_published_ports_listen_on_loopback_unless_told(services: dict) -> None:
    """Every host port is bound to 127.0.0.1 by default; ENCODEQ_BIND moves all of them."""
    mappings = {name: published(service) for name, service in services.items()}
    assert {name for name, ports in mappings.items() if ports} == {
        "minio",
        "rabbitmq",
        "flower",
        "uploader",
        "prometheus",
        "grafana",
    }
    for name, ports in mappings.items():
        for mapping in ports:
            host, _, rest = mapping.partition(":")
            assert host == "127.0.0.1" and re.fullmatch(r"\d+:\d+", rest), (name, mapping)
    moved = {p for s in services.values() for p in published(s, {**DOT_ENV, "ENCODEQ_BIND": "::"})}
    assert moved and all(p.startswith(":::") for p in moved), moved


@pytest.mark.unit
def test_pulled_images_are_pinned_to_a_release(services: dict) -> None:
    for name, service in services.items():
        image = service["image"]
        repo, sep, tag = image.rpartition(":")
        assert sep and repo and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and "@" not in repo, f"{name}: {image} is not pinned"
        if "build" not in service:
            assert re.search(r"\d+\.\d+\.\d+|RELEASE\.\d{4}-\d\d-\d\d", tag), (
                f"{name}: {image} is a moving tag, not a release"
            )
    assert re.fullmatch(r"4\.\d+\.\d+-management", services["rabbitmq"]["image"].split(":")[1])
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")


@pytest.mark.unit
def test_minio_has_its_api_console_volume_and_healthcheck(compose: dict, services: dict) -> None:
    minio = services["minio"]
    assert {"127.0.0.1:9000:9000", "127.0.0.1:9001:9001"} <= published(minio)
    assert "--console-address" in minio["command"]
    [volume] = minio["volumes"]
    name, _, target = volume.partition(":")
    assert name in compose["volumes"] and target == "/data" and "/data" in minio["command"]
    assert minio["healthcheck"]["test"]


@pytest.mark.unit
def test_rabbitmq_mounts_its_config_and_has_the_management_ui(services: dict) -> None:
    rabbitmq = services["rabbitmq"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in rabbitmq["volumes"]}
    assert (ROOT / mounts["/etc/rabbitmq/rabbitmq.conf"]).resolve() == RABBITMQ_CONF
    assert (ROOT / mounts["/etc/rabbitmq/enabled_plugins"]).resolve() == ENABLED_PLUGINS
    assert "127.0.0.1:15672:15672" in published(rabbitmq)
    assert rabbitmq["healthcheck"]["test"]
    plugins = ENABLED_PLUGINS.read_text().strip()
    assert re.fullmatch(r"\[[a-z_,\s]*\]\.", plugins), "enabled_plugins is an Erlang list term"
    assert "rabbitmq_management" in re.findall(r"[a-z_]+", plugins)


@pytest.mark.unit
def test_consumer_timeout_outlasts_the_longest_encode(services: dict) -> None:
    """RabbitMQ closes a channel holding a delivery longer than consumer_timeout (milliseconds);
    a late-acked encode holds its delivery up to the hard time limit."""
    timeout_ms = int(rabbitmq_conf()["consumer_timeout"])
    hard_limit_s = hard_time_limit_s(services["worker"])
    assert timeout_ms / 1000 > hard_limit_s


@pytest.mark.unit
def test_rabbitmq_conf_keys_are_known_to_rabbitmq() -> None:
    """Each key is a mapping of the RabbitMQ config schema (the local server's, when installed)."""
    schemas = list(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/plugins/*/priv/schema/*"))
    if not schemas:
        pytest.skip("no local RabbitMQ config schema to check rabbitmq.conf's keys against")
    mappings = set()
    for schema in schemas:
        mappings |= set(re.findall(r'\{mapping,\s*"([^"]+)"', schema.read_text(errors="replace")))
    assert set(rabbitmq_conf()) <= mappings


@pytest.mark.unit
def test_worker_is_scalable(services: dict) -> None:
    """`docker compose up --scale worker=N`: nothing that two replicas could both claim."""
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    # Celery names the node encodeq-<pid>@<hostname>; the pid is the same in every replica, so the
    # container hostname (unique by default) must not be fixed.
    assert "hostname" not in worker
    assert worker["build"] in (".", {"context": "."})


@pytest.mark.unit
def test_worker_waits_for_healthy_services_and_stops_warm(services: dict) -> None:
    worker = services["worker"]
    for dependency in ("rabbitmq", "minio"):
        assert worker["depends_on"][dependency]["condition"] == "service_healthy"
        assert services[dependency]["healthcheck"]["test"]
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"  # Celery's warm shutdown
    hard_limit_s = hard_time_limit_s(worker)
    assert duration_s(worker["stop_grace_period"]) >= hard_limit_s
    assert services["flower"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def resolved(service: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    return {k: interpolate(v, env) for k, v in environment(service).items()}


@pytest.mark.unit
def test_worker_environment_points_at_the_compose_services(services: dict) -> None:
    env = resolved(services["worker"])
    broker = urlsplit(env["ENCODEQ_BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port or 5672) == ("amqp", "rabbitmq", 5672)
    s3 = urlsplit(env["ENCODEQ_S3_ENDPOINT"])
    assert (s3.hostname, s3.port) == ("minio", 9000)
    rabbit_env = resolved(services["rabbitmq"])
    assert (broker.username, broker.password) == (
        rabbit_env["RABBITMQ_DEFAULT_USER"],
        rabbit_env["RABBITMQ_DEFAULT_PASS"],
    )
    assert broker.username != "guest"  # no guest user at all
    flower_env = environment(services["flower"])
    assert flower_env["ENCODEQ_BROKER_URL"] == environment(services["worker"])["ENCODEQ_BROKER_URL"]


@pytest.mark.unit
def test_only_minio_setup_holds_the_root_key_each_service_its_own_user(services: dict) -> None:
    minio = resolved(services["minio"])
    root = (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
    setup = resolved(services["minio-setup"])
    assert (setup["ENCODEQ_S3_ACCESS_KEY"], setup["ENCODEQ_S3_SECRET_KEY"]) == root
    assert services["minio-setup"]["depends_on"]["minio"]["condition"] == "service_healthy"
    users = {
        "worker": ("ENCODEQ_WORKER_S3_ACCESS_KEY", "ENCODEQ_WORKER_S3_SECRET_KEY"),
        "uploader": ("ENCODEQ_DASHBOARD_S3_ACCESS_KEY", "ENCODEQ_DASHBOARD_S3_SECRET_KEY"),
    }
    for name, (access, secret) in users.items():
        env = resolved(services[name])
        keys = (env["ENCODEQ_S3_ACCESS_KEY"], env["ENCODEQ_S3_SECRET_KEY"])
        assert keys == (setup[access], setup[secret]) and keys != root, name
        needs = services[name]["depends_on"]["minio-setup"]["condition"]
        assert needs == "service_completed_successfully", name
    for name in SERVICES - {"minio", "minio-setup"}:
        assert root[1] not in resolved(services[name]).values(), f"{name} holds the root key"
    # Flower talks to the broker only: no storage key at all.
    assert not {k for k in environment(services["flower"]) if k.startswith("ENCODEQ_S3_")}


@pytest.mark.unit
def test_encodeq_variables_are_real_settings(services: dict) -> None:
    """Every ENCODEQ_* name in compose and the Dockerfile is a field of config.settings.Settings;
    the worker is configured through those alone."""
    text = COMPOSE_FILE.read_text() + DOCKERFILE.read_text()
    named = set(re.findall(r"\bENCODEQ_[A-Z0-9_]+", text))
    assert named, "compose configures the services through ENCODEQ_* variables"
    unknown = named - SETTINGS_NAMES - COMPOSE_NAMES
    assert not unknown, f"not settings: {sorted(unknown)}"
    assert all(k.startswith("ENCODEQ_") for k in environment(services["worker"]))
    assert all(k.startswith(("ENCODEQ_", "FLOWER_")) for k in environment(services["flower"]))


def url_credentials(value: str) -> tuple[str, str] | None:
    """(user, password) of a URL as written, ``${...}`` kept whole; None when it has none."""
    written = [m.group(0) for m in INTERPOLATION.finditer(value)]
    masked = INTERPOLATION.sub("\x00", value)  # a ':' inside ${X:-y} is not the separator
    m = re.match(r"[a-z]+://([^/@]*)@", masked)
    if m is None:
        return None
    restore = iter(written)
    user, _, password = m.group(1).partition(":")
    return (
        re.sub("\x00", lambda _: next(restore), user),
        re.sub("\x00", lambda _: next(restore), password),
    )


@pytest.mark.unit
def test_secrets_have_no_usable_default(services: dict) -> None:
    """Every secret is ``${VAR:?why}``: compose refuses to start without it. The API token alone
    may be empty (``${ENCODEQ_API_TOKEN:-}``): the server then generates one. No well-known
    secret is written anywhere in the file."""
    checked = []
    for name, service in services.items():
        for key, value in environment(service).items():
            credentials = url_credentials(value)
            secret = credentials[1] if credentials else value if SECRET_NAME.search(key) else None
            if secret is None:
                continue
            checked.append(f"{name}.{key}")
            if key == "ENCODEQ_API_TOKEN":
                assert secret == "${ENCODEQ_API_TOKEN:-}", secret
                continue
            m = INTERPOLATION.fullmatch(secret)
            assert m and m["op"] == ":?" and m["arg"], f"{name}.{key}: {secret!r} has a default"
            # ...and compose says what to do when it is missing.
            with pytest.raises(LookupError, match=m["name"]):
                interpolate(value, {k: v for k, v in DOT_ENV.items() if k != m["name"]})
    assert len(checked) >= 10, checked
    text = COMPOSE_FILE.read_text()
    for known in KNOWN_DEFAULT_SECRETS:
        assert not re.search(rf"[:=\-/]{re.escape(known)}\b", text), (
            f"{known} is written in compose"
        )
    dockerfile = DOCKERFILE.read_text()
    assert not re.search(r"(PASS|SECRET|ACCESS_KEY)\w*\s*=", dockerfile), "no credentials baked in"


@pytest.mark.unit
def test_the_tests_start_the_services_with_composes_own_command_lines(services: dict) -> None:
    """The worker fleet and the test servers run what the containers run (the fleet adds only a
    node name and its queues), so what the suite proves holds for the compose services."""
    worker = argv(services["worker"])
    assert worker[: len(WORKER_COMMAND)] == WORKER_COMMAND
    fleet = worker_argv("node")
    assert fleet[: len(WORKER_COMMAND)] == WORKER_COMMAND
    assert set(worker[len(WORKER_COMMAND) :: 2]) <= set(fleet[len(WORKER_COMMAND) :: 2])
    assert argv(services["uploader"]) == serve_argv(8000, host="0.0.0.0")


@pytest.mark.unit
def test_dockerfile_is_pinned_installs_ffmpeg_and_drops_root(services: dict) -> None:
    steps = dockerfile_instructions()
    [base] = [rest for keyword, rest in steps if keyword == "FROM"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), f"FROM {base} is not pinned"
    runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
    assert re.search(r"apt-get install .*\bffmpeg\b", runs)
    assert re.search(r"pip install [\"']?\.\[compose\]", runs)
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image runs as a non-root user"
    assert any(keyword == "WORKDIR" for keyword, _ in steps)
    [cmd] = [rest for keyword, rest in steps if keyword == "CMD"]
    assert json.loads(cmd) == argv(services["worker"]), "the image's default is compose's worker"


@pytest.mark.unit
def test_dockerignore_keeps_what_the_install_needs() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".git" in patterns
    needed = [
        "pyproject.toml",
        "README.md",
        "config",
        "config/rabbitmq/rabbitmq.conf",
        "core",
        "console",
        "worker",
        "uploader/web/static/index.html",
        "uploader",
        "dlq_inspector",
    ]
    for path in needed:
        assert not any(fnmatch(path, p) for p in patterns), f".dockerignore drops {path}"


def compose_binary() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.unit
def test_compose_binary_validates_the_file_offline() -> None:
    """`config` resolves and validates the file without talking to an engine."""
    binary = compose_binary()
    if binary is None:
        # .ci/run installs Debian's docker-compose, so CI always validates; a laptop may not.
        message = "no `docker compose` plugin nor `docker-compose` here: structure checked above"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    run = [*binary, "-f", str(COMPOSE_FILE)]
    clean = {k: v for k, v in os.environ.items() if k not in DOT_ENV and k != "ENCODEQ_BIND"}

    def compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*run, *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**clean, **env},
        )

    checked = compose("config", "-q", env=DOT_ENV)
    assert checked.returncode == 0, checked.stderr
    listed = compose("config", "--services", env=DOT_ENV)
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == SERVICES
    resolved_file = yaml.safe_load(compose("config", env=DOT_ENV).stdout)
    for name, service in resolved_file["services"].items():
        for port in service.get("ports", []):
            host = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host == "127.0.0.1", (name, port)
    # Without the .env, compose refuses, naming what is missing.
    for missing in DOT_ENV:
        refused = compose("config", "-q", env={k: v for k, v in DOT_ENV.items() if k != missing})
        assert refused.returncode != 0 and missing in refused.stderr, (missing, refused.stderr)


# --- metrics: Prometheus and Grafana ------------------------------------------------------------
def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts of files in this repository: container path -> file here."""
    found = {}
    for volume in service.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        if source.startswith("."):
            found[rest.split(":")[0]] = (ROOT / source).resolve()
    return found


def scrape_jobs() -> dict[str, dict[str, Any]]:
    """prometheus.yml's scrape jobs by name, each with ``targets``: [(host, port)]."""
    jobs = {}
    for job in yaml.safe_load(PROMETHEUS_CONF.read_text())["scrape_configs"]:
        written = [t for config in job.get("static_configs", []) for t in config["targets"]]
        targets = [(host, int(port)) for host, port in (t.rsplit(":", 1) for t in written)]
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A", "one address per replica of a scaled service"
            targets += [(name, int(sd["port"])) for name in sd["names"]]
        jobs[job["job_name"]] = {**job, "targets": targets}
    return jobs


@pytest.mark.unit
def test_prometheus_scrapes_each_service_where_compose_serves_its_metrics(services: dict) -> None:
    prometheus = services["prometheus"]
    assert mounts(prometheus)["/etc/prometheus/prometheus.yml"] == PROMETHEUS_CONF
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    jobs = scrape_jobs()
    for name, job in jobs.items():
        assert job["targets"] and {h for h, _ in job["targets"]} <= set(services), name
    # Every worker replica (DNS), on the port its exporter serves, on its container's interfaces.
    worker = resolved(services["worker"])
    assert jobs["encodeq-worker"]["targets"] == [("worker", int(worker["ENCODEQ_METRICS_PORT"]))]
    assert worker["ENCODEQ_METRICS_HOST"] == "0.0.0.0" and "ports" not in services["worker"]
    # The web service, on its command's port, answering the Host name Prometheus sends.
    command = argv(services["uploader"])
    port = int(command[command.index("--port") + 1])
    assert jobs["encodeq-uploader"]["targets"] == [("uploader", port)]
    assert jobs["encodeq-uploader"].get("metrics_path", "/metrics") == "/metrics"
    written = environment(services["uploader"])["ENCODEQ_ALLOWED_HOSTS"]
    for extra in ({}, {"ENCODEQ_ALLOWED_HOSTS": "encodeq.example.org"}):  # the operator's too
        hosts = allowed_hosts("0.0.0.0", interpolate(written, {**DOT_ENV, **extra}))
        assert "uploader" in hosts and set(extra.values()) <= set(hosts), hosts
    # RabbitMQ's own plugin, enabled: the node, and per queue the families the dashboard reads.
    assert "rabbitmq_prometheus" in re.findall(r"[a-z_]+", ENABLED_PLUGINS.read_text())
    rabbit = [j for j in jobs.values() if j["targets"] == [("rabbitmq", RABBITMQ_PROMETHEUS_PORT)]]
    paths = {j.get("metrics_path", "/metrics"): j.get("params", {}) for j in rabbit}
    assert set(paths) == {"/metrics", "/metrics/detailed"}
    assert set(paths["/metrics/detailed"]["family"]) == set(RABBITMQ_FAMILIES)


def dashboard_metrics() -> set[str]:
    """Every metric name the dashboard's queries use."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return {n for e in exprs for n in re.findall(r"\b(?:encodeq|rabbitmq)_[a-z0-9_]+\b", e)}


@pytest.mark.unit
def test_grafana_is_provisioned_with_the_dashboard_of_our_metrics(services: dict) -> None:
    grafana = services["grafana"]
    files = mounts(grafana)
    provisioning = GRAFANA / "provisioning"
    assert files["/etc/grafana/provisioning"] == provisioning
    [source] = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in published(services["prometheus"])
    [provider] = yaml.safe_load((provisioning / "dashboards/encodeq.yml").read_text())["providers"]
    assert files[provider["options"]["path"]] == DASHBOARD.parent
    home = resolved(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    assert "127.0.0.1:3000:3000" in published(grafana)
    # Only the admin signs in (a password from .env); anyone else who reaches the port views.
    env = resolved(grafana)
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]
    # The panels the issue asks for, by what they query.
    used = dashboard_metrics()
    assert {
        "encodeq_jobs",
        "encodeq_task_duration_seconds_bucket",
        "encodeq_rung_encode_seconds_sum",
        "encodeq_task_retries_total",
        "encodeq_dead_letters_total",
        "encodeq_queue_messages",
        "encodeq_oldest_queued_job_age_seconds",
        "rabbitmq_detailed_queue_messages_ready",
    } <= used
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.95," in exprs
    # Every name of ours is one a scrape of ours shows (core/metrics.py).
    ours = {n for n in used if n.startswith("encodeq_")}
    assert ours <= metrics.exposed_names(), ours - metrics.exposed_names()


def beam_names(path: Path) -> bytes:
    """The atoms and literals of a compiled Erlang module (its chunks ``AtU8`` and ``LitT``)."""
    data = path.read_bytes()
    assert data[:4] == b"FOR1" and data[8:12] == b"BEAM", path
    parts, at = [], 12
    while at + 8 <= len(data):
        chunk, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "big")
        body = data[at + 8 : at + 8 + size]
        if chunk == b"LitT":  # 4 bytes of uncompressed size, then zlib
            parts.append(zlib.decompress(body[4:]))
        elif chunk in (b"AtU8", b"Atom"):
            parts.append(body)
        at += 8 + (size + 3) // 4 * 4
    return b"".join(parts)


@pytest.mark.unit
def test_the_dashboards_rabbitmq_metrics_are_the_plugins_own() -> None:
    """Each ``rabbitmq_`` name the dashboard queries, and each family Prometheus asks for, is one
    the rabbitmq_prometheus plugin defines (the local server's, when installed)."""
    plugin = "rabbitmq_server-*/plugins/rabbitmq_prometheus-*/ebin/*.beam"
    beams = list(Path("/usr/lib/rabbitmq/lib").glob(plugin))
    if not beams:
        pytest.skip("no local rabbitmq_prometheus plugin to check the dashboard's names against")
    names = b"".join(beam_names(b) for b in beams)

    def defined(name: str) -> bool:  # an atom, length-prefixed: not a part of a longer one
        return bytes([len(name)]) + name.encode() in names

    theirs = {n for n in dashboard_metrics() if n.startswith("rabbitmq_")}
    assert theirs
    for name in theirs:  # the detailed endpoint prefixes the plugin's names
        assert name.startswith("rabbitmq_detailed_"), name
        assert defined(name.removeprefix("rabbitmq_detailed_")), name
    assert all(defined(family) for family in RABBITMQ_FAMILIES)


# --- the services' commands, run natively ---------------------------------------------------------
def compose_settings(service: dict[str, Any]) -> dict[str, str]:
    """A service's compose settings, less where the services are (this run's broker and S3)."""
    where = ("ENCODEQ_BROKER_URL", "ENCODEQ_S3_")
    return {k: v for k, v in resolved(service).items() if not k.startswith(where)}


#: Where the compose worker serves its metrics here: a free port on loopback, not the
#: container's (9808 on every interface of a shared machine).
COMPOSE_WORKER_METRICS = {
    "ENCODEQ_METRICS_PORT": str(free_port()),
    "ENCODEQ_METRICS_HOST": "127.0.0.1",
}


@pytest.fixture(scope="module")
def compose_worker(services: dict):
    """The compose worker's command, exactly as the container runs it, here."""
    fleet = WorkerFleet()
    env = compose_settings(services["worker"]) | COMPOSE_WORKER_METRICS
    worker = fleet.start("compose", argv=argv(services["worker"]), env=env)
    yield worker
    fleet.stop_all()


def test_compose_worker_command_consumes_and_completes_a_job(
    compose_worker, services: dict, media_dir: Path
) -> None:
    command = argv(services["worker"])
    assert command[: len(WORKER_COMMAND)] == WORKER_COMMAND
    assert consumers(CONTROL_QUEUE_NAME) >= 1 and consumers(ENCODE_QUEUE_NAME) >= 1
    concurrency = int(command[command.index("--concurrency") + 1])
    wait_for(
        lambda: len(compose_worker.pool_children()) == concurrency,
        30,
        f"{concurrency} pool processes",
    )

    source = make_video(media_dir / "compose.mp4", 320, 180, duration=2)
    result = encodeq("upload", str(source), "--wait", "--json", "--timeout", "180")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads(result.stdout)
    assert manifest["state"] == "completed", manifest["error"]
    assert manifest["master_playlist"]
    # No --hostname in compose: the node is named encodeq-<pid>@<container hostname>.
    node = f"encodeq-{compose_worker.pid}@"
    assert manifest["renditions"]
    assert all(r["worker"].startswith(node) for r in manifest["renditions"]), manifest["renditions"]
    # ... and its exporter (the one of its process tree) counted the job's runs, finalize last.
    url = f"http://127.0.0.1:{COMPOSE_WORKER_METRICS['ENCODEQ_METRICS_PORT']}/metrics"
    wait_for(
        lambda: (
            'encodeq_task_duration_seconds_count{outcome="ok",task="finalize"}' in http_get(url)[1]
        ),
        30,
        "the compose worker's metrics to count the job",
    )
    assert compose_worker.proc.poll() is None


@pytest.mark.slow
def test_compose_worker_stops_warm_within_its_grace_period(services: dict) -> None:
    """`docker compose stop` sends stop_signal, then waits stop_grace_period: a warm shutdown
    leaves the work queues and exits 0."""
    worker_service = services["worker"]
    fleet = WorkerFleet()
    try:
        worker = fleet.start("compose-stop", argv=argv(worker_service))
        before = consumers(ENCODE_QUEUE_NAME)
        worker.proc.send_signal(getattr(signal, worker_service.get("stop_signal", "SIGTERM")))
        returncode = worker.proc.wait(timeout=60)
        assert returncode == 0, worker.output()[-3000:]
        assert "Warm shutdown" in worker.output()
        wait_for(lambda: consumers(ENCODE_QUEUE_NAME) < before, 30, "its consumer to be gone")
    finally:
        fleet.stop_all()


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


@pytest.mark.slow
def test_flower_command_asks_for_a_password_and_sees_the_worker(
    compose_worker, services: dict
) -> None:
    flower = services["flower"]
    command = argv(flower)
    port = free_port()
    written = environment(flower)
    credentials = resolved(flower)["FLOWER_BASIC_AUTH"]
    assert written["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")  # no default
    assert f"127.0.0.1:{written['FLOWER_PORT']}:{written['FLOWER_PORT']}" in published(flower)
    env = {
        # Flower reads these where compose sets them; the compose port is taken on a shared
        # machine, so the same variable moves it.
        "FLOWER_BASIC_AUTH": credentials,
        "FLOWER_PORT": str(port),
        "FLOWER_ADDRESS": "127.0.0.1",
    }
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"encodeq-flower-{os.getpid()}.log"
    program = shutil.which(command[0])
    assert program, f"{command[0]} is not installed"
    assert importlib.util.find_spec("flower"), "Flower is in the test extra"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    proc = subprocess.Popen(
        [program, *command[1:]],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**clean, **env},
        start_new_session=True,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    auth = basic(credentials)
    try:
        wait_for(
            lambda: proc.poll() is not None or http_get(f"{base}/healthcheck", auth)[0] == 200,
            60,
            "Flower to answer",
        )
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        user = credentials.split(":", 1)[0]
        for wrong in ({}, basic(f"{user}:wrong"), basic("admin:admin"), basic(f"{user}:")):
            for path in ("/", "/api/workers", "/tasks"):
                assert http_get(f"{base}{path}", wrong)[0] == 401, (path, wrong)
        node = f"encodeq-{compose_worker.pid}@"

        def sees_worker() -> bool:
            status, body = http_get(f"{base}/api/workers?refresh=1", auth)
            return status == 200 and any(name.startswith(node) for name in json.loads(body))

        wait_for(sees_worker, 60, "Flower to list the compose worker", every=1)
        status, page = http_get(f"{base}/", auth)
        assert status == 200 and "Flower" in page
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


# --- well-known secrets off loopback --------------------------------------------------------------
#: (environment, bind address) -> refused? A sweep over every secret the check knows, each where it
#: is exposed and where it is not.
EXPOSURE_CASES = [
    ({"ENCODEQ_BROKER_URL": "amqp://guest:guest@rabbitmq:5672//"}, None, True),
    ({"ENCODEQ_BROKER_URL": "amqp://rabbitmq:5672//"}, None, True),  # kombu logs in as guest
    (
        {"ENCODEQ_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//;amqp://guest:guest@b:5672//"},
        None,
        True,
    ),
    ({"ENCODEQ_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"}, None, False),
    ({"ENCODEQ_BROKER_URL": "amqp://guest:guest@localhost:5672//"}, None, False),
    ({"ENCODEQ_BROKER_URL": "amqp://guest:guest@[::1]:5672//"}, None, False),
    ({"ENCODEQ_BROKER_URL": f"amqp://encodeq:{secrets.token_hex(8)}@rabbitmq:5672//"}, None, False),
    (
        {"ENCODEQ_S3_ENDPOINT": "http://minio:9000", "ENCODEQ_S3_SECRET_KEY": "minioadmin"},
        None,
        True,
    ),
    (
        {
            "ENCODEQ_S3_PUBLIC_ENDPOINT": "http://203.0.113.7:9000",
            "ENCODEQ_S3_SECRET_KEY": "minioadmin",
        },
        None,
        True,
    ),
    (
        {"ENCODEQ_S3_ENDPOINT": "http://127.0.0.1:9000", "ENCODEQ_S3_SECRET_KEY": "minioadmin"},
        None,
        False,
    ),
    (
        {"ENCODEQ_S3_ENDPOINT": "http://minio:9000", "ENCODEQ_S3_SECRET_KEY": secrets.token_hex(8)},
        None,
        False,
    ),
    ({"ENCODEQ_API_TOKEN": "encodeq-local-token"}, "0.0.0.0", True),
    ({"ENCODEQ_API_TOKEN": "encodeq-local-token"}, "::", True),
    ({"ENCODEQ_API_TOKEN": "encodeq-local-token"}, "127.0.0.1", False),
    ({"ENCODEQ_API_TOKEN": ""}, "0.0.0.0", False),  # generated at start
    ({"ENCODEQ_API_TOKEN": secrets.token_hex(8)}, "0.0.0.0", False),
]


@pytest.mark.unit
def test_well_known_secrets_off_loopback_are_found() -> None:
    base = {
        "ENCODEQ_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
        "ENCODEQ_S3_ENDPOINT": "http://127.0.0.1:9000",
        "ENCODEQ_S3_SECRET_KEY": "minioadmin",
        "ENCODEQ_S3_PUBLIC_ENDPOINT": "",
        "ENCODEQ_API_TOKEN": "",
    }
    for env, bind, refused in EXPOSURE_CASES:
        fields = {k.removeprefix("ENCODEQ_").lower(): v for k, v in {**base, **env}.items()}
        found = exposed_defaults(Settings(**fields), bind)
        assert bool(found) == refused, (env, bind, found)


@pytest.mark.unit
def test_worker_serve_and_minio_setup_refuse_well_known_secrets_off_loopback() -> None:
    """The commands themselves: exit 2 with the reason before connecting or listening."""
    cases = [
        (["worker"], {"ENCODEQ_BROKER_URL": "amqp://guest:guest@rabbitmq:5672//"}, "broker"),
        (
            ["worker"],
            {"ENCODEQ_S3_ENDPOINT": "http://minio:9000", "ENCODEQ_S3_SECRET_KEY": "minioadmin"},
            "S3",
        ),
        (
            ["serve", "--host", "0.0.0.0", "--port", str(free_port())],
            {"ENCODEQ_API_TOKEN": "encodeq-local-token"},
            "ENCODEQ_API_TOKEN",
        ),
        (
            ["serve", "--port", str(free_port())],
            {"ENCODEQ_BROKER_URL": "amqp://guest:guest@rabbitmq:5672//"},
            "broker",
        ),
        (
            ["minio-setup"],
            {
                "ENCODEQ_S3_ENDPOINT": "http://minio:9000",
                "ENCODEQ_S3_ACCESS_KEY": "minioadmin",
                "ENCODEQ_S3_SECRET_KEY": "minioadmin",
            },
            "S3",
        ),
    ]
    commands = [(["encodeq", *args], env, names) for args, env, names in cases]
    # and the services' own entry points, as compose runs them (`python -m worker ...`)
    compose_broker = {"ENCODEQ_BROKER_URL": "amqp://guest:guest@rabbitmq:5672//"}
    commands.append((WORKER_COMMAND, compose_broker, "broker"))
    serve = [*SERVE_COMMAND, "--host", "0.0.0.0", "--port", str(free_port())]
    commands.append((serve, {"ENCODEQ_API_TOKEN": "encodeq-local-token"}, "ENCODEQ_API_TOKEN"))
    for args, env, names in commands:
        result = subprocess.run(
            resolve(args), capture_output=True, text=True, timeout=60, env={**os.environ, **env}
        )
        assert result.returncode == 2, (args, env, result.stdout, result.stderr[-2000:])
        assert "well-known" in result.stderr and names in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


# --- least-privilege storage users ----------------------------------------------------------------
def test_minio_setup_command_runs_natively_and_fails_loudly_without_an_admin_api(
    services: dict,
) -> None:
    """The compose command as written: the buckets are made with S3 calls; the users and policies
    need MinIO's admin API, which this S3 server (moto) lacks: a clear error, exit 1."""
    command = argv(services["minio-setup"])
    assert command == ["encodeq", "minio-setup"]
    keys = {
        "ENCODEQ_WORKER_S3_ACCESS_KEY": "encodeq-worker",
        "ENCODEQ_WORKER_S3_SECRET_KEY": secrets.token_hex(16),
        "ENCODEQ_DASHBOARD_S3_ACCESS_KEY": "encodeq-dashboard",
        "ENCODEQ_DASHBOARD_S3_SECRET_KEY": secrets.token_hex(16),
    }
    prefix = f"setup{secrets.token_hex(3)}-"
    result = encodeq(*command[1:], env={**keys, "ENCODEQ_BUCKET_PREFIX": prefix}, timeout=120)
    assert result.returncode == 1, (result.stdout, result.stderr[-2000:])
    assert "admin API" in result.stderr and "Traceback" not in result.stderr
    settings = Settings(bucket_prefix=prefix)
    client = Minio(
        urlsplit(settings.s3_endpoint).netloc,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        secure=False,
        region=settings.s3_region,
    )
    assert all(client.bucket_exists(settings.bucket(b)) for b in BUCKETS)
    missing = encodeq(*command[1:], env={"ENCODEQ_BUCKET_PREFIX": prefix}, timeout=60)
    assert missing.returncode == 1 and "ENCODEQ_WORKER_S3" in missing.stderr


class PolicyServer:
    """A moto S3+IAM server that enforces IAM policies once set up: each project role is an IAM
    user with its policy from console/minio_setup.py attached, and S3 requests signed with its key
    are allowed or denied by those documents (AWS's policy language, which MinIO's is a subset of).
    """

    #: Requests ``setup`` makes before enforcement starts (moto's INITIAL_NO_AUTH_ACTION_COUNT):
    #: 5 buckets, 5 seed objects, per role user + policy + attach + key (8), the HeadBucket policy
    #: and its two attachments (3).
    SETUP_REQUESTS = 21

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(self.SETUP_REQUESTS)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.keys: dict[str, tuple[str, str]] = {}

    def wait(self) -> None:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return self.proc.poll() is not None
            return True

        wait_for(listening, 30, "the policy server")
        assert self.proc.poll() is None

    def setup(self, settings: Settings) -> None:
        import boto3

        kw = {
            "endpoint_url": self.endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "setup",
            "aws_secret_access_key": "setup",
        }
        s3, iam = boto3.client("s3", **kw), boto3.client("iam", **kw)
        for logical in BUCKETS:
            s3.create_bucket(Bucket=settings.bucket(logical))
            s3.put_object(Bucket=settings.bucket(logical), Key=SEED[logical], Body=b"seed")
        # moto names HeadBucket an action of its own; AWS and MinIO authorize it by ListBucket.
        quirk = iam.create_policy(
            PolicyName="moto-head-bucket",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:HeadBucket", "Resource": "*"}],
                }
            ),
        )["Policy"]["Arn"]
        for role, build in minio_setup.POLICIES.items():
            iam.create_user(UserName=role)
            arn = iam.create_policy(PolicyName=role, PolicyDocument=json.dumps(build(settings)))
            iam.attach_user_policy(UserName=role, PolicyArn=arn["Policy"]["Arn"])
            iam.attach_user_policy(UserName=role, PolicyArn=quirk)
            key = iam.create_access_key(UserName=role)["AccessKey"]
            self.keys[role] = (key["AccessKeyId"], key["SecretAccessKey"])

    def client(self, role: str | None) -> Any:
        access, secret = self.keys[role] if role else ("nobody", "nobody-secret")
        return Minio(
            f"127.0.0.1:{self.port}",
            access_key=access,
            secret_key=secret,
            secure=False,
            region="us-east-1",
        )

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


#: An object that exists in each bucket before the roles try anything.
SEED = {
    UPLOADS: "j1/source.mp4",
    JOBS: "j1/job.json",
    RENDITIONS: "j1/720p/index.m3u8",
    FAILURES: "task.json",
    AUDIT: "20260101T000000.000000-00000000.json",
}

#: (role, action, bucket, key) -> allowed? What each role must and must not be able to do.
ACCESS = [
    # workers: read sources, write their chunks beside them, write outputs, never the audit trail
    (minio_setup.WORKER, "get", UPLOADS, SEED[UPLOADS], True),
    (minio_setup.WORKER, "put", UPLOADS, "j1/source.mp4", False),
    (minio_setup.WORKER, "put", UPLOADS, "j2/source.mkv", False),
    (minio_setup.WORKER, "delete", UPLOADS, SEED[UPLOADS], False),
    (minio_setup.WORKER, "put", UPLOADS, "j1/chunks/360p/00000.ts", True),
    (minio_setup.WORKER, "get", UPLOADS, "j1/chunks/360p/00000.ts", True),
    (minio_setup.WORKER, "delete", UPLOADS, "j1/chunks/360p/00000.ts", True),
    (minio_setup.WORKER, "list", UPLOADS, "", True),  # moto mis-signs a prefix with a slash
    (minio_setup.WORKER, "put", RENDITIONS, "j1/720p/seg_00000.ts", True),
    (minio_setup.WORKER, "get", RENDITIONS, SEED[RENDITIONS], True),
    (minio_setup.WORKER, "put", JOBS, "j1/job.json", True),
    (minio_setup.WORKER, "get", JOBS, SEED[JOBS], True),
    (minio_setup.WORKER, "put", FAILURES, "task-2.json", True),
    (minio_setup.WORKER, "put", AUDIT, "20260101T000001.000000-11111111.json", False),
    (minio_setup.WORKER, "put", AUDIT, SEED[AUDIT], False),
    (minio_setup.WORKER, "delete", AUDIT, SEED[AUDIT], False),
    (minio_setup.WORKER, "get", AUDIT, SEED[AUDIT], False),
    (minio_setup.WORKER, "list", AUDIT, "", False),
    (minio_setup.WORKER, "make_bucket", "elsewhere", "", False),
    # the dashboard: write uploads and jobs, read the rest, append to the audit trail
    (minio_setup.DASHBOARD, "put", UPLOADS, "j3/source.mp4", True),
    (minio_setup.DASHBOARD, "put", JOBS, "j3/job.json", True),
    # (a presigned playback URL carries exactly this permission of its signer; moto cannot
    # evaluate presigned requests under IAM enforcement, so the plain GET stands for it)
    (minio_setup.DASHBOARD, "get", RENDITIONS, SEED[RENDITIONS], True),
    (minio_setup.DASHBOARD, "put", RENDITIONS, "j1/720p/index.m3u8", False),
    (minio_setup.DASHBOARD, "get", FAILURES, SEED[FAILURES], True),
    (minio_setup.DASHBOARD, "put", FAILURES, "forged.json", False),
    (minio_setup.DASHBOARD, "put", AUDIT, "20260101T000002.000000-22222222.json", True),
    (minio_setup.DASHBOARD, "get", AUDIT, SEED[AUDIT], True),
    (minio_setup.DASHBOARD, "list", AUDIT, "", True),
    (minio_setup.DASHBOARD, "delete", AUDIT, SEED[AUDIT], False),
    (minio_setup.DASHBOARD, "make_bucket", "elsewhere", "", False),
]


@pytest.fixture(scope="module")
def policy_server() -> Iterator[PolicyServer]:
    server = PolicyServer()
    try:
        server.wait()
        server.setup(Settings(bucket_prefix=""))
        yield server
    finally:
        server.stop()


def attempt(client: Any, action: str, bucket: str, key: str) -> bool:
    """Whether the S3 server let ``client`` do it (AccessDenied: False)."""
    try:
        if action == "get":
            client.get_object(bucket, key).read()
        elif action == "put":
            client.put_object(bucket, key, io.BytesIO(b"data"), 4)
        elif action == "delete":
            client.remove_object(bucket, key)
        elif action == "list":
            list(client.list_objects(bucket, key, recursive=True))
        elif action == "make_bucket":
            client.make_bucket(bucket)
        else:  # pragma: no cover
            raise AssertionError(action)
    except S3Error as exc:
        if exc.code == "AccessDenied":
            return False
        raise
    return True


def test_each_role_can_do_exactly_what_its_policy_says(policy_server: PolicyServer) -> None:
    # Enforcement is on (a miscounted setup would leave it off and allow everything)...
    with pytest.raises(S3Error, match=r"InvalidAccessKeyId"):
        attempt(policy_server.client(None), "get", UPLOADS, SEED[UPLOADS])
    wrong = []
    for role, action, logical, key, allowed in ACCESS:
        bucket = Settings(bucket_prefix="").bucket(logical) if logical in SEED else logical
        if attempt(policy_server.client(role), action, bucket, key) != allowed:
            wrong.append((role, action, logical, key, "allowed" if allowed else "denied"))
    assert not wrong, wrong


@pytest.mark.unit
def test_policies_name_every_bucket_with_the_prefix() -> None:
    """A bucket prefix (ENCODEQ_BUCKET_PREFIX) is honoured: every resource is one of ours."""
    prefix = "tenant7-"
    settings = Settings(bucket_prefix=prefix)
    ours = {settings.bucket(b) for b in BUCKETS}
    for role, build in minio_setup.POLICIES.items():
        for statement in build(settings)["Statement"]:
            for resource in statement["Resource"]:
                bucket = resource.removeprefix("arn:aws:s3:::").split("/", 1)[0]
                assert bucket in ours, (role, resource)
