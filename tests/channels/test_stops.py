"""The emergency stop on SMS (SMPP), web push and mobile push (FCM) end to end: the real broker,
a real worker subprocess whose dispatcher speaks each protocol, and the local stand-in that
receives the messages and counts what reached a device.

For each channel, stopped while Sending and after Finished: exactly one outcome per message,
nothing handed over or arriving at a device after the confirmation, every arrival reported as
sent and every sent message arrived, and the report's split of what the provider cancelled and
what the dispatcher held back agrees with what the stand-in says it dropped."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from streams.campaigns.launcher import launch, message_id, recipient_id
from streams.control.stop import StopResult
from streams.dispatch.changelog import LedgerStats
from streams.lab.standins.local import LocalStandIns
from streams.lab.standins.pushservice import AUTOPUSH, DELETED, REPLACED, WEB_PUSH_TESTING
from streams.lab.standins.smsc import SMPPSIM
from streams.models import (
    NOT_SENT_EVENT,
    REASON_CANCEL_UNCONFIRMED,
    REASON_CANCELLED,
    REASON_HELD,
    SENT_EVENT,
    STAGE_PROVIDER,
    STAGE_SENDING,
    STATE_FINISHED,
    STATE_STOPPED,
)
from streams.serde import Serdes
from streams.settings import Settings
from tests.channels.conftest import PACE, RECIPIENTS
from tests.pipeline.support import (
    Event,
    Workers,
    accounted_report,
    duplicates,
    read_events,
    wait_for,
    wait_joined,
    wait_outcomes,
)
from tests.pipeline.test_emergency_stop import Launch, stop

pytestmark = pytest.mark.broker

CHANNELS = ["sms", "webpush", "push"]
RATE = 150  # handoffs per second: slow enough that the campaign is still at the dispatcher


def start_worker(settings: Settings, workers: Workers, stand_ins: LocalStandIns, channel: str) -> str:
    _, worker_id = workers.start("--channel", channel, everything=True, rate=RATE,
                                 env=stand_ins.env())
    wait_joined(settings, [worker_id], [settings.topics.gate_group(channel),
                                        settings.topics.dispatcher_group(channel)])
    return worker_id


def wait_arrival(stand_ins: LocalStandIns, channel: str, campaign: str) -> None:
    arrivals = stand_ins.arrivals(channel)
    wait_for(lambda: arrivals.count(campaign) > 0, f"a {channel} message of {campaign} on a device")


def stop_after_finished(settings: Settings, serdes: Serdes, workers: Workers,
                        stand_ins: LocalStandIns, channel: str, campaign: str,
                        planned: int) -> StopResult:
    """A worker for ``channel``, the campaign launched until Finished, the stop once a message
    reached a device: the provider still holds some, the dispatcher has not handed over all."""
    start_worker(settings, workers, stand_ins, channel)
    assert launch(settings, serdes, campaign, [channel], planned).state == STATE_FINISHED
    wait_arrival(stand_ins, channel, campaign)
    return stop(settings, serdes, campaign)


def one_outcome_each(settings: Settings, serdes: Serdes, campaign: str, planned: int,
                     result: StopResult) -> list[Event]:
    """The campaign's events once every message has its outcome: the stop confirmed, exactly
    one outcome per message."""
    assert result.confirmed_at_ms is not None
    wait_outcomes(settings, campaign, planned)
    events = read_events(settings, serdes, campaign)
    assert duplicates(events) == {} and len(events) == planned
    return events


def check(settings: Settings, serdes: Serdes, stand_ins: LocalStandIns, channel: str,
          campaign: str, planned: int, result: StopResult) -> dict[str, int]:
    """What every stop must leave behind; returns the report's figures for the channel."""
    assert result.confirmed_at_ms is not None
    wait_outcomes(settings, campaign, planned)
    events = read_events(settings, serdes, campaign)
    assert duplicates(events) == {}, "a message has more than one outcome"
    assert {e.message_id for e in events} == {message_id(campaign, channel, i) for i in range(planned)}
    sent = [e for e in events if e.kind == "sent"]
    not_sent = [e for e in events if e.kind == "notsent"]
    assert all(e.record["event"] == SENT_EVENT[channel] for e in sent)
    assert all(e.record["event"] == NOT_SENT_EVENT[channel] for e in not_sent)
    assert all(e.record["handed_at"] <= result.confirmed_at_ms for e in sent)

    # Guarantee 1, counted where the messages arrive: nothing after the confirmation.
    arrivals = stand_ins.arrivals(channel)
    assert arrivals.count(campaign, after_ms=result.confirmed_at_ms) == 0
    assert LedgerStats(settings, channel).handed_after(campaign, result.confirmed_at_ms) == 0
    # Every arrival is reported sent, and every message reported sent arrived.
    assert arrivals.count(campaign) == len(sent)

    report = accounted_report(settings, campaign, planned)["by_channel"][channel]
    assert report["sent"] == len(sent)
    cancelled = report["cancelled_at_provider"]
    held = report["not_sent_by_stage"][STAGE_PROVIDER] - cancelled
    assert cancelled == sum(e.record["reason"].startswith(REASON_CANCELLED) for e in not_sent)
    assert held == sum(e.record["reason"].startswith(REASON_HELD) for e in not_sent)
    dropped = dropped_at_stand_in(stand_ins, channel, campaign)
    assert cancelled == dropped, "the report and the provider disagree"
    return {"sent": report["sent"], "sending": report["not_sent_by_stage"][STAGE_SENDING],
            "cancelled_at_provider": cancelled, "held_before_handoff": held}


def dropped_at_stand_in(stand_ins: LocalStandIns, channel: str, campaign: str) -> int:
    """How many messages of the campaign the provider itself says it dropped on the stop."""
    if channel == "sms":
        assert stand_ins.smsc is not None
        return stand_ins.smsc.states(campaign).get("cancelled", 0)
    if channel == "webpush":
        assert stand_ins.push_service is not None
        return stand_ins.push_service.states(campaign).get("deleted", 0)
    return 0  # FCM cannot drop an accepted message


@pytest.mark.parametrize("channel", CHANNELS)
def test_stop_after_finished(channel: str, settings: Settings, serdes: Serdes, workers: Workers,
                             stand_ins: LocalStandIns) -> None:
    """Every request passed the gate; the dispatcher is still handing them over and the provider
    still holds some: the stop cancels what the provider holds (SMS, web push), holds back what
    was not handed over, and nothing more reaches a device."""
    campaign, planned = f"finished-{channel}", 900
    result = stop_after_finished(settings, serdes, workers, stand_ins, channel, campaign, planned)

    figures = check(settings, serdes, stand_ins, channel, campaign, planned, result)
    assert figures["sent"] > 0 and figures["held_before_handoff"] > 0, figures
    assert figures["sending"] == 0, figures
    if channel == "push":
        assert figures["cancelled_at_provider"] == 0, "FCM cannot cancel"
    else:
        assert figures["cancelled_at_provider"] > 0, figures
        assert result.halted == figures["cancelled_at_provider"]


@pytest.mark.parametrize("channel", CHANNELS)
def test_stop_while_sending(channel: str, settings: Settings, serdes: Serdes, workers: Workers,
                            stand_ins: LocalStandIns) -> None:
    """The engine is still queueing the campaign when the stop lands: the rest is never queued
    (notSent at stage sending), and the provider stage is halted as after Finished."""
    campaign, planned = f"sending-{channel}", RECIPIENTS
    start_worker(settings, workers, stand_ins, channel)
    launcher = Launch(settings, serdes, campaign, [channel], planned, rate=RATE)
    wait_arrival(stand_ins, channel, campaign)
    result = stop(settings, serdes, campaign)
    launched = launcher.join()
    assert launched.state == STATE_STOPPED

    figures = check(settings, serdes, stand_ins, channel, campaign, planned, result)
    assert launched.never_queued[channel] > 0
    assert figures["sending"] >= launched.never_queued[channel], figures
    assert figures["sent"] > 0, figures


def test_web_push_stop_replaces_by_topic_where_the_service_cannot_delete(
    settings: Settings, serdes: Serdes, workers: Workers, tmp_path: Path
) -> None:
    """A push service without DELETE: the stop replaces each message it still stores by its Topic
    with a no-op, so the original never reaches the device. The service does not say whether a
    message was still stored, so every handed-over message counts as sent (an over-count, never
    a leak), and no campaign message arrives after the confirmation."""
    campaign, planned = "finished-webpush-topic", 900
    stand_ins = LocalStandIns(tmp_path / "stand-ins", ["webpush"],
                              [recipient_id(i) for i in range(RECIPIENTS)],
                              dataclasses.replace(PACE, webpush_cancel="topic")).start()
    try:
        result = stop_after_finished(settings, serdes, workers, stand_ins, "webpush", campaign,
                                     planned)
        events = one_outcome_each(settings, serdes, campaign, planned, result)
        sent = [e for e in events if e.kind == "sent"]
        held = [e for e in events if e.kind == "notsent"]
        assert held and all(e.record["reason"].startswith(REASON_HELD) for e in held)

        service, arrivals = stand_ins.push_service, stand_ins.arrivals("webpush")
        assert service is not None
        replaced = service.states(campaign).get(REPLACED, 0)
        assert replaced > 0 and service.states(campaign).get(DELETED, 0) == 0
        assert arrivals.count(campaign, after_ms=result.confirmed_at_ms) == 0
        assert len(sent) == arrivals.count(campaign) + replaced
        wait_for(lambda: arrivals.count("withdrawn") >= replaced, "the no-ops on the devices")
        assert LedgerStats(settings, "webpush").handed_after(
            campaign, result.confirmed_at_ms or 0) == 0
    finally:
        stand_ins.stop()


# -- stops against stand-ins that answer as real servers do ---------------------------------------


def quirky_stand_ins(tmp_path: Path, channel: str, **pace: Any) -> LocalStandIns:
    return LocalStandIns(tmp_path / "stand-ins", [channel], [recipient_id(i) for i in range(RECIPIENTS)],
                         dataclasses.replace(PACE, **pace)).start()


def arrived_ids(stand_ins: LocalStandIns, channel: str, campaign: str) -> list[str]:
    """The message ids that reached a device, once per arrival (the payload names the message)."""
    texts = [a.text for a in stand_ins.arrivals(channel).items if campaign in a.text]
    if channel == "webpush":
        return [json.loads(text)["message_id"] for text in texts]
    return texts


def test_sms_stop_against_an_smsc_that_answers_ok_for_delivered_messages(
    settings: Settings, serdes: Serdes, workers: Workers, tmp_path: Path
) -> None:
    """SMPPSim answers ESME_ROK to cancel_sm of a message it already delivered, and receipts lag
    behind deliveries: at the stop, messages already on handsets are still "accepted" in the
    outbox. query_sm says DELIVERED for them, so they count as sent (their receipts decide), and
    only what the SMSC really dropped counts as cancelled."""
    campaign, planned = "finished-sms-smppsim", 900
    stand_ins = quirky_stand_ins(tmp_path, "sms", sms_quirks=SMPPSIM, sms_receipt_delay_s=4.0)
    try:
        result = stop_after_finished(settings, serdes, workers, stand_ins, "sms", campaign,
                                     planned)

        figures = check(settings, serdes, stand_ins, "sms", campaign, planned, result)
        assert stand_ins.smsc is not None
        assert stand_ins.smsc.counts.cancel_ok_too_late > 0, "no cancel of a delivered message"
        assert figures["cancelled_at_provider"] > 0 and figures["sent"] > 0, figures
    finally:
        stand_ins.stop()


def test_web_push_stop_against_autopush_counts_its_204s_unconfirmed(
    settings: Settings, serdes: Serdes, workers: Workers, tmp_path: Path
) -> None:
    """Mozilla's autopush answers 204 to a DELETE whether it deleted the message or had already
    delivered it. With the default delete_204=unconfirmed every 204 is a notSent whose reason
    says the cancel was not confirmed, counted apart, and none counts as cancelled: among them
    are messages that did reach a browser, which "cancelled" would have hidden."""
    campaign, planned = "finished-webpush-autopush", 900
    stand_ins = quirky_stand_ins(tmp_path, "webpush", webpush_quirks=AUTOPUSH)
    try:
        result = stop_after_finished(settings, serdes, workers, stand_ins, "webpush", campaign,
                                     planned)
        events = one_outcome_each(settings, serdes, campaign, planned, result)
        sent = {e.message_id for e in events if e.kind == "sent"}
        not_sent = [e for e in events if e.kind == "notsent"]
        unconfirmed = {e.message_id for e in not_sent
                       if e.record["reason"].startswith(REASON_CANCEL_UNCONFIRMED)}
        assert not any(e.record["reason"].startswith(REASON_CANCELLED) for e in not_sent)

        arrived = arrived_ids(stand_ins, "webpush", campaign)
        assert len(arrived) == len(set(arrived))
        assert set(arrived) <= sent | unconfirmed, "a message that arrived counts as cancelled"
        assert sent <= set(arrived)
        assert unconfirmed & set(arrived), "no 204 for a delivered message: the quirk was not hit"
        assert stand_ins.arrivals("webpush").count(campaign, after_ms=result.confirmed_at_ms) == 0
        report = accounted_report(settings, campaign, planned)
        assert (report["cancelled_at_provider"], report["cancel_unconfirmed"]) == (0, len(unconfirmed))
        assert report["sent"] == len(sent)
    finally:
        stand_ins.stop()


def test_web_push_stop_where_the_service_gives_no_location(
    settings: Settings, serdes: Serdes, workers: Workers, tmp_path: Path
) -> None:
    """A push service that answers 201 Created without a Location (web-push-testing): each message
    is accepted once (not refused and sent again), and with cancel=topic the stop replaces what
    the service still stores by its Topic: nothing of the campaign arrives after the
    confirmation, none fails, every message arrives at most once."""
    campaign, planned = "finished-webpush-nolocation", 900
    stand_ins = quirky_stand_ins(tmp_path, "webpush", webpush_quirks=WEB_PUSH_TESTING,
                                 webpush_cancel="topic")
    try:
        result = stop_after_finished(settings, serdes, workers, stand_ins, "webpush", campaign,
                                     planned)
        events = one_outcome_each(settings, serdes, campaign, planned, result)  # sent or notSent: none failed
        sent = {e.message_id for e in events if e.kind == "sent"}

        service = stand_ins.push_service
        assert service is not None
        arrived = arrived_ids(stand_ins, "webpush", campaign)
        assert len(arrived) == len(set(arrived)), "a message reached a browser twice"
        replaced = service.states(campaign).get(REPLACED, 0)
        assert replaced > 0
        assert set(arrived) <= sent and len(sent) == len(arrived) + replaced
        assert stand_ins.arrivals("webpush").count(campaign, after_ms=result.confirmed_at_ms) == 0
    finally:
        stand_ins.stop()
