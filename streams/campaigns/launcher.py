"""The launcher, a stand-in for the campaign engine: announces the campaign (Sending), queues
one send request per recipient and channel, then announces Finished.

It follows the control topic itself and stops queueing a channel as soon as it is stopped;
the requests it never queued become notSent events (stage ``sending``), so every planned
message still has exactly one outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import Producer

from streams.campaigns.lifecycle import publish_status
from streams.control.feed import ControlFeed, now_ms
from streams.control.view import ControlView, Stop
from streams.kafka.clients import Headers, producer
from streams.models import (
    HEADER_CAMPAIGN,
    HEADER_CHANNEL,
    HEADER_RECIPIENT,
    STAGE_SENDING,
    STATE_FINISHED,
    STATE_SENDING,
    STATE_STOPPED,
)
from streams.serde import Serdes
from streams.serde.fastevents import HeldBackEvents
from streams.settings import Settings

Progress = Callable[[int], None]


@dataclass
class LaunchResult:
    campaign_id: str
    planned: dict[str, int]
    queued: dict[str, int] = field(default_factory=dict)
    never_queued: dict[str, int] = field(default_factory=dict)
    state: str = STATE_SENDING


def message_id(campaign_id: str, channel: str, index: int) -> str:
    return f"{campaign_id}:{channel}:{index}"


def recipient_id(index: int) -> str:
    return f"r{index:08d}"


def launch(settings: Settings, serdes: Serdes, campaign_id: str, channels: list[str],
           recipients: int, rate: float | None = None,
           progress: Progress = lambda _: None) -> LaunchResult:
    view = ControlView()
    feed = ControlFeed(settings, view, serdes, process_id=f"launcher:{campaign_id}", roles=[],
                       acknowledge=False)
    feed.start()
    out = producer(settings)
    planned = dict.fromkeys(channels, recipients)
    result = LaunchResult(campaign_id, planned, dict.fromkeys(channels, 0))
    try:
        publish_status(out, settings, serdes, campaign_id, STATE_SENDING, channels, planned)
        out.flush(settings.admin_timeout_s)
        _queue(out, settings, serdes, view, result, channels, recipients, rate, progress)
        stops = {c: view.stopped(campaign_id, c) for c in channels}
        for channel, stop in stops.items():
            if stop is not None:
                result.never_queued[channel] = _report_never_queued(
                    out, settings, serdes, campaign_id, channel, result.queued[channel],
                    recipients, stop)
        any_stop = next((s for s in stops.values() if s is not None), None)
        result.state = STATE_STOPPED if any_stop else STATE_FINISHED
        publish_status(out, settings, serdes, campaign_id, result.state, channels, planned,
                       result.queued, any_stop)
        out.flush(60)
    finally:
        feed.close()
    return result


def _queue(out: Producer, settings: Settings, serdes: Serdes, view: ControlView,
           result: LaunchResult, channels: list[str], recipients: int, rate: float | None,
           progress: Progress) -> None:
    campaign_id = result.campaign_id
    encode = serdes.send_request.encode
    topics = {c: settings.topics.send_requests(c) for c in channels}
    headers: dict[str, Headers] = {c: [(HEADER_CAMPAIGN, campaign_id.encode()), (HEADER_CHANNEL, c.encode())]
               for c in channels}
    active = list(channels)
    started = time.monotonic()
    payload = f"Campaign {campaign_id}: your offer inside"
    for index in range(recipients):
        active = [c for c in active if view.stopped(campaign_id, c) is None]
        if not active:
            return
        recipient = recipient_id(index)
        recipient_header = (HEADER_RECIPIENT, recipient.encode())
        for channel in active:
            mid = message_id(campaign_id, channel, index)
            value = encode({
                "message_id": mid,
                "campaign_id": campaign_id,
                "channel": channel,
                "recipient_id": recipient,
                "payload": payload,
                "requested_at": now_ms(),
            })
            _produce(out, topics[channel], mid.encode(), value, [*headers[channel], recipient_header])
            result.queued[channel] += 1
        progress(len(active))
        if rate and (index + 1) % 100 == 0:
            ahead = (index + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)


def _produce(out: Producer, topic: str, key: bytes, value: bytes,
             headers: Headers) -> None:
    while True:
        try:
            out.produce(topic, key=key, value=value, headers=headers)
            return
        except BufferError:
            out.poll(0.05)


def _report_never_queued(out: Producer, settings: Settings, serdes: Serdes, campaign_id: str,
                         channel: str, queued: int, recipients: int, stop: Stop) -> int:
    encoder, headers = HeldBackEvents(serdes.not_sent, channel, STAGE_SENDING,
                                      "never queued: campaign stopped: ").for_stop(stop)
    for index in range(queued, recipients):
        mid = message_id(campaign_id, channel, index).encode()
        _produce(out, settings.topics.notsent, mid, encoder.encode(mid, recipient_id(index), now_ms()),
                 headers)
    return recipients - queued
