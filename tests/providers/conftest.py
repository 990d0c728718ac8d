"""Fixtures of the provider tests: one private Postfix instance (and its smtp-sink receiver) for
the whole session, on free ports, in a session folder removed at the end; each test's settings
send email through it, and a test that needs the MTA agent gets one of its own, shipping
Postfix's log to that test's receipts topic (the agent ships to one topic prefix, each test has
its own). Postfix missing from the machine fails these tests with a clear message."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.mta.agent_process import AgentProcess
from streams.mta.local import LocalMta
from streams.mta.postfix import POSTFIX
from streams.settings import Settings, load_settings
from tests.support import free_port


@pytest.fixture(scope="session")
def mta() -> Iterator[LocalMta]:
    assert Path(POSTFIX).exists(), (f"{POSTFIX} is missing: these tests run a real Postfix; "
                                    "install it with `make system-test` (Debian package postfix)")
    # Postfix's own user must reach the folder: not under pytest's private (0700) base.
    home = Path(tempfile.mkdtemp(prefix="estop-mta-"))
    home.chmod(0o755)
    local = LocalMta(load_settings(mta_dir=home, mta_port=free_port(),
                                   mta_receiver_port=free_port(), mta_agent_port=free_port()))
    local.start(agent=False)
    try:
        yield local
    finally:
        local.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def receiver_up(mta: LocalMta) -> Iterator[LocalMta]:
    """The MTA with its receiver running; back up after a test that held it down."""
    mta.receiver_up()
    yield mta
    mta.receiver_up()


def through(settings: Settings, mta: LocalMta) -> Settings:
    """``settings`` with email through the session's Postfix and its agent's port."""
    return settings.model_copy(update={
        "email_provider": mta.provider_url,
        "mta_dir": mta.postfix.home,
        "mta_port": mta.postfix.port,
        "mta_receiver_port": mta.receiver.port,
        "mta_agent_port": mta.agent.port,
    })


@pytest.fixture
def smtp_settings(settings: Settings, mta: LocalMta) -> Settings:
    """This test's settings (its topics exist), email through the session's Postfix."""
    return through(settings, mta)


@pytest.fixture
def agent(smtp_settings: Settings) -> Iterator[AgentProcess]:
    """The MTA agent for this test, in the background as `estop mta start` runs it."""
    process = AgentProcess(smtp_settings)
    process.start()
    try:
        yield process
    finally:
        process.stop()
