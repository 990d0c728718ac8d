"""The secured suite: its own KRaft broker with SASL/SCRAM-SHA-512 and ACLs (started once per
session on free ports, in a data folder of its own), and per test a topic prefix with its own
principals and ACLs from `estop security init`, as a user sets them up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from streams.kafka.broker import LocalBroker
from streams.settings import load_settings
from tests.conftest import _delete_topics
from tests.controlplane.conftest import processes, serdes
from tests.security.support import Principals, SecureBroker
from tests.support import free_port

ADMIN_PASSWORD = uuid4().hex


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the secured broker is a broker test: `-m "not broker"` leaves it out too."""
    for item in items:
        if "secure_broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A secured local broker for this session; Java or the jars missing is a failure."""
    home = tmp_path_factory.mktemp("secure-broker")
    settings = load_settings(
        data_dir=home, broker_port=free_port(), controller_port=free_port(), broker_secure=True,
        broker_heap="512m", broker_admin_password=ADMIN_PASSWORD,
        security_protocol="PLAINTEXT", sasl_mechanism=None, sasl_username=None, sasl_password=None,
    )
    local = LocalBroker(settings, say=print)
    local.start()
    try:
        yield SecureBroker(local, local.client_settings())
    finally:
        local.stop()


@pytest.fixture
def secured(secure_broker: SecureBroker, tmp_path: Path) -> Iterator[Principals]:
    """A topic prefix of this test: its topics, principals and ACLs (`estop security init`, as
    the admin), and the settings of each role."""
    admin_settings = secure_broker.admin.model_copy(update={
        "topic_prefix": f"t{uuid4().hex[:8]}-", "data_dir": tmp_path / "data", "partitions": 3,
        "broker_secure": False})
    principals = Principals.initialise(admin_settings)
    yield principals
    _delete_topics(admin_settings)


# The control-plane suite's fixtures: the record serdes, subprocesses stopped at teardown.
__all__ = ["processes", "serdes"]

