"""The dispatcher's stop hook and the handoffs under way when a stop is applied.

A handoff is checked against the control view, then submitted to the provider and recorded in
the outbox. The view's lock covers only the check: a stop of another campaign is applied while a
provider call is under way, and the stop hook of a campaign whose handoff is under way returns
(so the process acknowledges the stop) only once the outbox recorded that handoff, which the
hook then cancels at the provider. Real broker, the simulated provider holding its submissions
until the test releases them."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from streams.control.view import Applied, ControlView
from streams.dispatch.changelog import LedgerStats
from streams.dispatch.dispatcher import Dispatcher
from streams.providers.base import Handoff, Submitted
from streams.providers.simulated import SimulatedAdapter, queue_path
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import produce_requests, wait_for


class HeldSubmissions(SimulatedAdapter):
    """The simulated provider, answering a submission only once the test releases it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "email", delay_s=600.0)
        self.entered = threading.Event()
        self.release = threading.Event()

    def submit(self, handoffs: Sequence[Handoff]) -> list[Submitted]:
        self.entered.set()
        assert self.release.wait(180), "the test never released the submission"
        return super().submit(handoffs)


def stop(campaign_id: str) -> dict[str, Any]:
    return {"command_id": f"stop-{campaign_id}", "campaign_id": campaign_id, "action": "stop",
            "channels": [], "reason": "wrong code", "requested_by": "ops", "requested_at": 1_000}


def hook_thread(dispatcher: Dispatcher, applied: Applied) -> tuple[threading.Thread, list[int]]:
    """The dispatcher's stop hook running on a thread of its own, as on the control feed's."""
    halted: list[int] = []
    hook = threading.Thread(target=lambda: halted.append(dispatcher.on_stop(applied)), daemon=True)
    hook.start()
    return hook, halted


class Running:
    """A dispatcher's main loop on a thread, as a worker runs it."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.running = threading.Event()
        self.running.set()
        self.thread = threading.Thread(target=dispatcher.run, args=(self.running,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.running.clear()
        self.thread.join(60)


# The dispatcher, its provider, its view and the message of campaign "busy" being handed over.
Dispatching = tuple[Dispatcher, HeldSubmissions, ControlView, str]


@pytest.fixture
def dispatching(settings: Settings, serdes: Serdes) -> Iterator[Dispatching]:
    """A dispatcher whose handoff of a message of campaign "busy" is under way, held at the
    provider until the test releases it."""
    view = ControlView()
    provider = HeldSubmissions(queue_path(settings.data_dir, "email"))
    dispatcher = Dispatcher(settings, "email", view, serdes, "hook-test", provider, rate=1000.0)
    loop = Running(dispatcher)
    try:
        [message] = produce_requests(settings, serdes, settings.topics.dispatch("email"), "busy",
                                     "email", [0])
        wait_for(provider.entered.is_set, "the handoff of busy to reach the provider")
        yield dispatcher, provider, view, message
    finally:
        provider.release.set()
        loop.close()


def test_a_stop_is_applied_while_a_provider_call_is_under_way(dispatching: Dispatching) -> None:
    _, provider, view, _ = dispatching

    applied = threading.Thread(target=view.apply, args=(stop("quiet"),), daemon=True)
    applied.start()
    # The view lock is not held across the provider call: this completes while it is held.
    wait_for(lambda: not applied.is_alive(), "the stop of quiet to be applied")
    assert view.stopped("quiet", "email") is not None
    assert not provider.release.is_set()


def test_the_stop_hook_returns_once_the_handoff_under_way_is_recorded_and_cancels_it(
        settings: Settings, dispatching: Dispatching) -> None:
    dispatcher, provider, view, message = dispatching
    applied = view.apply(stop("busy"))
    assert applied is not None
    # Applied: no further handoff of busy can start; the one under way was checked before.
    hook, halted = hook_thread(dispatcher, applied)
    hook.join(1.0)
    assert hook.is_alive(), "the stop hook returned while a handoff of its campaign was under way"

    provider.release.set()
    wait_for(lambda: not hook.is_alive(), "the stop hook to return")
    # The handoff was recorded before the hook went on, so the hook found it and cancelled it.
    assert halted == [1]
    stats = LedgerStats(settings, "email")
    assert stats.handed("busy") == 1
    assert stats.cancelled("busy") == 1
    assert stats.message_ids("busy") == {message}


def test_the_stop_hook_of_a_campaign_not_under_way_does_not_wait_for_the_provider(
        dispatching: Dispatching) -> None:
    dispatcher, provider, view, _ = dispatching
    applied = view.apply(stop("quiet"))
    assert applied is not None

    hook, halted = hook_thread(dispatcher, applied)
    wait_for(lambda: not hook.is_alive(), "the stop hook of quiet to return")
    assert halted == [0]
    assert not provider.release.is_set()
