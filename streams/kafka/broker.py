"""The project's own single-node KRaft broker, built from the Apache Kafka jars on Maven Central.

Used when neither ESTOP_BOOTSTRAP_SERVERS nor a Docker engine is there. Jars are resolved once
by ``mvn`` into the cache folder; data, logs and the pid file live under the data folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streams.kafka.clients import wait_for_broker
from streams.kafka.exceptions import KafkaUnavailableError, LocalBrokerError
from streams.processes import alive, port_open
from streams.settings import PROJECT_ROOT, Settings

RECIPE = PROJECT_ROOT / "deploy" / "broker"


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    address: str
    version: str
    pid: int | None


class LocalBroker:
    """start / stop / status of the local broker; every method is safe to call twice."""

    def __init__(self, settings: Settings, say: Callable[[str], None] = lambda _: None) -> None:
        self.settings = settings
        self.say = say
        self.version = settings.kafka_version
        self.home = settings.data_dir / "broker"
        self.libs = settings.cache_dir / f"kafka-{self.version}" / "libs"
        self.pid_file = self.home / "broker.pid"
        self.logs = self.home / "logs"
        self.address = f"localhost:{settings.broker_port}"

    # -- public ----------------------------------------------------------------------------

    def status(self) -> BrokerStatus:
        pid = self._pid()
        return BrokerStatus(pid is not None, self.address, self.version, pid)

    def start(self) -> BrokerStatus:
        if self._pid() is not None:
            self.say(f"broker already running at {self.address} (pid {self._pid()})")
            return self.status()
        for port in (self.settings.broker_port, self.settings.controller_port):
            if port_open(port):
                raise LocalBrokerError(
                    f"port {port} is already taken by another process; stop it, or use it as "
                    f"your broker with ESTOP_BOOTSTRAP_SERVERS=localhost:{port}"
                )
        java = _require("java", "install Java 17 or newer (apt-get install openjdk-17-jre-headless)")
        self._resolve_jars()
        self._format(java)
        self.logs.mkdir(parents=True, exist_ok=True)
        out = (self.logs / "server.out").open("ab")
        command = [
            java,
            f"-Xmx{self.settings.broker_heap}",
            f"-Xms{self.settings.broker_heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.logs}",
            f"-Dlog4j2.configurationFile={RECIPE / 'log4j2.properties'}",
            "-cp",
            f"{self.libs}/*",
            "kafka.Kafka",
            str(self.home / "server.properties"),
        ]
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid_file.write_text(str(process.pid))
        self.say(f"starting Kafka {self.version} at {self.address} (pid {process.pid})")
        deadline = started + self.settings.broker_start_timeout_s
        probe = self.settings.model_copy(update={"bootstrap_servers": self.address})
        while True:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise LocalBrokerError(
                    f"the broker exited with code {process.returncode} while starting; "
                    f"see {self.logs / 'server.out'}:\n{_tail(self.logs / 'server.out')}"
                )
            try:
                wait_for_broker(probe, timeout_s=2.0)
                break
            except KafkaUnavailableError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise LocalBrokerError(
                        f"the broker did not answer within {self.settings.broker_start_timeout_s:.0f}s; "
                        f"see {self.logs / 'server.log'}"
                    ) from None
        self.say(f"broker ready at {self.address} in {time.monotonic() - started:.1f}s")
        return self.status()

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop the broker; False when none was running."""
        pid = self._pid()
        if pid is None:
            self.say("no local broker running")
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
            self.say(f"broker did not stop within {timeout_s:.0f}s; killed it")
        self.pid_file.unlink(missing_ok=True)
        self.say(f"broker at {self.address} stopped")
        return True

    # -- steps ------------------------------------------------------------------------------

    def _resolve_jars(self) -> None:
        if self.libs.is_dir() and any(self.libs.glob("kafka_2.13-*.jar")):
            return
        mvn = _require("mvn", "install Maven (apt-get install maven) or set ESTOP_BOOTSTRAP_SERVERS")
        self.say(f"resolving Apache Kafka {self.version} jars from Maven Central (once)")
        self.libs.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=self.libs.parent))
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(RECIPE / "pom.xml"), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-Dkafka.version={self.version}",
             f"-DoutputDirectory={staging}"],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            detail = (result.stdout + result.stderr).strip().splitlines()[-3:]
            raise LocalBrokerError(
                f"mvn could not resolve org.apache.kafka:kafka_2.13:{self.version}: "
                + " | ".join(detail)
            )
        staging.rename(self.libs)

    def _format(self, java: str) -> None:
        kraft = self.home / "kraft"
        self.home.mkdir(parents=True, exist_ok=True)
        template = (RECIPE / "server.properties.template").read_text()
        (self.home / "server.properties").write_text(template.format(
            broker_port=self.settings.broker_port,
            controller_port=self.settings.controller_port,
            log_dirs=kraft,
        ))
        if (kraft / "meta.properties").exists():
            return
        cluster_id = self._storage_tool(java, ["random-uuid"]).strip().splitlines()[-1]
        self._storage_tool(java, ["format", "-t", cluster_id, "-c", str(self.home / "server.properties")])

    def _storage_tool(self, java: str, args: list[str]) -> str:
        result = subprocess.run(
            [java, f"-Dlog4j2.configurationFile={RECIPE / 'log4j2.properties'}",
             f"-Dkafka.logs.dir={self.home / 'logs'}", "-cp", f"{self.libs}/*",
             "kafka.tools.StorageTool", *args],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise LocalBrokerError(f"kafka StorageTool {args[0]} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not alive(pid) or not _is_broker(pid):
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise LocalBrokerError(f"`{tool}` not found on PATH: {hint}")
    return path


def _is_broker(pid: int) -> bool:
    """The pid file may outlive the broker and its pid be reused by something else."""
    try:
        return b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid file


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no output)"
