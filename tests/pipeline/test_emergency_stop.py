"""The emergency stop end to end against the real broker, with real worker processes.

Each test launches a small campaign (or produces requests itself), stops it with the same call
`estop stop` makes, waits until every planned message has an outcome, and then checks the
accounting from the event topics and the dispatchers' outboxes: exactly one outcome per message,
the right event names, and no handoff to a provider after the stop was confirmed.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import pytest

from streams.campaigns.launcher import LaunchResult, launch, message_id
from streams.control.stop import StopResult, issue_stop
from streams.dispatch.changelog import LedgerStats
from streams.kafka.clients import producer
from streams.lab.harness import OutcomeWatch
from streams.models import (
    CHANNELS,
    NOT_SENT_EVENT,
    SENT_EVENT,
    STAGE_PROVIDER,
    STAGE_SENDING,
    STAGES,
    STATE_FINISHED,
    STATE_STOPPED,
)
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import (
    WAIT_S,
    Event,
    Workers,
    announce,
    duplicates,
    handed,
    produce_requests,
    read_events,
    wait_for,
    wait_joined,
    wait_outcomes,
)

pytestmark = pytest.mark.broker

REASON = "wrong discount code"


class Launch:
    """`launch` on a thread, as the campaign engine runs next to the operator."""

    def __init__(self, settings: Settings, serdes: Serdes, campaign_id: str, channels: list[str],
                 recipients: int, rate: float | None = None) -> None:
        self.result: LaunchResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(settings, serdes, campaign_id, channels, recipients, rate),
            daemon=True,
        )
        self.thread.start()

    def _run(self, *args: object) -> None:
        try:
            self.result = launch(*args)  # type: ignore[arg-type]
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self) -> LaunchResult:
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive(), "the launcher did not finish"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def stop(settings: Settings, serdes: Serdes, campaign_id: str, channels: list[str] | None = None,
         force: bool = False) -> StopResult:
    result = issue_stop(settings, serdes, campaign_id, REASON, channels or [], by="test operator",
                        timeout_s=60, force=force)
    assert result.confirmed, f"stop not confirmed: live {result.live}, acks {result.acks}"
    assert result.confirmed_at_ms is not None
    return result


def wait_until(settings: Settings, campaign_id: str, ready: Callable[[OutcomeWatch], bool],
               what: str) -> None:
    """Tail the outcomes of a campaign until ``ready`` says the scene is set."""
    watch = OutcomeWatch(settings, campaign_id)
    try:
        def check() -> bool:
            watch.poll(0.05)
            return ready(watch)

        wait_for(check, what, every_s=0)
    finally:
        watch.close()


def sent_on(channel: str) -> Callable[[OutcomeWatch], bool]:
    return lambda w: w.counter.channel(channel).sent > 0


def by_channel(events: list[Event]) -> dict[str, list[Event]]:
    grouped: dict[str, list[Event]] = {}
    for event in events:
        grouped.setdefault(event.record["channel"], []).append(event)
    return grouped


def check_accounting(settings: Settings, events: list[Event], campaign_id: str,
                     planned: dict[str, int], result: StopResult) -> dict[str, Counter[str]]:
    """What every stop must leave behind; returns per channel: sent, notSent by stage and how
    the provider-stage ones were halted (cancelled / held)."""
    assert duplicates(events) == {}, "a message has more than one outcome on the event topics"
    expected_ids = {message_id(campaign_id, c, i) for c, n in planned.items() for i in range(n)}
    assert {e.message_id for e in events} == expected_ids
    assert result.confirmed_at_ms is not None
    tally: dict[str, Counter[str]] = {}
    for channel, channel_events in by_channel(events).items():
        counts = tally.setdefault(channel, Counter())
        for event in channel_events:
            record = event.record
            assert record["message_id"].startswith(f"{campaign_id}:{channel}:")
            if event.kind == "sent":
                assert record["event"] == SENT_EVENT[channel]
                if channel in result.channels:
                    # Handed over and delivered before the stop was confirmed, never after.
                    assert record["handed_at"] <= result.confirmed_at_ms
                    assert record["occurred_at"] <= result.confirmed_at_ms
                counts["sent"] += 1
                continue
            assert record["event"] == NOT_SENT_EVENT[channel]
            assert record["stage"] in STAGES
            assert REASON in record["reason"]
            assert record["stop_command_id"] is not None
            counts[record["stage"]] += 1
            if record["stage"] == STAGE_PROVIDER:
                if "cancelled at the provider" in record["reason"]:
                    counts["cancelled"] += 1
                else:
                    assert "held before handoff" in record["reason"]
                    counts["held"] += 1
    for channel, count in planned.items():
        counts = tally.get(channel, Counter())
        assert counts["sent"] + counts[STAGE_SENDING] + counts[STAGE_PROVIDER] == count, channel
        outbox = LedgerStats(settings, channel)
        if channel in result.channels:
            # Guarantee 1: nothing of the campaign reached a provider after the confirmation...
            assert outbox.handed_after(campaign_id, result.confirmed_at_ms) == 0, channel
            # ...nor after the moment each process applied the stop.
            for ack in result.acks:
                assert result.broker_ack_ms is not None
                applied_at = result.broker_ack_ms + ack.propagation_ms
                assert outbox.handed_after(campaign_id, applied_at) == 0, (channel, ack.process_id)
        # Whatever the provider accepted was either delivered or cancelled there.
        assert outbox.handed(campaign_id) == counts["sent"] + counts["cancelled"], (channel, counts)
        assert outbox.at_provider(campaign_id) == 0, channel
        assert outbox.resubmitted(campaign_id) == 0, channel
    return tally


def test_stop_while_sending_on_all_four_channels(settings: Settings, serdes: Serdes,
                                                 workers: Workers) -> None:
    """A four-channel campaign stopped while the engine is still queueing it: every planned
    message ends as exactly one sent or notSent event with the channel's event name, and no
    provider gets anything of it after the confirmation."""
    campaign, recipients = "spring-sale", 3000
    _, worker_id = workers.start(rate=2000, delay_s=0.5, everything=True)
    wait_joined(settings, [worker_id], settings.topics.data_plane_groups())

    launcher = Launch(settings, serdes, campaign, list(CHANNELS), recipients, rate=500)
    wait_until(settings, campaign, lambda w: all(sent_on(c)(w) for c in CHANNELS),
               "a sent message on every channel")
    result = stop(settings, serdes, campaign)
    launched = launcher.join()

    planned = dict.fromkeys(CHANNELS, recipients)
    counter = wait_outcomes(settings, campaign, sum(planned.values()))

    assert launched.state == STATE_STOPPED, "the stop should land while the campaign is Sending"
    assert {a.process_id for a in result.acks} == {worker_id} == set(result.live)
    assert result.channels == sorted(CHANNELS)
    events = read_events(settings, serdes, campaign)
    tally = check_accounting(settings, events, campaign, planned, result)
    for channel in CHANNELS:
        counts = tally[channel]
        assert counts["sent"] > 0, channel
        # The engine never queued the rest: reported as notSent at stage sending.
        assert launched.never_queued[channel] > 0, channel
        assert launched.queued[channel] + launched.never_queued[channel] == recipients
        assert counts[STAGE_SENDING] >= launched.never_queued[channel], channel
        assert all(e.record["stop_command_id"] == result.command_id
                   for e in by_channel(events)[channel] if e.kind == "notsent")
        # The tally from the events agrees with the one-outcome-per-id counter.
        assert counter.channel(channel).sent == counts["sent"]
        assert counter.channel(channel).not_sent_total == recipients - counts["sent"]


def test_stop_after_finished_halts_the_dispatch_backlog_and_the_provider_queue(
    settings: Settings, serdes: Serdes, workers: Workers
) -> None:
    """Every request passed the gate (campaign Finished) but the slow providers are still
    working: the stop holds back what waits for handoff and cancels what the provider holds."""
    campaign, recipients, channels = "finished-promo", 2000, ["email", "push"]
    _, worker_id = workers.start(rate=500, delay_s=2.0)
    wait_joined(settings, [worker_id], settings.topics.data_plane_groups())

    launched = launch(settings, serdes, campaign, channels, recipients)
    assert launched.state == STATE_FINISHED
    wait_for(lambda: all(LedgerStats(settings, c).at_provider(campaign) > 0 for c in channels),
             "messages waiting in every provider's queue", every_s=0.02)
    result = stop(settings, serdes, campaign)

    planned = dict.fromkeys(channels, recipients)
    wait_outcomes(settings, campaign, sum(planned.values()))

    events = read_events(settings, serdes, campaign)
    tally = check_accounting(settings, events, campaign, planned, result)
    for channel in channels:
        counts = tally[channel]
        assert counts[STAGE_PROVIDER] > 0, channel
        assert counts["cancelled"] > 0, f"{channel}: nothing was cancelled at the provider"
        assert counts["held"] > 0, f"{channel}: nothing was held before handoff"
    # What the worker reported as halted at its providers is what the events say was cancelled.
    assert result.halted == sum(t["cancelled"] for t in tally.values())
    assert {a.process_id for a in result.acks} == {worker_id}


def test_a_channel_scoped_stop_halts_only_that_channel(settings: Settings, serdes: Serdes,
                                                       workers: Workers) -> None:
    campaign, recipients = "two-channel", 1000
    _, worker_id = workers.start(rate=1000, delay_s=0.5)
    wait_joined(settings, [worker_id], settings.topics.data_plane_groups())

    launcher = Launch(settings, serdes, campaign, ["email", "sms"], recipients, rate=250)
    wait_until(settings, campaign, sent_on("sms"), "a sent sms")
    result = stop(settings, serdes, campaign, channels=["sms"])
    launched = launcher.join()
    planned = {"email": recipients, "sms": recipients}
    wait_outcomes(settings, campaign, sum(planned.values()))

    assert result.channels == ["sms"]
    events = read_events(settings, serdes, campaign)
    tally = check_accounting(settings, events, campaign, planned, result)
    # Email went on untouched: every message queued and sent.
    assert launched.queued["email"] == recipients
    assert tally["email"]["sent"] == recipients
    assert not [e for e in events if e.kind == "notsent" and e.record["channel"] == "email"]
    assert LedgerStats(settings, "email").handed(campaign) == recipients
    # SMS was halted part-way.
    assert tally["sms"]["sent"] > 0
    assert tally["sms"][STAGE_SENDING] + tally["sms"][STAGE_PROVIDER] > 0


def test_a_stop_before_any_request_passed_leaves_nothing_sent(settings: Settings, serdes: Serdes,
                                                              workers: Workers) -> None:
    """Stopped before the engine queued anything: the launcher queues nothing, requests that
    reach the gate anyway are halted there; every message is notSent at stage sending."""
    campaign, recipients, channels = "stopped-early", 300, ["email", "sms"]
    _, worker_id = workers.start(rate=5000, delay_s=0.1)
    wait_joined(settings, [worker_id], settings.topics.data_plane_groups())

    result = stop(settings, serdes, campaign, force=True)
    assert {a.process_id for a in result.acks} == {worker_id}

    launched = launch(settings, serdes, campaign, channels, recipients)
    # Another engine instance queues requests regardless; the gate must halt them.
    direct = produce_requests(settings, serdes, settings.topics.send_requests("email"), campaign,
                              "email", range(recipients, 2 * recipients))
    total = recipients * len(channels) + len(direct)
    counter = wait_outcomes(settings, campaign, total)

    assert launched.state == STATE_STOPPED
    assert launched.queued == dict.fromkeys(channels, 0)
    assert launched.never_queued == dict.fromkeys(channels, recipients)
    events = read_events(settings, serdes, campaign)
    assert duplicates(events) == {}
    assert len(events) == total
    assert all(e.kind == "notsent" and e.record["stage"] == STAGE_SENDING for e in events)
    assert all(e.record["stop_command_id"] == result.command_id for e in events)
    assert all(e.record["event"] == NOT_SENT_EVENT[e.record["channel"]] for e in events)
    halted_at_gate = {e.message_id for e in events if e.record["reason"].startswith("campaign stopped")}
    assert halted_at_gate == set(direct)
    assert sum(c.sent for c in counter.counts.values()) == 0
    assert handed(settings, campaign, CHANNELS) == dict.fromkeys(CHANNELS, 0)


def test_two_gate_processes_in_one_group_both_confirm(settings: Settings, serdes: Serdes,
                                                      workers: Workers) -> None:
    """The live set comes from the consumer groups: with two email gates and one email
    dispatcher running, the stop is confirmed only once all three acknowledged it."""
    gate_args = ("--role", "gate", "--channel", "email")
    _, gate_a = workers.start(*gate_args)
    _, gate_b = workers.start(*gate_args)
    _, dispatcher = workers.start("--role", "dispatcher", "--channel", "email", rate=5000,
                                  delay_s=0.1)
    wait_joined(settings, [gate_a, gate_b], [settings.topics.gate_group("email")])
    wait_joined(settings, [dispatcher], [settings.topics.dispatcher_group("email")])
    campaign = "scaled-out"
    announce(settings, serdes, campaign, ["email"], 90)

    result = stop(settings, serdes, campaign)

    acked = {a.process_id for a in result.acks}
    assert acked == {gate_a, gate_b, dispatcher}
    assert set(result.live) == acked
    roles = {a.process_id: a.roles for a in result.acks}
    assert roles == {gate_a: ["gate.email"], gate_b: ["gate.email"],
                     dispatcher: ["dispatcher.email"]}
    # Whichever gate owns a partition, requests of the campaign are halted there.
    topic = settings.topics.send_requests("email")
    for partition in range(settings.partitions):
        produce_requests(settings, serdes, topic, campaign, "email",
                         range(partition * 30, partition * 30 + 30), partition=partition)
    wait_outcomes(settings, campaign, 90)
    events = read_events(settings, serdes, campaign)
    assert len(events) == 90 and duplicates(events) == {}
    assert all(e.kind == "notsent" and e.record["stage"] == STAGE_SENDING for e in events)
    assert handed(settings, campaign, ["email"]) == {"email": 0}


def test_a_worker_started_after_the_stop_halts_the_campaign(settings: Settings, serdes: Serdes,
                                                            workers: Workers) -> None:
    """No worker runs when the stop is issued; requests wait in Kafka, some already past the
    gate. A worker started later reads the stop before its first request and halts them all,
    also when a tombstone or an unknown action for the campaign follows the stop."""
    campaign = "late-worker"
    result = stop(settings, serdes, campaign, force=True)
    assert result.live == [] and result.acks == []
    # Attempts to lift the stop: a tombstone and a command with an unknown action.
    lift = serdes.control_command.encode({
        "command_id": "lift", "campaign_id": campaign, "action": "resume", "channels": [],
        "reason": "undo", "requested_by": "someone", "requested_at": 0,
    })
    out = producer(settings)
    out.produce(settings.topics.control, key=campaign.encode(), value=None)
    out.produce(settings.topics.control, key=campaign.encode(), value=lift)
    assert out.flush(30) == 0

    at_gate = produce_requests(settings, serdes, settings.topics.send_requests("email"), campaign,
                               "email", range(200))
    at_gate += produce_requests(settings, serdes, settings.topics.send_requests("sms"), campaign,
                                "sms", range(100))
    # Requests that passed a gate before the stop and wait for their dispatcher.
    past_gate = produce_requests(settings, serdes, settings.topics.dispatch("email"), campaign,
                                 "email", range(1000, 1200))

    workers.start(rate=5000, delay_s=0.1)
    wait_outcomes(settings, campaign, len(at_gate) + len(past_gate))

    events = read_events(settings, serdes, campaign)
    assert duplicates(events) == {}
    assert all(e.kind == "notsent" for e in events)
    stages = {e.message_id: e.record["stage"] for e in events}
    assert {m for m, s in stages.items() if s == STAGE_SENDING} == set(at_gate)
    assert {m for m, s in stages.items() if s == STAGE_PROVIDER} == set(past_gate)
    assert all("held before handoff" in e.record["reason"] for e in events
               if e.record["stage"] == STAGE_PROVIDER)
    assert handed(settings, campaign, CHANNELS) == dict.fromkeys(CHANNELS, 0)
