"""The one installer of system packages (deploy/system-packages.sh) that `make demo`, `make test`
and CI call: idempotent when everything is there, and a one-line instruction where it cannot
install (no apt-get, or not root), never a half-done install."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import REPO

SCRIPT = REPO / "deploy" / "system-packages.sh"
BASH = "/bin/bash"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASH, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env=env, check=False)


def test_everything_present_is_a_no_op() -> None:
    # `make test` ran the installer before this test: a second run finds everything.
    for purpose in ("demo", "test"):
        result = run(purpose)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"system packages for '{purpose}': all present"


def test_unknown_purpose_is_a_usage_error() -> None:
    result = run("everything")
    assert result.returncode == 2
    assert "usage:" in result.stderr and "'everything'" in result.stderr


def test_without_apt_get_it_prints_the_one_command_to_run(tmp_path: Path) -> None:
    # An empty PATH: neither the programs nor apt-get are found, as on a machine without them.
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run("test", env={"PATH": str(empty)})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("missing system packages for 'test': ")
    command = line.split("with: ", 1)[1]
    assert command.startswith("sudo apt-get install -y --no-install-recommends ")
    packages = set(command.split()[5:])
    assert {"openjdk-17-jre-headless", "maven", "prometheus", "chromium"} <= packages
    # Servers looked up by their path are found without PATH (PostgreSQL's and Postfix's binaries).
    assert not {"postgresql", "postfix"} & packages
