"""The notSent event of a held-back request, at the gate (stage sending) and at the dispatcher
(stage provider), against the real broker and a worker process: built from the request's key and
routing headers when it carries the ``recipient_id`` header (its body is never read), from its
body when it does not. Either way the event names exactly that request and the stop, and its bytes
are what fastavro writes for it."""

from __future__ import annotations

from typing import Any

import pytest

from streams.control.stop import issue_stop
from streams.kafka.clients import Headers, producer
from streams.models import HEADER_CAMPAIGN, HEADER_CHANNEL, HEADER_RECIPIENT, STAGE_PROVIDER, STAGE_SENDING
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import (
    Workers,
    duplicates,
    handed,
    read_events,
    records,
    wait_joined,
    wait_outcomes,
)

pytestmark = pytest.mark.broker

REASON = "wrong audience"
PER_STAGE = 40


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
