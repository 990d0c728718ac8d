"""A three-node local KRaft cluster for the cluster tests: started the way a user starts it
(`estop broker start --brokers 3`), on free ports and a folder of the test session's own, with
the handles the failover tests need (who leads a partition, SIGKILL a node, bring it back, wait
until every replica is in sync again)."""

from __future__ import annotations

import os
import random
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException

from streams.kafka.broker import LocalBroker
from streams.kafka.clients import admin
from streams.settings import Settings, load_settings
from tests.support import run_estop, wait_for

BROKERS = 3
WAIT_S = 240.0  # upper bound for a node to rejoin and catch up, on a loaded machine


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive TCP ports nothing listens on (node n of a local cluster
    takes the broker and controller ports plus 2(n-1)). Taken below the kernel's ephemeral range
    (32768 and up), where outgoing connections cannot grab one between this check and the
    broker's bind."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - count)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError(f"no run of {count} free ports found")


@dataclass
class Cluster:
    """The session's three-node cluster: its environment, settings and node handles."""

    env: dict[str, str]
    settings: Settings

    @classmethod
    def plan(cls, folder: Path) -> Cluster:
        base = free_port_run(2 * BROKERS)
        env = {
            "ESTOP_DATA_DIR": str(folder),
            "ESTOP_BROKER_PORT": str(base),
            "ESTOP_CONTROLLER_PORT": str(base + 1),
            "ESTOP_BROKER_HEAP": "384m",
        }
        settings = load_settings(data_dir=folder, broker_port=base, controller_port=base + 1,
                                 broker_heap="384m", brokers=BROKERS)
        local = LocalBroker(settings)
        return cls(env, settings.model_copy(update={"bootstrap_servers": local.address}))

    @property
    def local(self) -> LocalBroker:
        return LocalBroker(self.settings)

    @property
    def address(self) -> str:
        return self.local.address

    def start(self) -> None:
        result = run_estop("broker", "start", "--brokers", str(BROKERS), env=self.env, timeout_s=300)
        assert result.returncode == 0, result.stdout + result.stderr

    def stop(self) -> None:
        result = run_estop("broker", "stop", env=self.env, timeout_s=300)
        assert result.returncode == 0, result.stdout + result.stderr

    def pids(self) -> dict[int, int | None]:
        return {n.node.node_id: n.pid for n in self.local.status().nodes}

    def leader(self, topic: str, partition: int) -> int:
        with admin(self.settings) as client:
            metadata = client.list_topics(topic, timeout=30).topics[topic]
        leader: int = metadata.partitions[partition].leader
        return leader

    def kill(self, node_id: int) -> None:
        """SIGKILL one node: no controlled shutdown, no leadership handed over."""
        pid = self.pids()[node_id]
        assert pid is not None, f"node {node_id} is not running"
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: self.pids()[node_id] is None, f"node {node_id} to die", timeout_s=30)

    def restart(self) -> None:
        """Start the nodes that are down (the others keep running), from their own data."""
        self.local.start()

    def replicas(self, prefix: str) -> dict[tuple[str, int], tuple[int, int]]:
        """(replicas, in-sync replicas) of every partition of the topics starting with ``prefix``."""
        with admin(self.settings) as client:
            topics = client.list_topics(timeout=30).topics
        return {(name, p.id): (len(p.replicas), len(p.isrs))
                for name, meta in topics.items() if name.startswith(prefix)
                for p in meta.partitions.values()}

    def wait_in_sync(self, prefix: str) -> None:
        """Until every partition of the topics has all its replicas in sync (ISR back to 3)."""
        def in_sync() -> bool:
            try:
                found = self.replicas(prefix)
            except KafkaException:
                return False
            return bool(found) and all(isr == replicas == BROKERS for replicas, isr in found.values())

        wait_for(in_sync, f"every replica of the {prefix}* topics in sync", timeout_s=WAIT_S,
                 every_s=0.5)
