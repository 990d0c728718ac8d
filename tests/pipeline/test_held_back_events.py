"""The notSent event of a held-back request, at the gate (stage sending) and at the dispatcher
(stage provider), against the real broker and a worker process: built from the request's key and
routing headers when it carries the ``recipient_id`` header (its body is never read), from its
body when it does not. Either way the event names exactly that request and the stop, and its bytes
are what fastavro writes for it."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from streams.control.stop import issue_stop
from streams.kafka.clients import Headers, admin, producer
from streams.models import HEADER_CAMPAIGN, HEADER_CHANNEL, HEADER_RECIPIENT, STAGE_PROVIDER, STAGE_SENDING
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import (
    Workers,
    duplicates,
    end_offsets,
    handed,
    read_events,
    records,
    send_request,
    wait_joined,
    wait_outcomes,
)
from tests.support import wait_for

pytestmark = pytest.mark.broker

REASON = "wrong audience"
PER_STAGE = 40
HANDED = 30  # requests handed over before the stop, then queued again


def test_held_back_requests_become_events_naming_them_at_both_stages(
    settings: Settings, serdes: Serdes, workers: Workers
) -> None:
    campaign = "held-events"
    _, worker_id = workers.start("--channel", "email", rate=500, delay_s=0.1)
    wait_joined(settings, [worker_id], [settings.topics.gate_group("email"),
                                        settings.topics.dispatcher_group("email")])
    result = issue_stop(settings, serdes, campaign, REASON, [], by="test operator", timeout_s=60,
                        force=True)
    assert result.confirmed

    expected: dict[str, tuple[str, str]] = {}  # message id -> (stage, recipient)
    out = producer(settings)
    routing: Headers = [(HEADER_CAMPAIGN, campaign.encode()), (HEADER_CHANNEL, b"email")]
    for stage, topic in ((STAGE_SENDING, settings.topics.send_requests("email")),
                         (STAGE_PROVIDER, settings.topics.dispatch("email"))):
        for index in range(PER_STAGE):
            message_id = f"{campaign}:email:{stage}:{index}"
            recipient = f"rcpt-{stage}-{index}-é"  # distinct per request, and not ASCII
            request: dict[str, Any] = {
                "message_id": message_id, "campaign_id": campaign, "channel": "email",
                "recipient_id": recipient, "payload": "hello", "requested_at": 1_700_000_000_000}
            value = serdes.send_request.encode(request)
            headers = list(routing)
            if index % 2 == 0:  # the engine's headers: the event comes from key and headers
                headers.append((HEADER_RECIPIENT, recipient.encode()))
            if index == 0:
                value = value[:-3]  # a body cut short: never read, so never a dead letter
            out.produce(topic, key=message_id.encode(), value=value, headers=headers)
            expected[message_id] = (stage, recipient)
    assert out.flush(30) == 0

    wait_outcomes(settings, campaign, len(expected))
    events = read_events(settings, serdes, campaign)
    assert duplicates(events) == {}
    by_id = {e.message_id: e.record for e in events}
    assert set(by_id) == set(expected)
    reasons = {STAGE_SENDING: f"campaign stopped: {REASON}",
               STAGE_PROVIDER: f"held before handoff: campaign stopped: {REASON}"}
    requested_at = {e.record["stop_requested_at"] for e in events}
    assert len(requested_at) == 1 and None not in requested_at
    for message_id, (stage, recipient) in expected.items():
        event = by_id[message_id]
        assert event == {
            "event": "message.notSent", "message_id": message_id, "campaign_id": campaign,
            "channel": "email", "recipient_id": recipient, "stage": stage, "reason": reasons[stage],
            "stop_command_id": result.command_id, "stop_requested_at": event["stop_requested_at"],
            "occurred_at": event["occurred_at"]}, message_id
    assert handed(settings, campaign, ["email"]) == {"email": 0}

    # On the wire: keyed by message id, with the routing headers, and byte for byte fastavro's.
    held = [m for m in records(settings, settings.topics.notsent) if m.key() in
            {mid.encode() for mid in expected}]
    assert len(held) == len(expected)
    for message in held:
        raw = message.value()
        assert raw is not None
        event = serdes.not_sent.decode(raw)
        assert serdes.not_sent.encode(event) == raw
        on_wire = dict(message.headers() or [])
        assert on_wire[HEADER_CAMPAIGN] == campaign.encode()
        assert on_wire["stage"] == event["stage"].encode()


def test_a_request_the_outbox_holds_keeps_its_one_outcome_when_held_back(
    settings: Settings, serdes: Serdes, workers: Workers
) -> None:
    """Requests of a stopped campaign that arrive again after their handoff (as after a crash
    between a handoff and its batch's commit, or an engine queueing them again) take the
    held-back path from key and headers; the outbox holds them, so they keep the one outcome the
    provider gave them, while the requests never handed over become notSent events."""
    campaign = "held-after-handoff"
    _, worker_id = workers.start("--role", "dispatcher", "--channel", "email", rate=500, delay_s=0.1)
    group, topic = settings.topics.dispatcher_group("email"), settings.topics.dispatch("email")
    wait_joined(settings, [worker_id], [group])
    handed_over = produce_with_recipients(settings, serdes, topic, campaign, range(HANDED))
    wait_outcomes(settings, campaign, HANDED)
    assert handed(settings, campaign, ["email"]) == {"email": HANDED}
    result = issue_stop(settings, serdes, campaign, REASON, [], by="test operator", timeout_s=60,
                        force=True)
    assert result.confirmed

    new = produce_with_recipients(settings, serdes, topic, campaign, range(HANDED, 2 * HANDED))
    produce_with_recipients(settings, serdes, topic, campaign, range(HANDED))  # again
    wait_for(lambda: committed(settings, group, topic) == sum(end_offsets(settings, topic).values()),
             "the dispatcher to commit every request")

    events = read_events(settings, serdes, campaign)
    assert duplicates(events) == {}
    assert {e.message_id for e in events if e.kind == "sent"} == set(handed_over)
    assert {e.message_id for e in events if e.kind == "notsent"} == set(new)
    assert handed(settings, campaign, ["email"]) == {"email": HANDED}


def produce_with_recipients(settings: Settings, serdes: Serdes, topic: str, campaign: str,
                            indexes: range) -> list[str]:
    """Requests carrying the engine's routing headers, recipient included; their message ids."""
    requests = [send_request(campaign, "email", index) for index in indexes]
    out = producer(settings)
    for request in requests:
        out.produce(topic, key=request["message_id"].encode(),
                    value=serdes.send_request.encode(request),
                    headers=[(HEADER_CAMPAIGN, campaign.encode()), (HEADER_CHANNEL, b"email"),
                             (HEADER_RECIPIENT, request["recipient_id"].encode())])
    assert out.flush(30) == 0
    return [r["message_id"] for r in requests]


def committed(settings: Settings, group: str, topic: str) -> int:
    """The group's committed offsets on ``topic``, summed over its partitions."""
    partitions = end_offsets(settings, topic)
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
    with admin(settings) as client:
        result = client.list_consumer_group_offsets([request])[group].result(timeout=35)
    return sum(max(tp.offset, 0) for tp in result.topic_partitions)
