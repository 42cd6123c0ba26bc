"""``scripts/setup`` on machines this one is not: ffmpeg missing, other systems, no root. It
must name the exact command for the system and change nothing (``--print``, or not root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SETUP = Path(__file__).resolve().parent.parent / "scripts" / "setup"


def run_setup(tmp_path: Path, os_id: str, uid: int = 0, *args: str) -> subprocess.CompletedProcess:
    """The script with a PATH that has no ffmpeg (RabbitMQ present), on a system that says it is
    ``os_id``, as user ``uid``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("dirname", "uname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for tool, out in (("id", str(uid)), ("rabbitmqctl", "")):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho {out}\n")
        (bin_dir / tool).chmod(0o755)
    os_release = tmp_path / "os-release"
    os_release.write_text(f"ID={os_id}\n")
    env = {"PATH": str(bin_dir), "ENCODEQ_OS_RELEASE": str(os_release), "HOME": str(tmp_path)}
    return subprocess.run(
        ["/bin/bash", str(SETUP), *args], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("os_id", "command"),
    [
        ("debian", "apt-get install -y ffmpeg"),
        ("ubuntu", "apt-get install -y ffmpeg"),
        ("fedora", "dnf install -y ffmpeg-free"),
        ("arch", "pacman -S --needed ffmpeg"),
        ("alpine", "apk add ffmpeg"),
    ],
)
def test_a_missing_ffmpeg_is_named_with_the_systems_own_command(tmp_path, os_id, command) -> None:
    result = run_setup(tmp_path, os_id, 0, "--print")
    assert result.returncode == 2, result.stderr
    assert "encodeq needs: ffmpeg" in result.stderr
    assert f"run: {command}" in result.stderr


def test_without_root_it_says_sudo_and_installs_nothing(tmp_path) -> None:
    result = run_setup(tmp_path, "debian", 1000)
    assert result.returncode == 2, result.stderr
    assert "run: sudo apt-get update && sudo apt-get install -y ffmpeg" in result.stderr
    assert "installing" not in result.stderr  # neither apt-get nor pip ran


def test_nothing_missing_here() -> None:
    """This machine (CI installed what it needs through the same script): nothing to install."""
    result = subprocess.run(
        ["bash", str(SETUP), "--test", "--print"],
        capture_output=True,
        text=True,
        timeout=30,
        env=os.environ,
    )
    assert result.returncode == 0 and "nothing missing" in result.stderr, result.stderr
