"""The cluster tests share one three-node cluster (started once per session, the way a user
does, and stopped with `estop broker stop`); each test isolates itself by topic prefix, as
everywhere else. Killed nodes are restarted by the test that killed them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from streams.kafka.topics import create_topics
from streams.settings import Settings, load_settings
from tests.cluster.support import Cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = Cluster.plan(tmp_path_factory.mktemp("cluster"))
    started.start()
    try:
        yield started
    finally:
        started.stop()
        # `estop broker stop` stops every node, including any a failed test left down.
        assert all(pid is None for pid in started.pids().values()), started.pids()


@pytest.fixture
def cluster_settings(cluster: Cluster, tmp_path: Path) -> Settings:
    """Settings for this test on the cluster: its own topic prefix and data folder, the topics
    created with the plan's replication (3 replicas, min.insync.replicas 2)."""
    settings = load_settings(
        bootstrap_servers=cluster.address,
        topic_prefix=f"c{uuid4().hex[:8]}-",
        data_dir=tmp_path / "data",
        partitions=3,
    )
    create_topics(settings, say=lambda _: None)
    return settings
