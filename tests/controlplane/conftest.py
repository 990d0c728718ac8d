"""Fixtures of the control-plane tests: subprocesses that never outlive a test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.serde import Serdes
from tests.controlplane.support import Processes


@pytest.fixture
def serdes() -> Serdes:
    return Serdes()


@pytest.fixture
def processes() -> Iterator[Processes]:
    """Worker, control and other subprocesses of this test; all stopped at teardown."""
    started = Processes()
    try:
        yield started
    finally:
        started.stop_all()
