"""Helpers of the control-plane tests: the control service and a Prometheus server as real
subprocesses, and a small JSON-over-HTTP client.

Every wait is bounded by a generous deadline so a broken feature fails instead of hanging; no
assertion depends on how fast anything happened."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message

from streams.kafka.clients import producer
from streams.kafka.reader import read_topic
from streams.lab.harness import WorkerProcess, estop_env
from streams.serde import Serdes
from streams.settings import Settings
from tests.support import REPO
from tests.support import wait_for as shared_wait_for

WAIT_S = 120.0
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "estop-dashboard.json"


# Each suite waits as long as its slowest eventual outcome may take.
wait_for = functools.partial(shared_wait_for, timeout_s=WAIT_S)


def tool(name: str) -> str:
    """Path of a Prometheus tool; missing means the test FAILS (CI installs it)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: install Debian's `prometheus` package "
                    "(apt-get install prometheus; `make test` does it)", pytrace=False)
    return path


def ready_field(line: str, name: str) -> str:
    """A ``name=value`` field of a process's ready line."""
    match = re.search(rf"\b{name}=(\S+)", line)
    assert match, f"no {name}= in ready line {line!r}"
    return match.group(1)


def produce_raw(settings: Settings, topic: str, values: list[bytes]) -> None:
    """Produce raw values (unreadable records, for instance) and wait for the broker."""
    out = producer(settings)
    for value in values:
        out.produce(topic, value=value)
    assert out.flush(30) == 0


def control_commands(settings: Settings, serdes: Serdes) -> list[dict[str, Any]]:
    """Every record on campaign-control, decoded (a tombstone or unreadable record fails)."""
    found: list[dict[str, Any]] = []

    def handle(message: Message) -> None:
        assert not message.error() and message.value() is not None, message
        found.append(serdes.control_command.decode(message.value()))

    read_topic(settings, settings.topics.control, handle)
    return found


# -- HTTP -------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        assert self.content_type.startswith("application/json"), (self.content_type, self.body)
        return json.loads(self.body)


def http(method: str, url: str, body: bytes | None = None, timeout_s: float = 60.0,
         token: str | None = None) -> Reply:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return Reply(response.status, response.headers.get("Content-Type", ""), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers.get("Content-Type", ""), exc.read())


class Api:
    """The control service's HTTP API at ``base``."""

    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str) -> Reply:
        return http("GET", self.base + path)

    def post(self, path: str, body: bytes) -> Reply:
        return http("POST", self.base + path, body)

    def stop(self, campaign_id: str, payload: Any) -> Reply:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.post(f"/campaigns/{urllib.parse.quote(campaign_id)}/stop", body)

    def campaign(self, campaign_id: str) -> dict[str, Any]:
        reply = self.get(f"/campaigns/{urllib.parse.quote(campaign_id)}")
        assert reply.status == 200, (reply.status, reply.body)
        detail: dict[str, Any] = reply.json()
        return detail

    def campaigns(self) -> dict[str, dict[str, Any]]:
        reply = self.get("/campaigns")
        assert reply.status == 200, (reply.status, reply.body)
        return {c["campaign_id"]: c for c in reply.json()["campaigns"]}


# -- processes --------------------------------------------------------------------------------


class ControlProcess(WorkerProcess):
    """``estop control`` (or ``estop worker --role control``) on a free port, for this test's
    topics and data folder; ready once it has read its topics."""

    def __init__(self, settings: Settings, command: tuple[str, ...] = ("control",),
                 env: dict[str, str] | None = None) -> None:
        full_env = estop_env(settings, {
            "ESTOP_CONTROL_PORT": "0",
            # No tokens on this machine's loopback: the API asks nobody (tests with tokens set them).
            "ESTOP_HTTP_OPEN": "true",
            **(env or {}),
        })
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streams", *command],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, text=True,
        )
        self.lines: list[str] = []
        self.api: Api | None = None
        self.port = 0

    def start(self, timeout_s: float = WAIT_S) -> Api:
        self.wait_ready(timeout_s)
        ready = next(line for line in reversed(self.lines) if line.startswith("ready "))
        self.port = int(ready_field(ready, "control_port"))
        self.api = Api(f"http://127.0.0.1:{self.port}")
        return self.api


class Processes:
    """Every subprocess a test starts; all stopped at teardown, their output shown on failure."""

    def __init__(self) -> None:
        self.started: list[WorkerProcess] = []

    def add(self, process: WorkerProcess) -> WorkerProcess:
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.process.poll() is None:
                process.stop()
            print(f"--- {process.process.args!r} exited {process.process.returncode}; last lines:")
            print("".join(process.lines[-40:]))


class PrometheusServer:
    """A real Prometheus (Debian's package) scraping the given jobs every second, with the
    project's rule files loaded."""

    def __init__(self, directory: Path, jobs: dict[str, str], port: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS_DIR / "rules" / "*.yml")],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                               for job, target in jobs.items()],
        }
        config_file = directory / "prometheus.yml"
        config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.url = f"http://127.0.0.1:{port}"
        self.log = directory / "prometheus.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [tool("prometheus"), f"--config.file={config_file}",
                 f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def check(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}:\n"
                                 + self.log.read_text()[-3000:])

    def api(self, path: str, **params: Any) -> Any:
        self.check()
        query = urllib.parse.urlencode(params)
        reply = http("GET", f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""))
        assert reply.status == 200, (path, reply.status, reply.body[:500])
        body = json.loads(reply.body)
        assert body["status"] == "success", body
        return body["data"]

    def wait_ready(self) -> None:
        def ready() -> bool:
            self.check()
            try:
                return http("GET", f"{self.url}/-/ready", timeout_s=2).status == 200
            except OSError:
                return False

        wait_for(ready, "prometheus to be ready")

    def wait_targets_up(self, jobs: list[str]) -> None:
        def up() -> bool:
            targets = self.api("targets")["activeTargets"]
            healthy = {t["labels"]["job"] for t in targets if t["health"] == "up"}
            return set(jobs) <= healthy

        wait_for(up, f"prometheus to scrape {jobs}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
