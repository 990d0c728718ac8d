"""Fixtures of the console tests: Debian's Chromium driven by Playwright (``playwright install``
cannot download a browser here), and one real worker and control service per test module."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from streams.lab.broker import BrokerHandle
from tests.console.support import Stack, stack_settings, start_stack

REBIND_HOST = "rebind.example"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 # A name of another site that resolves to this machine: DNS rebinding, for real.
                 f"--host-resolver-rules=MAP {REBIND_HOST} 127.0.0.1"]

# Every browser expectation waits at most this long for the live page to catch up (a bound,
# never a measure: nothing asserts how fast anything happened).
expect.set_options(timeout=120_000)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright launches Debian's chromium; a missing one fails the tests."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: install Debian's `chromium` package "
                    "(bash deploy/system-packages.sh test)", pytrace=False)
    return {**browser_type_launch_args, "executable_path": path, "args": CHROMIUM_ARGS}


@pytest.fixture
def alerts(page: Page) -> list[str]:
    """Every JavaScript dialog (alert, confirm, prompt) the page opens: escaping means none."""
    opened: list[str] = []

    def record(dialog: Any) -> None:
        opened.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    return opened


@pytest.fixture(scope="module")
def stack(broker: BrokerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A worker (every gate, dispatcher and the sink; slow providers) and the control service
    for this module's topics."""
    yield from start_stack(stack_settings(broker, tmp_path_factory))



@pytest.fixture(scope="module")
def gates_only(broker: BrokerHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A worker with the gates and the sink but no dispatcher (what the gates pass waits at the
    dispatchers: figures that hold still) and the control service, for this module's topics."""
    yield from start_stack(stack_settings(broker, tmp_path_factory),
                           worker_args=["--role", "gate", "--role", "sink"])
