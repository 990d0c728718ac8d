"""`estop broker start|status|stop --brokers 3` and the topic plan on a three-node cluster: three
KRaft nodes on localhost with their own ports and folders and one controller quorum, every topic
replicated three times with min.insync.replicas=2; the replication rule itself, without a broker."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource, ConfigSource

from streams.kafka.clients import admin
from streams.kafka.exceptions import TopicPlanError
from streams.kafka.topics import Replication, plan, replication
from streams.settings import load_settings
from tests.cluster.support import BROKERS, Cluster, free_port_run
from tests.support import run_estop


@pytest.mark.broker
def test_status_names_every_node_with_its_ports_and_folder(cluster: Cluster) -> None:
    result = run_estop("broker", "status", env=cluster.env)

    assert result.returncode == 0, result.stderr
    assert f"cluster of {BROKERS} brokers" in result.stdout
    nodes = re.findall(r"node (\d) running \(pid (\d+)\) at localhost:(\d+), controller "
                       r"localhost:(\d+), data (\S+)", result.stdout)
    assert [int(n[0]) for n in nodes] == [1, 2, 3], result.stdout
    ports = [int(p) for n in nodes for p in (n[2], n[3])]
    assert len(set(ports)) == 2 * BROKERS
    assert len({n[4] for n in nodes}) == BROKERS
    for node_id, pid, _, _, folder in nodes:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"kafka.Kafka" in argv
        # Each node runs from its own folder, as its own voter of the one controller quorum.
        properties = Path(folder, "server.properties").read_text()
        assert f"node.id={node_id}\n" in properties
        voters = re.search(r"^controller\.quorum\.voters=(\S+)", properties, re.MULTILINE)
        assert voters is not None
        assert voters[1] == ",".join(f"{n[0]}@localhost:{n[3]}" for n in nodes)
    with admin(cluster.settings) as client:
        metadata = client.list_topics(timeout=30)
    assert sorted(metadata.brokers) == [1, 2, 3]
    assert metadata.controller_id in (1, 2, 3)


@pytest.mark.broker
def test_topics_are_replicated_three_times_with_two_in_sync(cluster: Cluster, tmp_path: Path) -> None:
    """`estop topics create` against the cluster, as a user runs it: the plan detects three
    brokers and asks for replication factor 3 and min.insync.replicas=2 on every topic."""
    prefix = "rf-" + tmp_path.name[-8:].replace("_", "") + "-"
    env = {**cluster.env, "ESTOP_BOOTSTRAP_SERVERS": cluster.address, "ESTOP_TOPIC_PREFIX": prefix}

    result = run_estop("topics", "create", env=env)

    assert result.returncode == 0, result.stderr
    settings = cluster.settings.model_copy(update={"topic_prefix": prefix})
    wanted = {spec.name for spec in plan(settings)}
    assert {name for name, _ in cluster.replicas(prefix)} == wanted
    assert set(cluster.replicas(prefix).values()) == {(3, 3)}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in sorted(wanted)]
    with admin(settings) as client:
        configs = {resource.name: future.result()["min.insync.replicas"] for resource, future
                   in client.describe_configs(resources, request_timeout=30).items()}
    for name, entry in configs.items():
        assert entry.value == "2", name
        # Set on the topic itself, not inherited from a broker's configuration.
        assert entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, name
    # The second run finds them as planned: no drift.
    again = run_estop("topics", "create", env=env)
    assert again.returncode == 0, again.stderr
    assert "0 created" in again.stdout and "0 differ" in again.stdout, again.stdout


@pytest.mark.parametrize(("brokers", "expected"), [
    (1, Replication(1, 1)), (2, Replication(2, 1)), (3, Replication(3, 2)), (5, Replication(3, 2))])
def test_replication_follows_the_cluster_size(brokers: int, expected: Replication) -> None:
    assert replication(load_settings(), brokers) == expected


def test_replication_settings_win_and_are_checked() -> None:
    settings = load_settings(replication_factor=2, min_insync_replicas=2)
    assert replication(settings, 5) == Replication(2, 2)
    # Only a replicated plan asks for min.insync.replicas (a single broker keeps Kafka's default).
    assert all("min.insync.replicas" not in s.config for s in plan(settings, Replication(1, 1)))
    assert all(s.config["min.insync.replicas"] == "2" for s in plan(settings, Replication(3, 2)))
    with pytest.raises(TopicPlanError, match=r"needs 3 brokers; the cluster .* has 1"):
        replication(load_settings(replication_factor=3), 1)
    with pytest.raises(TopicPlanError, match="MIN_INSYNC_REPLICAS=3 is more than the replication"):
        replication(load_settings(min_insync_replicas=3), 2)


@pytest.mark.broker
def test_a_replication_factor_the_cluster_cannot_hold_is_one_line(cluster: Cluster) -> None:
    """`estop topics create` with ESTOP_REPLICATION_FACTOR above the brokers: exit 2, one line,
    nothing created."""
    prefix = "too-many-"
    env = {"ESTOP_BOOTSTRAP_SERVERS": cluster.address, "ESTOP_TOPIC_PREFIX": prefix,
           "ESTOP_REPLICATION_FACTOR": "4"}

    result = run_estop("topics", "create", env=env)

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"estop: ESTOP_REPLICATION_FACTOR=4 needs 4 brokers; the cluster at "
        f"{cluster.address} has 3"]
    with admin(cluster.settings) as client:
        topics = client.list_topics(timeout=30).topics
    assert not [name for name in topics if name.startswith(prefix)]


def test_a_taken_port_of_any_node_is_a_one_line_error(tmp_path: Path) -> None:
    """Another program on node 2's broker port: say which port, start no node."""
    base = free_port_run(2 * BROKERS)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", base + 2))
        taken.listen()
        env = {"ESTOP_DATA_DIR": str(tmp_path / "data"), "ESTOP_BROKER_PORT": str(base),
               "ESTOP_CONTROLLER_PORT": str(base + 1)}
        result = run_estop("broker", "start", "--brokers", "3", env=env)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == [f"estop: port {base + 2} is already taken by another process; stop it, or use "
                     f"it as your broker with ESTOP_BOOTSTRAP_SERVERS=localhost:{base + 2}"], result.stderr
    assert not list((tmp_path / "data").glob("broker/**/broker.pid"))
