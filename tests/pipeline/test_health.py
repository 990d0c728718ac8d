"""A worker's /health: 200 while every stage runs, 503 naming the stage that is stuck (here a
dispatcher whose provider stopped answering), and 200 again once it recovers."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.campaigns.launcher import launch
from streams.lab.standins.fcm import StandInFcm
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import Workers, wait_for, wait_joined, wait_outcomes

pytestmark = pytest.mark.broker


class FreezableLink:
    """A TCP relay to a provider that can stop passing bytes on, like a provider (or the network
    to it) that accepts connections and then answers nothing."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.flowing = threading.Event()
        self.flowing.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = [self._listener]

    def start(self) -> FreezableLink:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.flowing.wait()
                target.sendall(data)
        except OSError:
            pass
        finally:
            target.close()

    def close(self) -> None:
        self.flowing.set()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def fcm_link() -> Iterator[tuple[StandInFcm, FreezableLink]]:
    fcm = StandInFcm().start()
    link = FreezableLink(fcm.port).start()
    try:
        yield fcm, link
    finally:
        link.close()
        fcm.stop()


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_health_names_the_stage_stuck_on_its_provider_until_it_answers_again(
    settings: Settings, serdes: Serdes, workers: Workers, fcm_link: tuple[StandInFcm, FreezableLink],
    tmp_path: Path,
) -> None:
    fcm, link = fcm_link
    worker, worker_id = workers.start("--channel", "push", env={
        "ESTOP_PUSH_PROVIDER": f"fcm+http://127.0.0.1:{link.port}?rate=2000&ttl_s=60",
        "ESTOP_PUSH_SERVICE_ACCOUNT": str(fcm.service_account(tmp_path / "account.json")),
        "ESTOP_HEALTH_STALL_S": "1",
        "ESTOP_PROVIDER_TIMEOUT_S": "300",  # a provider that hangs, not one that refuses
    })
    port = int(next(line for line in worker.lines if line.startswith("ready "))
               .split("metrics_port=")[1].split()[0])
    wait_joined(settings, [worker_id], [settings.topics.gate_group("push"),
                                          settings.topics.dispatcher_group("push")])

    status, body = health(port)
    assert (status, body["healthy"], body["unhealthy"]) == (200, True, [])
    assert set(body["stages"]) == {"gate.push", "dispatcher.push", "control-feed"}
    assert body["process"] == worker_id

    link.flowing.clear()
    launch(settings, serdes, "hung", ["push"], 40)
    wait_for(lambda: health(port)[0] == 503, "/health to report the stuck dispatcher")
    status, body = health(port)
    assert body["unhealthy"] == ["dispatcher.push"]
    assert body["stages"]["dispatcher.push"]["running"] is True  # stuck, not dead

    link.flowing.set()
    assert wait_outcomes(settings, "hung", 40).total == 40
    wait_for(lambda: health(port)[0] == 200, "/health to recover")
