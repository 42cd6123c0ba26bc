"""docker-compose.yml, the Dockerfile and the RabbitMQ files, checked without a Docker engine.

The structure is read with PyYAML and checked against the project's own settings; the commands the
containers run (the worker's, Flower's) are run here natively, exactly as written, against this
test run's RabbitMQ vhost and S3 server, and must do their job. When a compose binary is installed
(`docker compose` or `docker-compose`), it validates the file offline too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from support import (
    CONTROL_QUEUE_NAME,
    ENCODE_QUEUE_NAME,
    WorkerFleet,
    consumers,
    encodeq,
    make_video,
    wait_for,
)

from config.settings import Settings
from encodeq.s3server import free_port
from worker.app import HARD_LIMIT_MARGIN_S

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
RABBITMQ_CONF = ROOT / "config" / "rabbitmq" / "rabbitmq.conf"
ENABLED_PLUGINS = ROOT / "config" / "rabbitmq" / "enabled_plugins"

SERVICES = {"minio", "rabbitmq", "worker", "flower", "uploader"}
#: The only credentials allowed in the repository: the well-known local defaults.
LOCAL_DEFAULTS = {"guest", "minioadmin", "encodeq-local-token"}
SECRET_NAME = re.compile(r"PASS|SECRET|KEY|TOKEN|USER", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")
SETTINGS_NAMES = {f"ENCODEQ_{name.upper()}" for name in Settings.model_fields}


# --- reading the files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` with nothing set in the environment: the local defaults."""
    return INTERPOLATION.sub(lambda m: m["default"] or "", value)


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


def effective_time_limit_s(worker: dict[str, Any]) -> int:
    """The encode soft limit the compose worker runs with: its environment, else the default."""
    value = environment(worker).get("ENCODEQ_ENCODE_TIME_LIMIT_S")
    if value is not None:
        return int(interpolate(value))
    return int(Settings.model_fields["encode_time_limit_s"].default)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


# --- structure ------------------------------------------------------------------------------------
def test_every_service_is_there_and_nothing_else(services: dict) -> None:
    assert set(services) == SERVICES


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


def test_minio_has_its_api_console_volume_and_healthcheck(compose: dict, services: dict) -> None:
    minio = services["minio"]
    assert {"9000:9000", "9001:9001"} <= {str(p) for p in minio["ports"]}
    assert "--console-address" in minio["command"]
    [volume] = minio["volumes"]
    name, _, target = volume.partition(":")
    assert name in compose["volumes"] and target == "/data" and "/data" in minio["command"]
    assert minio["healthcheck"]["test"]


def test_rabbitmq_mounts_its_config_and_has_the_management_ui(services: dict) -> None:
    rabbitmq = services["rabbitmq"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in rabbitmq["volumes"]}
    assert (ROOT / mounts["/etc/rabbitmq/rabbitmq.conf"]).resolve() == RABBITMQ_CONF
    assert (ROOT / mounts["/etc/rabbitmq/enabled_plugins"]).resolve() == ENABLED_PLUGINS
    assert "15672:15672" in {str(p) for p in rabbitmq["ports"]}
    assert rabbitmq["healthcheck"]["test"]
    plugins = ENABLED_PLUGINS.read_text().strip()
    assert re.fullmatch(r"\[[a-z_,\s]*\]\.", plugins), "enabled_plugins is an Erlang list term"
    assert "rabbitmq_management" in re.findall(r"[a-z_]+", plugins)


def test_consumer_timeout_outlasts_the_longest_encode(services: dict) -> None:
    """RabbitMQ closes a channel holding a delivery longer than consumer_timeout (milliseconds);
    a late-acked encode holds its delivery up to the hard time limit."""
    timeout_ms = int(rabbitmq_conf()["consumer_timeout"])
    hard_limit_s = effective_time_limit_s(services["worker"]) + HARD_LIMIT_MARGIN_S
    assert timeout_ms / 1000 > hard_limit_s


def test_rabbitmq_conf_keys_are_known_to_rabbitmq() -> None:
    """Each key is a mapping of the RabbitMQ config schema (the local server's, when installed)."""
    schemas = list(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/plugins/*/priv/schema/*"))
    if not schemas:
        pytest.skip("no local RabbitMQ config schema to check rabbitmq.conf's keys against")
    mappings = set()
    for schema in schemas:
        mappings |= set(re.findall(r'\{mapping,\s*"([^"]+)"', schema.read_text(errors="replace")))
    assert set(rabbitmq_conf()) <= mappings


def test_worker_is_scalable(services: dict) -> None:
    """`docker compose up --scale worker=N`: nothing that two replicas could both claim."""
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    # Celery names the node encodeq-<pid>@<hostname>; the pid is the same in every replica, so the
    # container hostname (unique by default) must not be fixed.
    assert "hostname" not in worker
    assert worker["build"] in (".", {"context": "."})


def test_worker_waits_for_healthy_services_and_stops_warm(services: dict) -> None:
    worker = services["worker"]
    for dependency in ("rabbitmq", "minio"):
        assert worker["depends_on"][dependency]["condition"] == "service_healthy"
        assert services[dependency]["healthcheck"]["test"]
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"  # Celery's warm shutdown
    hard_limit_s = effective_time_limit_s(worker) + HARD_LIMIT_MARGIN_S
    assert duration_s(worker["stop_grace_period"]) >= hard_limit_s
    assert services["flower"]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def test_worker_environment_points_at_the_compose_services(services: dict) -> None:
    env = {k: interpolate(v) for k, v in environment(services["worker"]).items()}
    broker = urlsplit(env["ENCODEQ_BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port or 5672) == ("amqp", "rabbitmq", 5672)
    s3 = urlsplit(env["ENCODEQ_S3_ENDPOINT"])
    assert (s3.hostname, s3.port) == ("minio", 9000)
    rabbit_env = {k: interpolate(v) for k, v in environment(services["rabbitmq"]).items()}
    minio_env = {k: interpolate(v) for k, v in environment(services["minio"]).items()}
    assert (broker.username, broker.password) == (
        rabbit_env.get("RABBITMQ_DEFAULT_USER", "guest"),
        rabbit_env.get("RABBITMQ_DEFAULT_PASS", "guest"),
    )
    assert env["ENCODEQ_S3_ACCESS_KEY"] == minio_env["MINIO_ROOT_USER"]
    assert env["ENCODEQ_S3_SECRET_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    flower_env = environment(services["flower"])
    assert flower_env["ENCODEQ_BROKER_URL"] == environment(services["worker"])["ENCODEQ_BROKER_URL"]


def test_encodeq_variables_are_real_settings(services: dict) -> None:
    """Every ENCODEQ_* name in compose and the Dockerfile is a field of config.settings.Settings;
    the worker is configured through those alone."""
    text = COMPOSE_FILE.read_text() + DOCKERFILE.read_text()
    named = set(re.findall(r"\bENCODEQ_[A-Z0-9_]+", text))
    assert named, "compose configures the services through ENCODEQ_* variables"
    assert named <= SETTINGS_NAMES, f"not settings: {sorted(named - SETTINGS_NAMES)}"
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


def test_no_secrets_beyond_local_defaults(services: dict) -> None:
    """Credentials are `${VAR:-local default}`: overridable, and only guest/minioadmin written."""

    def check_secret(where: str, value: str) -> None:
        literal = INTERPOLATION.sub("", value)
        assert not literal or literal in LOCAL_DEFAULTS, f"{where}: hard-coded {value!r}"
        for m in INTERPOLATION.finditer(value):
            assert m["default"] in LOCAL_DEFAULTS, f"{where}: default {m['default']!r}"

    checked = 0
    for name, service in services.items():
        for key, value in environment(service).items():
            credentials = url_credentials(value)
            if credentials is not None:
                check_secret(f"{name}.{key} user", credentials[0])
                check_secret(f"{name}.{key} password", credentials[1])
                checked += 1
            elif SECRET_NAME.search(key):
                check_secret(f"{name}.{key}", value)
                checked += 1
    assert checked >= 6  # minio's two, rabbitmq's two, the worker's broker URL and S3 keys
    dockerfile = DOCKERFILE.read_text()
    assert not re.search(r"(PASS|SECRET|ACCESS_KEY)\w*\s*=", dockerfile), "no credentials baked in"


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


def test_dockerignore_keeps_what_the_install_needs() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".git" in patterns
    needed = ["pyproject.toml", "README.md", "encodeq", "config", "config/rabbitmq/rabbitmq.conf",
              "worker", "uploader", "dlq_inspector"]  # fmt: skip
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
    checked = subprocess.run([*run, "config", "-q"], capture_output=True, text=True, timeout=60,
                             cwd=ROOT)  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    listed = subprocess.run([*run, "config", "--services"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == SERVICES


# --- the services' commands, run natively ---------------------------------------------------------
@pytest.fixture(scope="module")
def compose_worker(services: dict):
    """The compose worker's command, exactly as the container runs it, here."""
    fleet = WorkerFleet()
    worker = fleet.start("compose", argv=argv(services["worker"]))
    yield worker
    fleet.stop_all()


def test_compose_worker_command_consumes_and_completes_a_job(
    compose_worker, services: dict, media_dir: Path
) -> None:
    command = argv(services["worker"])
    assert command[:2] == ["encodeq", "worker"]
    assert consumers(CONTROL_QUEUE_NAME) >= 1 and consumers(ENCODE_QUEUE_NAME) >= 1
    concurrency = int(command[command.index("--concurrency") + 1])
    wait_for(lambda: len(compose_worker.pool_children()) == concurrency, 30,
             f"{concurrency} pool processes")  # fmt: skip

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
    assert compose_worker.proc.poll() is None


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


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def test_flower_command_serves_the_dashboard_and_sees_the_worker(
    compose_worker, services: dict
) -> None:
    flower = services["flower"]
    command = argv(flower)
    port = free_port()
    env_overrides = {
        # The compose port is taken on a shared machine: the same variable Flower reads there.
        "FLOWER_PORT": str(port),
        "FLOWER_ADDRESS": "127.0.0.1",
        "FLOWER_UNAUTHENTICATED_API": "true",  # test only: read the API without a login
    }
    assert "FLOWER_PORT" in environment(flower)
    assert f"{environment(flower)['FLOWER_PORT']}:{environment(flower)['FLOWER_PORT']}" in {
        str(p) for p in flower["ports"]
    }
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"encodeq-flower-{os.getpid()}.log"
    program = shutil.which(command[0])
    assert program, f"{command[0]} is not installed"
    assert importlib.util.find_spec("flower"), "Flower is in the test extra"
    proc = subprocess.Popen(
        [program, *command[1:]], stdout=log.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, **env_overrides}, start_new_session=True, cwd=ROOT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is not None or http_get(f"{base}/healthcheck") == (200, "OK"),
                 60, "Flower to answer")  # fmt: skip
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        node = f"encodeq-{compose_worker.pid}@"

        def sees_worker() -> bool:
            status, body = http_get(f"{base}/api/workers?refresh=1")
            return status == 200 and any(name.startswith(node) for name in json.loads(body))

        wait_for(sees_worker, 60, "Flower to list the compose worker", every=1)
        status, page = http_get(f"{base}/")
        assert status == 200 and "Flower" in page
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
