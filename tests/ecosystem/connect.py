"""Kafka Connect run privately in standalone mode, with the Debezium JDBC sink writing estop's
``sent`` and ``notsent`` topics into PostgreSQL tables (``estop_sent``, ``estop_notsent``),
reading the Avro values through the schema registry with Apicurio's converter.

Jars from Maven Central, resolved once into ``<cache>/connect-<kafka version>/`` by the profiles
of ``deploy/connect/pom.xml``: the worker (``org.apache.kafka:connect-runtime`` of the broker's
Kafka version) on the classpath, the connector and the converter each in a plugin folder of its
own. The worker and connector settings are ``deploy/connect/*.properties``, rendered into the
server's folder (with the database password: the file is mode 0600, nothing secret on a command
line). A plaintext broker only (the tests' and the demo's)."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from streams.maven import fetch
from streams.settings import Settings
from tests.ecosystem.exceptions import EcosystemError
from tests.ecosystem.server import ServerProcess, java
from tests.support import REPO

RECIPE = REPO / "deploy" / "connect"
DEBEZIUM_VERSION = "3.5.0.Final"
APICURIO_VERSION = "2.6.13.Final"  # of the converter; the registry's own version (apicurio.py)
START_TIMEOUT_S = 180.0  # until the sink task runs; measured about 10 s on a 2-core machine
TABLES = {"sent": "estop_sent", "notsent": "estop_notsent"}


class KafkaConnect:
    """``start`` fetches (once) and starts the worker with the JDBC sink; ``stop`` ends it."""

    def __init__(self, settings: Settings, registry_api_url: str, jdbc_url: str, jdbc_user: str,
                 jdbc_password: SecretStr | None, home: Path, rest_port: int,
                 say: Callable[[str], None] = lambda _: None) -> None:
        self.settings = settings
        self.registry_api_url = registry_api_url
        self.jdbc_url = jdbc_url
        self.jdbc_user = jdbc_user
        self.jdbc_password = jdbc_password
        self.home = home
        self.rest_port = rest_port
        self.say = say
        self.root = settings.cache_dir / f"connect-{settings.kafka_version}"
        self.name = f"{settings.topic_prefix}estop-outcomes-jdbc"
        self.server: ServerProcess | None = None

    @property
    def consumer_group(self) -> str:
        """The sink's consumer group (Connect names it after the connector)."""
        return f"connect-{self.name}"

    def start(self) -> float:
        """Seconds until the connector's task ran."""
        runtime = self._fetch()
        worker, connector = self._render()
        log = self.home / "connect.log"
        self.server = ServerProcess("Kafka Connect", [
            java(), "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            f"-Djava.io.tmpdir={self.home}",
            f"-Dlog4j2.configurationFile={RECIPE / 'log4j2.properties'}",
            f"-Dconnect.log.file={log}", "-cp", f"{runtime}/*",
            "org.apache.kafka.connect.cli.ConnectStandalone", str(worker), str(connector)], self.home)
        took = self.server.start(self._task_running, START_TIMEOUT_S)
        self.say(f"Kafka Connect {self.settings.kafka_version} with the Debezium JDBC sink "
                 f"{DEBEZIUM_VERSION} running in {took:.1f}s")
        return took

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def status(self) -> dict[str, Any]:
        """The connector's status from Connect's REST API."""
        url = f"http://127.0.0.1:{self.rest_port}/connectors/{self.name}/status"
        with urllib.request.urlopen(url, timeout=5) as response:
            status: dict[str, Any] = json.loads(response.read())
        return status

    def _task_running(self) -> bool:
        try:
            status = self.status()
        except (urllib.error.URLError, OSError, ValueError):
            return False
        tasks = status.get("tasks", [])
        failed = [t for t in tasks if t.get("state") == "FAILED"]
        if failed:
            trace = str(failed[0].get("trace", "")).strip().splitlines()
            raise EcosystemError(f"the JDBC sink task failed: {trace[0] if trace else 'no trace'}; "
                                 f"see {self.home / 'connect.log'}")
        return bool(tasks) and all(t.get("state") == "RUNNING" for t in tasks)

    def _fetch(self) -> Path:
        versions = {"kafka.version": self.settings.kafka_version,
                    "debezium.version": DEBEZIUM_VERSION, "apicurio.version": APICURIO_VERSION}
        pom = RECIPE / "pom.xml"
        runtime = fetch(pom, self.root / "runtime", f"Kafka Connect {self.settings.kafka_version}",
                        "connect-runtime-*.jar", profile="runtime", properties=versions, say=self.say)
        fetch(pom, self.root / "plugins" / "debezium-connector-jdbc",
              f"the Debezium JDBC sink {DEBEZIUM_VERSION}", "debezium-connector-jdbc-*.jar",
              profile="jdbc-sink", properties=versions, say=self.say)
        fetch(pom, self.root / "plugins" / "apicurio-converter",
              f"Apicurio's Avro converter {APICURIO_VERSION}", "apicurio-registry-utils-converter-*.jar",
              profile="avro-converter", properties=versions, say=self.say)
        return runtime

    def _render(self) -> tuple[Path, Path]:
        """worker.properties and the connector's properties, in the server's folder."""
        topics = self.settings.topics
        values = {
            "bootstrap_servers": self.settings.bootstrap_servers,
            "rest_port": str(self.rest_port),
            "plugin_path": str(self.root / "plugins"),
            "home": str(self.home),
            "registry_api_url": self.registry_api_url,
            "name": self.name,
            "topics": f"{topics.sent},{topics.notsent}",
            "jdbc_url": self.jdbc_url,
            "jdbc_user": self.jdbc_user,
            "jdbc_password": self.jdbc_password.get_secret_value() if self.jdbc_password else "",
            "topic_prefix_regex": java_regex_literal(self.settings.topic_prefix),
        }
        self.home.mkdir(parents=True, exist_ok=True)
        written = []
        for name in ("worker.properties", "estop-jdbc-sink.properties"):
            target = self.home / name
            target.touch(mode=0o600)
            target.write_text(render(RECIPE / name, values))
            written.append(target)
        return written[0], written[1]


def render(template: Path, values: Mapping[str, str]) -> str:
    """The template with each ``{name}`` replaced; a name without a value is an error."""
    def value(match: re.Match[str]) -> str:
        try:
            return values[match[1]]
        except KeyError:
            raise EcosystemError(f"{template}: no value for {{{match[1]}}}") from None

    return re.sub(r"\{([a-z_]+)\}", value, template.read_text())


def java_regex_literal(text: str) -> str:
    """``text`` as a Java regular expression matching it literally, written for a .properties
    file (whose reader turns ``\\\\`` into one backslash)."""
    return "".join(c if c.isalnum() else "\\\\" + c for c in text)
