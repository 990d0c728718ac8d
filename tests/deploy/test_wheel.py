"""estop as a user installs it: the wheel built from this checkout, installed into a fresh
virtualenv with its runtime dependencies only (no editable install, no extras), run from a folder
outside the checkout. A campaign is launched, stopped and accounted with that `estop` alone, so
anything the code reads at run time that the wheel does not ship (schemas, the console), or a
runtime import of a test-only package, fails here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from streams.lab.broker import BrokerHandle
from tests.support import REPO

WAIT_S = 180.0  # keeps a hung step from hanging the suite; not an assertion
RECIPIENTS = 400
# Tooling the extras install; none of it may be importable from the installed product.
NOT_RUNTIME = ("pytest", "playwright", "testcontainers", "matplotlib", "googleapiclient",
               "kubernetes_validate", "ruff", "mypy")

pytestmark = pytest.mark.broker


@dataclass
class Installed:
    wheel: Path
    venv: Path

    @property
    def estop(self) -> Path:
        return self.venv / "bin" / "estop"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def _run(command: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                            timeout=900, check=False, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel, built once from a copy of what the image copies too (pyproject.toml, README.md,
    streams/): a stale build folder in the checkout cannot add files the source no longer has."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "streams", source / "streams",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
          "-w", dist, source])
    (wheel,) = dist.glob("estop-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    _run([env_dir / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check", "-q",
          wheel])
    return Installed(wheel, env_dir)


def test_the_wheel_ships_every_file_the_package_reads(installed: Installed) -> None:
    """Every file of streams/ that is not Python (schemas, the broker recipe, the console, the
    benchmark's Kafka Streams peer) is in the wheel, and no test, bench or doc file is."""
    expected = {path.relative_to(REPO).as_posix() for path in (REPO / "streams").rglob("*")
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}
    with zipfile.ZipFile(installed.wheel) as wheel:
        shipped = {name for name in wheel.namelist() if not name.startswith("estop-")}
    assert expected - shipped == set()
    assert {name.split("/")[0] for name in shipped} == {"streams"}
    assert any(name.endswith(".avsc") for name in shipped)


def test_the_installed_package_has_runtime_dependencies_only(installed: Installed) -> None:
    probe = ("import importlib.util, json, streams; print(json.dumps({'file': streams.__file__, "
             f"'found': [m for m in {NOT_RUNTIME!r} if importlib.util.find_spec(m)]}}))")
    result = _run([installed.python, "-c", probe], cwd=installed.venv)
    found = json.loads(result.stdout)
    assert Path(found["file"]).is_relative_to(installed.venv), found
    assert found["found"] == []


def test_estop_bench_without_the_bench_extra_names_the_extra(installed: Installed, tmp_path: Path) -> None:
    result = subprocess.run([str(installed.estop), "bench", "--quick"], capture_output=True,
                            text=True, timeout=WAIT_S, cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == ("estop: the benchmark needs the bench extra: "
                                     "pip install 'estop[bench]'")
    assert result.stdout == ""


class Estop:
    """The installed `estop`, run in a folder outside the checkout with only this test's
    settings in its environment: the data folder is the default one, `.data` there."""

    def __init__(self, installed: Installed, broker: BrokerHandle, cwd: Path) -> None:
        self.installed = installed
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ESTOP_")}
        self.env.update({
            "ESTOP_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "ESTOP_TOPIC_PREFIX": f"t{uuid4().hex[:8]}-",
            "ESTOP_PARTITIONS": "3",
            "ESTOP_METRICS_PORT": "0",
            "ESTOP_CONTROL_PORT": "0",
            "ESTOP_HTTP_OPEN": "true",
            # Slow enough that the stop finds messages still waiting at the provider stage.
            "ESTOP_PROVIDER_RATE": "100",
            "ESTOP_PROVIDER_DELAY_S": "0.5",
        })
        self.started: list[subprocess.Popen[str]] = []

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.installed.estop), *args], capture_output=True, text=True,
                                timeout=WAIT_S, cwd=self.cwd, env=self.env, check=False)
        assert result.returncode == 0, f"estop {' '.join(args)}: {result.stdout}\n{result.stderr}"
        return result

    def start(self, *args: str) -> str:
        """Start `estop ARGS` in the background; its ready line."""
        process = subprocess.Popen([str(self.installed.estop), *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, cwd=self.cwd, env=self.env)
        self.started.append(process)
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line)
            if line.startswith("ready "):
                return line
        pytest.fail(f"estop {' '.join(args)} exited before it was ready:\n{''.join(seen[-20:])}")

    def stop_all(self) -> None:
        for process in self.started:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def estop(installed: Installed, broker: BrokerHandle, tmp_path: Path) -> Iterator[Estop]:
    runner = Estop(installed, broker, tmp_path)
    try:
        yield runner
    finally:
        runner.stop_all()


def _wait_for_report(estop: Estop, campaign_id: str) -> dict[str, Any]:
    """`estop report` once the sink has stored every outcome (until then it may not know the
    campaign yet, or account for part of it)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        result = subprocess.run([str(estop.installed.estop), "report", campaign_id, "--json"],
                                capture_output=True, text=True, timeout=WAIT_S, cwd=estop.cwd,
                                env=estop.env, check=False)
        report: dict[str, Any] = json.loads(result.stdout) if result.returncode == 0 else {}
        if report.get("accounted", 0) >= RECIPIENTS or time.monotonic() > deadline:
            assert result.returncode == 0, result.stderr
            return report
        time.sleep(0.5)


def test_a_stop_end_to_end_with_the_installed_estop(estop: Estop) -> None:
    """`estop topics create`, a worker, a launch, a stop confirmed by the worker, every message
    accounted in the analytics store of the default data folder, the control plane's API and
    console answering."""
    campaign_id = f"wheel-{uuid4().hex[:6]}"
    estop.run("topics", "create")
    estop.start("worker")
    estop.run("launch", "--campaign", campaign_id, "--channel", "email",
              "--recipients", str(RECIPIENTS))

    stopped = json.loads(estop.run("stop", campaign_id, "--reason", "wrong discount code",
                                   "--json").stdout)

    assert stopped["confirmed"], stopped
    report = _wait_for_report(estop, campaign_id)
    assert report["accounted"] == RECIPIENTS, report
    assert report["sent"] + report["not_sent"] == RECIPIENTS, report
    assert report["not_sent"] > 0, report  # the stop halted messages still waiting
    assert (estop.cwd / ".data").is_dir()  # the default data folder: the working directory's

    ready = estop.start("control")
    port = next(f.split("=", 1)[1] for f in ready.split() if f.startswith("control_port="))
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/campaigns/{campaign_id}", timeout=30) as response:
        assert json.loads(response.read())["campaign_id"] == campaign_id
    with urllib.request.urlopen(f"{base}/console/assets/console.js", timeout=30) as response:
        shipped = (REPO / "streams" / "controlplane" / "console" / "console.js").read_bytes()
        assert response.read() == shipped
