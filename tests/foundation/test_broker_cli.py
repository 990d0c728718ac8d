"""`estop broker start|stop|status` as a user runs them.

The session's broker is shared by every test: these tests only look at it, or run the commands
against another data folder and other ports, and never stop it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.kafka.broker import LocalBroker
from streams.lab.broker import BrokerHandle
from streams.settings import load_settings
from tests.support import free_port, listen_on_free_port, run_estop

KAFKA_VERSION = "4.1.1"  # the version the project chose (works with librdkafka and aiokafka)


@pytest.fixture
def local_broker(broker: BrokerHandle) -> LocalBroker:
    """The project's own broker under the default data folder, when that is the session's."""
    local = LocalBroker(load_settings())
    if not broker.origin.startswith("local") or not local.status().running:
        pytest.skip(f"the session's broker is not the project's local one ({broker.origin})")
    return local


def isolated_env(tmp_path: Path, broker_port: int | None = None,
                 controller_port: int | None = None) -> dict[str, str]:
    """A data folder and ports of its own, so nothing here can touch the shared broker."""
    return {
        "ESTOP_DATA_DIR": str(tmp_path / "data"),
        "ESTOP_BROKER_PORT": str(broker_port or free_port()),
        "ESTOP_CONTROLLER_PORT": str(controller_port or free_port()),
    }


@pytest.mark.broker
def test_status_says_running_with_address_and_version(local_broker: LocalBroker) -> None:
    """status names the address and the Kafka version, and that version is what runs."""
    result = run_estop("broker", "status")

    assert result.returncode == 0, result.stderr
    match = re.search(r"broker running \(pid (\d+)\) at (\S+), Apache Kafka (\S+)", result.stdout)
    assert match, result.stdout
    pid, address, version = int(match[1]), match[2], match[3]
    assert address == local_broker.address
    assert version == KAFKA_VERSION
    # The pid is a live Kafka server whose classpath holds exactly that version's jar.
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"kafka.Kafka" in argv
    classpath = Path(argv[argv.index(b"-cp") + 1].decode().rstrip("*"))
    assert (classpath / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()


@pytest.mark.broker
def test_start_when_running_says_so_and_exits_0(local_broker: LocalBroker) -> None:
    """A second `start` is harmless: it reports the running broker and starts no other."""
    before = local_broker.status().pid

    result = run_estop("broker", "start")

    assert result.returncode == 0, result.stderr
    assert "already running" in result.stdout
    assert f"pid {before}" in result.stdout
    assert local_broker.status().pid == before


@pytest.mark.parametrize("taken", ["broker", "controller"])
def test_start_on_a_taken_port_is_a_one_line_error(tmp_path: Path, taken: str) -> None:
    """Another program on either port: say which port and what to do, start nothing."""
    with listen_on_free_port() as listener:
        port = listener.getsockname()[1]
        env = isolated_env(
            tmp_path,
            broker_port=port if taken == "broker" else None,
            controller_port=port if taken == "controller" else None,
        )
        result = run_estop("broker", "start", env=env)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port} is already taken" in lines[0]
    assert not (tmp_path / "data" / "broker" / "broker.pid").exists()


def test_stop_when_nothing_runs_exits_0(tmp_path: Path) -> None:
    """`stop` is safe to run blindly (make clean, CI teardown)."""
    result = run_estop("broker", "stop", env=isolated_env(tmp_path))

    assert result.returncode == 0, result.stderr
    assert "no local broker running" in result.stdout


def test_status_when_nothing_runs_says_not_running(tmp_path: Path) -> None:
    """status tells a stopped broker apart from a running one."""
    result = run_estop("broker", "status", env=isolated_env(tmp_path))

    assert "not running" in result.stdout
    assert "Traceback" not in result.stderr
