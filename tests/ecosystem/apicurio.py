"""Apicurio Registry run privately: the application zip from Maven Central
(``io.apicurio:apicurio-registry-app:<version>:zip:all``, a Quarkus runner jar and its lib/),
unpacked once into the cache folder, started on its own port with in-memory storage (H2), its
log and temporary files in its own folder; nothing outlives the process.

Two APIs of the one server matter to estop: the Confluent-compatible one
(``/apis/ccompat/v7``, what estop's registry client and any Confluent client speak) and
Apicurio's own (``/apis/registry/v2``, what Apicurio's Kafka Connect converter speaks). The ids
the compatible API hands out are content ids (Apicurio 2.x, ``legacy-id-mode`` off)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from streams.maven import fetch
from streams.settings import Settings
from tests.ecosystem.server import ServerProcess, http_ok, java
from tests.support import REPO

VERSION = "2.6.13.Final"
RECIPE = REPO / "deploy" / "registry"
START_TIMEOUT_S = 120.0  # measured 3 to 9 s on a shared 2-core machine (C1 only: half the start-up)


class ApicurioRegistry:
    """``start`` fetches (once) and starts it; ``stop`` ends it and its in-memory data."""

    def __init__(self, settings: Settings, port: int, home: Path,
                 say: Callable[[str], None] = lambda _: None) -> None:
        self.port = port
        self.home = home
        self.say = say
        self.app = settings.cache_dir / f"apicurio-registry-{VERSION}"
        self.server: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ccompat_url(self) -> str:
        """The Confluent-compatible API: ESTOP_SCHEMA_REGISTRY_URL, Confluent clients, kcat."""
        return f"{self.url}/apis/ccompat/v7"

    @property
    def registry_api_url(self) -> str:
        """Apicurio's own API: its serdes and Kafka Connect converter."""
        return f"{self.url}/apis/registry/v2"

    def start(self) -> float:
        """Seconds until it answered."""
        fetch(RECIPE / "pom.xml", self.app, f"Apicurio Registry {VERSION}", "*-runner.jar",
              properties={"apicurio.version": VERSION}, unpack=True, say=self.say)
        runner = next(self.app.glob("*-runner.jar"))
        tmp = self.home / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        self.server = ServerProcess("Apicurio Registry", [
            java(), "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", f"-Djava.io.tmpdir={tmp}",
            f"-Dquarkus.http.port={self.port}", "-Dquarkus.http.host=127.0.0.1",
            "-jar", str(runner)], self.home)
        took = self.server.start(lambda: http_ok(f"{self.ccompat_url}/subjects"), START_TIMEOUT_S)
        self.say(f"Apicurio Registry {VERSION} ready at {self.url} in {took:.1f}s")
        return took

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
