"""Fixtures of the channel tests: the local stand-in SMSC, web push service and FCM, each on a
free port for one test, and the pipeline's worker fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.campaigns.launcher import recipient_id
from streams.providers.testservers.local import LocalStandIns, Pace
from tests.pipeline.conftest import serdes, workers

__all__ = ["serdes", "workers"]

RECIPIENTS = 1200  # every test campaign addresses recipients among the first RECIPIENTS
# Holds long enough for a stop to find messages at each stand-in, short enough that some arrive.
PACE = Pace(sms_hold_s=3.0, webpush_connect_every_s=3.0, webpush_ttl_s=8, push_rate=2000.0)


@pytest.fixture
def stand_ins(tmp_path: Path) -> Iterator[LocalStandIns]:
    started = LocalStandIns(tmp_path / "stand-ins", ["sms", "webpush", "push"],
                            [recipient_id(i) for i in range(RECIPIENTS)], PACE).start()
    try:
        yield started
    finally:
        started.stop()
