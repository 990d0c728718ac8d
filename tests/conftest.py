"""Shared fixtures: one real Kafka broker per session, isolated topics and groups per test, and
a real schema registry (Apicurio Registry) for the session when a test asks for one.

The broker comes from the user's cluster, else Docker, else the project's own local broker.
Each test gets its own topic prefix and consumer group, so tests never see each other's records
and can run against a long-lived shared broker; tests of the registry use subjects of their own
prefix the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.schema_registry import SchemaRegistryClient

from streams.kafka.clients import admin
from streams.kafka.topics import create_topics
from streams.lab.broker import BrokerHandle, acquire_broker
from streams.settings import Settings, load_settings
from tests.ecosystem.apicurio import ApicurioRegistry
from tests.ecosystem.exceptions import EcosystemError
from tests.support import free_port

_SESSION_BROKER: list[BrokerHandle] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the broker the run used in the summary, where CI logs show it."""
    for handle in _SESSION_BROKER:
        terminalreporter.write_line(
            f"Kafka broker used: {handle.bootstrap_servers} ({handle.origin})"
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the broker is a broker test, marked or not: `-m "not broker"` works."""
    for item in items:
        if "broker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerHandle]:
    """The session's broker; stopped at the end only if this session started it."""
    handle = acquire_broker(load_settings(), say=print)
    _SESSION_BROKER.append(handle)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApicurioRegistry]:
    """Apicurio Registry for the session (fetched from Maven Central into the cache folder on
    first use), on a free port, in-memory storage, its log in a temporary folder, stopped at the
    end; the registry-wide compatibility rule is BACKWARD."""
    failure: EcosystemError | None = None
    for attempt in range(3):  # a free port may be taken before the server binds it
        registry = ApicurioRegistry(load_settings(), free_port(),
                                    tmp_path_factory.mktemp(f"apicurio-{attempt}"), say=print)
        try:
            registry.start()
            break
        except EcosystemError as exc:
            registry.stop()
            failure = exc
    else:
        pytest.fail(f"Apicurio Registry did not start: {failure}")
    try:
        # What the registry's operator decides; estop registers under whatever rule is set.
        SchemaRegistryClient({"url": registry.ccompat_url}).set_compatibility(level="BACKWARD")
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def subject_prefix() -> str:
    """Registry subjects of this test alone (``<prefix>estop.SendRequest``)."""
    return f"t{uuid4().hex[:8]}-"


def _delete_topics(settings: Settings) -> None:
    """Remove this test's topics so a long-lived broker does not fill up with them; a failure
    is a warning in the summary, not a test error."""
    failures: list[str] = []
    try:
        with admin(settings) as client:
            names = [
                name
                for name in client.list_topics(timeout=settings.admin_timeout_s).topics
                if name.startswith(settings.topic_prefix)
            ]
            futures = client.delete_topics(names, operation_timeout=settings.admin_timeout_s) if names else {}
            for name, future in futures.items():
                try:
                    future.result()
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                        failures.append(f"{name}: {exc.args[0].str()}")
    except KafkaException as exc:
        failures.append(str(exc))
    if failures:
        warnings.warn(f"test topics left on the broker: {'; '.join(failures)}", stacklevel=1)


@pytest.fixture
def bare_settings(broker: BrokerHandle, tmp_path: Path) -> Iterator[Settings]:
    """Settings with a unique topic prefix and data folder, topics not created yet."""
    settings = load_settings(
        bootstrap_servers=broker.bootstrap_servers,
        topic_prefix=f"t{uuid4().hex[:8]}-",
        data_dir=tmp_path / "data",
        partitions=3,
    )
    yield settings
    _delete_topics(settings)


@pytest.fixture
def settings(bare_settings: Settings) -> Settings:
    """Settings whose topics exist: what a pipeline test starts from."""
    create_topics(bare_settings, say=lambda _: None)
    return bare_settings


@pytest.fixture
def group_id() -> str:
    """A consumer group no other test (or earlier run) has committed offsets for."""
    return f"g-{uuid4().hex[:12]}"
