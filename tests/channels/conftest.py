"""Fixtures of the channel tests: the local stand-in SMSC, web push service and FCM, each on a
free port for one test; web-push-testing (npm), a push service written by others, for the session;
and the pipeline's worker fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from py_vapid import Vapid

from streams.campaigns.launcher import recipient_id
from streams.lab.standins.local import LocalStandIns, Pace
from streams.settings import load_settings
from tests.channels.web_push_testing import WebPushTesting, install
from tests.ecosystem.exceptions import ServerExitedError
from tests.pipeline.conftest import serdes, workers
from tests.support import free_port

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


@pytest.fixture
def vapid() -> Vapid:
    """A web push sender's VAPID key pair, new for each test."""
    key = Vapid()
    key.generate_keys()
    return key


@pytest.fixture(scope="session")
def web_push_testing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebPushTesting]:
    """web-push-testing for the session (installed into the cache folder on first use), on a free
    port, its log in a temporary folder, stopped at the end. Each test makes subscriptions of its
    own, so tests never see each other's messages."""
    installed = install(load_settings().cache_dir)
    failure: ServerExitedError | None = None
    for attempt in range(3):  # a free port may be taken before the server binds it
        folder = tmp_path_factory.mktemp(f"web-push-testing-{attempt}")
        server = WebPushTesting(installed, free_port(), folder)
        try:
            took = server.start()
            break
        except ServerExitedError as exc:
            failure = exc
    else:
        pytest.fail(f"web-push-testing did not start: {failure}")
    print(f"web-push-testing answered on port {server.port} {took:.1f}s after it was started")
    try:
        yield server
    finally:
        server.stop()
