"""Fixtures of the pipeline tests: serdes and worker subprocesses that never outlive a test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import Workers


@pytest.fixture
def serdes() -> Serdes:
    return Serdes()


@pytest.fixture
def workers(settings: Settings) -> Iterator[Workers]:
    """Start `estop worker` subprocesses for this test's topics; all stopped at teardown."""
    started = Workers(settings)
    try:
        yield started
    finally:
        started.stop_all()
