"""The gate job written the way a user would otherwise write it, for ``estop bench``: a
quixstreams application and a Kafka Streams application. Each runs with its own dependencies,
prepared once into the cache folder: quixstreams pins confluent-kafka < 2.13 and
pydantic-settings < 2.16, which estop's own dependencies exclude, so it gets a virtualenv of its
own; the Kafka Streams application is built by Maven."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from streams.exceptions import EstopError

HERE = Path(__file__).resolve().parent
QUIXSTREAMS = "quixstreams==3.28.1"
GUARANTEES = ("exactly-once", "at-least-once")


class PeerError(EstopError):
    """A peer application could not be prepared (no network, no Maven, a build failure)."""


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
        raise PeerError(f"{what} failed: {detail}")


def quixstreams_python(cache_dir: Path, say: Callable[[str], None]) -> list[str]:
    """The command that runs the quixstreams gate, its virtualenv created on first use."""
    venv = cache_dir / "bench-peers" / "quixstreams"
    python = venv / "bin" / "python"
    marker = venv / f".{QUIXSTREAMS}"
    if not marker.exists():
        say(f"installing {QUIXSTREAMS} into {venv} (once)")
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(venv)], "creating the quixstreams virtualenv")
        _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", QUIXSTREAMS],
             f"pip install {QUIXSTREAMS}")
        marker.touch()
    return [str(python), str(HERE / "quix_gate.py")]


def kstreams_java(cache_dir: Path, kafka_version: str, say: Callable[[str], None]) -> list[str]:
    """The command that runs the Kafka Streams gate, built by Maven on first use."""
    build = cache_dir / "bench-peers" / f"kstreams-{kafka_version}"
    jar = build / "kstreams-gate-1.jar"
    if not jar.exists():
        mvn, java = shutil.which("mvn"), shutil.which("java")
        if mvn is None or java is None:
            raise PeerError("the Kafka Streams peer needs `mvn` and `java` on PATH "
                            "(apt-get install maven openjdk-17-jdk-headless)")
        say(f"building the Kafka Streams peer against kafka-streams {kafka_version} (once)")
        _run([mvn, "-q", "-B", "-f", str(HERE / "kstreams" / "pom.xml"), "package",
              f"-Dkafka.version={kafka_version}", f"-Dpeer.build.dir={build}"],
             "mvn package of the Kafka Streams peer")
    java = shutil.which("java") or "java"
    return [java, "-Xmx512m", "-cp", f"{jar}:{build / 'libs'}/*", "estop.bench.GatePeer"]
