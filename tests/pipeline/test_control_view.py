"""ControlView semantics, no broker: what a stop means to every gate and dispatcher."""

from __future__ import annotations

from typing import Any

from streams.control.view import ControlView
from streams.models import CHANNELS


def command(campaign_id: str = "c1", channels: list[str] | None = None, command_id: str = "cmd1",
            action: str = "stop", requested_at: int = 1_000, reason: str = "wrong code") -> dict[str, Any]:
    return {
        "command_id": command_id,
        "campaign_id": campaign_id,
        "action": action,
        "channels": channels or [],
        "reason": reason,
        "requested_by": "ops",
        "requested_at": requested_at,
    }


def stopped_channels(view: ControlView, campaign_id: str) -> set[str]:
    return {c for c in CHANNELS if view.stopped(campaign_id, c) is not None}


def test_a_stop_without_channels_halts_every_channel_of_that_campaign_only() -> None:
    view = ControlView()

    applied = view.apply(command())

    assert applied is not None
    assert applied.newly_halted == frozenset(CHANNELS)
    assert stopped_channels(view, "c1") == set(CHANNELS)
    assert stopped_channels(view, "other") == set()
    stop = view.stopped("c1", "email")
    assert stop is not None
    assert (stop.command_id, stop.reason, stop.requested_by, stop.requested_at) == (
        "cmd1", "wrong code", "ops", 1_000)
    assert len(view) == 1
    assert view.anomalies == 0


def test_a_channel_subset_halts_only_those_channels() -> None:
    view = ControlView()

    applied = view.apply(command(channels=["sms", "push"]))

    assert applied is not None
    assert applied.newly_halted == {"sms", "push"}
    assert stopped_channels(view, "c1") == {"sms", "push"}
    assert view.stopped("c1", "email") is None
    assert view.channels_stopped("c1") == {"sms", "push"}


def test_widening_adds_channels_and_keeps_the_first_command_per_channel() -> None:
    view = ControlView()
    view.apply(command(channels=["sms"], command_id="first", requested_at=1_000, reason="one"))

    applied = view.apply(command(channels=["sms", "email"], command_id="second",
                                 requested_at=2_000, reason="two"))

    assert applied is not None
    assert applied.command_id == "second"
    assert applied.newly_halted == {"email"}  # sms was already halted by the first command
    sms, email = view.stopped("c1", "sms"), view.stopped("c1", "email")
    assert sms is not None and email is not None
    assert (sms.command_id, sms.reason) == ("first", "one")
    assert (email.command_id, email.reason) == ("second", "two")
    assert [s.command_id for s in view.stops("c1")] == ["first", "second"]
    assert stopped_channels(view, "c1") == {"sms", "email"}

    # A later whole-campaign stop widens to every remaining channel.
    everything = view.apply(command(command_id="third", requested_at=3_000))
    assert everything is not None
    assert everything.newly_halted == {"push", "webpush"}
    assert stopped_channels(view, "c1") == set(CHANNELS)
    first = view.stopped("c1", "sms")
    assert first is not None and first.command_id == "first"


def test_a_narrower_command_never_lifts_channels() -> None:
    view = ControlView()
    view.apply(command())

    applied = view.apply(command(channels=["email"], command_id="narrow"))

    assert applied is not None and applied.newly_halted == frozenset()
    assert stopped_channels(view, "c1") == set(CHANNELS)


def test_a_tombstone_never_lifts_a_stop_and_is_counted() -> None:
    view = ControlView()
    view.apply(command())

    view.apply_tombstone("c1")

    assert stopped_channels(view, "c1") == set(CHANNELS)
    assert view.anomalies == 1
    # A tombstone for a campaign nobody stopped lifts nothing either, and is no anomaly.
    view.apply_tombstone("never-stopped")
    assert view.anomalies == 1
    assert stopped_channels(view, "never-stopped") == set()


def test_an_unknown_action_never_lifts_a_stop_and_is_counted() -> None:
    view = ControlView()
    view.apply(command())

    result = view.apply(command(action="resume", command_id="undo"))

    assert result is None
    assert stopped_channels(view, "c1") == set(CHANNELS)
    stop = view.stopped("c1", "email")
    assert stop is not None and stop.command_id == "cmd1"
    assert view.anomalies == 1


def test_an_unknown_action_for_a_new_campaign_stops_nothing() -> None:
    view = ControlView()

    assert view.apply(command(campaign_id="c2", action="pause")) is None

    assert stopped_channels(view, "c2") == set()
    assert len(view) == 0
    assert view.anomalies == 1


def test_a_repeated_command_halts_nothing_new() -> None:
    view = ControlView()
    first = view.apply(command(channels=["email"]))

    again = view.apply(command(channels=["email"]))

    assert first is not None and first.newly_halted == {"email"}
    assert again is not None and again.newly_halted == frozenset()
    assert again.command_id == "cmd1"  # still acknowledged, so a re-sent stop can be confirmed
    assert stopped_channels(view, "c1") == {"email"}
    assert view.applied == 2
    assert view.anomalies == 0


def test_unknown_channels_in_a_command_are_counted_and_known_ones_applied() -> None:
    view = ControlView()

    applied = view.apply(command(channels=["email", "fax"]))

    assert applied is not None
    assert applied.newly_halted == {"email"}
    assert stopped_channels(view, "c1") == {"email"}
    assert view.anomalies == 1


def test_a_command_naming_only_unknown_channels_stops_nothing() -> None:
    view = ControlView()

    assert view.apply(command(channels=["fax", "pager"])) is None

    assert stopped_channels(view, "c1") == set()
    assert view.anomalies == 1


def test_stops_of_different_campaigns_are_independent() -> None:
    view = ControlView()
    view.apply(command(campaign_id="a", channels=["email"], command_id="ca"))
    view.apply(command(campaign_id="b", command_id="cb"))

    assert stopped_channels(view, "a") == {"email"}
    assert stopped_channels(view, "b") == set(CHANNELS)
    assert len(view) == 2
    # One Stop object per command, shared by its channels: memory per campaign stays small.
    assert len(view.stops("b")) == 1


def test_every_form_of_command_id_reads_back_exactly() -> None:
    """A campaign one command stopped is kept packed, a UUID command id as raw bytes: whatever
    the id (estop's own hex UUIDs, dashed UUIDs, anyone's text), readers get it back unchanged."""
    ids = ["0f1e2d3c4b5a69788796a5b4c3d2e1f0", "0F1E2D3C4B5A69788796A5B4C3D2E1F0",
           "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0",
           "{0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f}", "0f 1e2d3c4b5a69788796a5b4c3d2e1f0",
           "not-a-uuid-but-exactly-32-chars!", "", "stop #7 from the engine", "arrêt ✋ 停止"]
    view = ControlView()
    for index, command_id in enumerate(ids):
        view.apply(command(campaign_id=f"c{index}", command_id=command_id,
                           channels=["sms", "webpush"] if index % 2 else [],
                           requested_at=-(2 ** 63) if index == 1 else 2 ** 63 - 1 - index,
                           reason=f"reason {index % 3}"))

    for index, command_id in enumerate(ids):
        channels = {"sms", "webpush"} if index % 2 else set(CHANNELS)
        assert stopped_channels(view, f"c{index}") == channels
        assert view.channels_stopped(f"c{index}") == channels
        [stop] = view.stops(f"c{index}")
        assert (stop.command_id, stop.campaign_id, stop.channels, stop.requested_at,
                stop.requested_by, stop.reason) == (
            command_id, f"c{index}", channels,
            -(2 ** 63) if index == 1 else 2 ** 63 - 1 - index, "ops", f"reason {index % 3}")
        assert view.in_force(f"c{index}", command_id)
        assert not view.in_force(f"c{index}", command_id + "x")
    assert not view.in_force("never-stopped", ids[0])


def test_widening_a_campaign_already_looked_up_shows_the_new_channels() -> None:
    view = ControlView()
    view.apply(command(channels=["sms"], command_id="first"))
    looked_up = view.stopped("c1", "sms")
    assert looked_up is not None and view.stopped("c1", "email") is None

    view.apply(command(channels=["email"], command_id="second"))

    email = view.stopped("c1", "email")
    assert email is not None and email.command_id == "second"
    sms = view.stopped("c1", "sms")
    assert sms is not None and sms.command_id == "first"
    assert view.in_force("c1", "first") and view.in_force("c1", "second")
