"""The launcher, a stand-in for the campaign engine: announces the campaign (Sending), queues
one send request per recipient and channel, then announces Finished.

It follows the control topic itself and stops queueing a channel as soon as it is stopped;
the requests it never queued become notSent events (stage ``sending``), so every planned
message still has exactly one outcome. With a canary (``streams.campaigns.canary``) it queues a
first cohort and the rest only once the hold passed without a stop, or an operator released it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

from confluent_kafka import KafkaError, Message, Producer

from streams.campaigns import canary as canaries
from streams.campaigns.exceptions import CanaryError
from streams.campaigns.lifecycle import publish_status
from streams.clock import now_ms
from streams.control.feed import ControlFeed
from streams.control.view import ControlView, Stop
from streams.kafka.clients import Headers, producer
from streams.kafka.exceptions import KafkaUnavailableError
from streams.models import (
    HEADER_CAMPAIGN,
    HEADER_CHANNEL,
    HEADER_RECIPIENT,
    STAGE_SENDING,
    STATE_FINISHED,
    STATE_SENDING,
    STATE_STOPPED,
)
from streams.models.ids import check_id
from streams.security.refusals import refused
from streams.serde import Serdes
from streams.serde.fastevents import HeldBackEvents
from streams.settings import Settings

Progress = Callable[[int], None]
Audience = Mapping[str, Sequence[str]]  # channel -> recipient ids, in the order they are queued

# How long the broker may take to acknowledge what is still buffered (up to a million records).
FLUSH_S = 60.0


@dataclass
class LaunchResult:
    campaign_id: str
    planned: dict[str, int]
    queued: dict[str, int] = field(default_factory=dict)
    never_queued: dict[str, int] = field(default_factory=dict)
    state: str = STATE_SENDING
    # A canary launch: who released the rest ("hold" when the hold passed), or None when every
    # channel was stopped during the hold; "" for a launch without a canary.
    released_by: str | None = ""


def message_id(campaign_id: str, channel: str, index: int) -> str:
    return f"{campaign_id}:{channel}:{index}"


def recipient_id(index: int) -> str:
    return f"r{index:08d}"


class Numbered(Sequence[str]):
    """Recipients ``r00000000`` to ``r<count - 1>``, made on demand (a large campaign holds no list)."""

    def __init__(self, count: int) -> None:
        self.size = count

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if isinstance(index, slice):
            return [recipient_id(i) for i in range(self.size)[index]]
        if not -self.size <= index < self.size:
            raise IndexError(index)
        return recipient_id(index % self.size)


def launch(settings: Settings, serdes: Serdes, campaign_id: str, channels: list[str],
           recipients: int | Audience, rate: float | None = None,
           progress: Progress = lambda _: None, canary: float | None = None,
           hold_s: float | None = None) -> LaunchResult:
    """Queue ``recipients`` (a count: the same numbered recipients on every channel; or an
    audience per channel, as a relaunch of the unsent recipients has) as campaign ``campaign_id``.
    ``canary`` (a share, 0.02 for 2%): queue that share first and hold the rest for ``hold_s``
    (default ``ESTOP_CANARY_HOLD_S``); run again with the same arguments after a crash, it
    resumes the canary from Kafka."""
    check_id(campaign_id)  # before anything is written: a campaign no stop could name
    state = canaries.read_state(settings, serdes, campaign_id) if canary else None
    if state is not None and state["state"] == canaries.DONE:
        raise CanaryError(f"campaign {campaign_id!r} was launched already (its canary is done)")
    audience: Audience = (dict.fromkeys(channels, Numbered(recipients)) if isinstance(recipients, int)
                          else recipients)
    # With a schema registry, every schema the launch writes is registered before its first
    # record: one the registry refuses leaves the campaign unwritten, not half launched.
    for serde in (serdes.campaign_status, serdes.send_request, serdes.not_sent):
        serde.prefix()
    view = ControlView()
    feed = ControlFeed(settings, view, serdes, process_id=f"launcher:{campaign_id}", roles=[],
                       acknowledge=False)
    feed.start()
    refusals = _Refusals(settings)
    # Only failed deliveries come back (none per message sent): a write Kafka refuses (an ACL,
    # a record too large) fails the launch instead of passing for queued.
    out = producer(settings, **{"delivery.report.only.error": True, "on_delivery": refusals.note})
    planned = {c: len(audience[c]) for c in channels}
    result = LaunchResult(campaign_id, planned, dict.fromkeys(channels, 0))
    try:
        if state is None:
            publish_status(out, settings, serdes, campaign_id, STATE_SENDING, channels, planned)
            out.flush(settings.admin_timeout_s)
            refusals.check()
        if canary:
            if state is None:
                first = canaries.cohorts(audience, channels, canary)
                _queue(out, settings, serdes, view, result, channels, audience, rate, progress,
                       refusals, first)
                _flush_requests(out, FLUSH_S)
                state = canaries.holding(campaign_id, canary, result.queued, planned,
                                         settings.canary_hold_s if hold_s is None else hold_s)
                canaries.publish(out, settings, serdes, state)
                out.flush(settings.admin_timeout_s)
                refusals.check()
            else:  # resumed: the cohort is on its topics already
                result.queued = {c: int(state["cohort"].get(c, 0)) for c in channels}
            result.released_by = canaries.hold(settings, serdes, view, state, channels)
            if result.released_by is not None and state["state"] == canaries.HOLDING:
                canaries.publish(out, settings, serdes, {**state, "state": canaries.RELEASED,
                                                         "released_by": result.released_by})
        _queue(out, settings, serdes, view, result, channels, audience, rate, progress, refusals)
        # Every request is on its topic before the status says so: a reader that sees Finished
        # (the console, a relaunch's caller) finds the whole campaign queued.
        _flush_requests(out, FLUSH_S)
        refusals.check()
        stops = {c: view.stopped(campaign_id, c) for c in channels}
        for channel, stop in stops.items():
            if stop is not None:
                result.never_queued[channel] = _report_never_queued(
                    out, settings, serdes, campaign_id, channel, result.queued[channel],
                    audience[channel], stop)
        any_stop = next((s for s in stops.values() if s is not None), None)
        result.state = STATE_STOPPED if any_stop else STATE_FINISHED
        publish_status(out, settings, serdes, campaign_id, result.state, channels, planned,
                       result.queued, any_stop)
        if state is not None:
            canaries.publish(out, settings, serdes, {**state, "state": canaries.DONE,
                                                     "released_by": result.released_by})
        out.flush(FLUSH_S)
        refusals.check()
    finally:
        feed.close()
    return result


class _Refusals:
    """Delivery failures of a launch's producer; ``check`` raises the first one, in one line."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.failed: list[tuple[KafkaError, str]] = []

    def note(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failed.append((error, message.topic() or "a topic"))

    def check(self) -> None:
        if not self.failed:
            return
        error, topic = self.failed[0]
        raise refused(self.settings, error, f"write {topic}") or KafkaUnavailableError(
            f"Kafka did not take a record on {topic}: {error.str()}; the campaign stays Sending")


def _queue(out: Producer, settings: Settings, serdes: Serdes, view: ControlView,
           result: LaunchResult, channels: list[str], audience: Audience, rate: float | None,
           progress: Progress, refusals: _Refusals, limit: Mapping[str, int] | None = None) -> None:
    """Queue each channel's audience from what ``result`` counts queued up to ``limit`` (every
    recipient when None), as long as the channel is not stopped."""
    campaign_id = result.campaign_id
    end = limit or {c: len(audience[c]) for c in channels}
    encode = serdes.send_request.encode
    topics = {c: settings.topics.send_requests(c) for c in channels}
    headers: dict[str, Headers] = {c: [(HEADER_CAMPAIGN, campaign_id.encode()), (HEADER_CHANNEL, c.encode())]
               for c in channels}
    active = list(channels)
    started = time.monotonic()
    payload = f"Campaign {campaign_id}: your offer inside"
    first = min((result.queued[c] for c in channels), default=0)
    for index in range(first, max((end[c] for c in channels), default=0)):
        active = [c for c in active if view.stopped(campaign_id, c) is None]
        if not active:
            return
        queued = [c for c in active if result.queued[c] <= index < end[c]]
        for channel in queued:
            mid = message_id(campaign_id, channel, index)
            recipient = audience[channel][index]
            value = encode({
                "message_id": mid,
                "campaign_id": campaign_id,
                "channel": channel,
                "recipient_id": recipient,
                "payload": payload,
                "requested_at": now_ms(),
            })
            _produce(out, topics[channel], mid.encode(), value,
                     [*headers[channel], (HEADER_RECIPIENT, recipient.encode())])
            result.queued[channel] += 1
        progress(len(queued))
        done = index + 1 - first
        if done % 1000 == 0:
            out.poll(0)  # serves failed deliveries: a refused write stops the launch early
            refusals.check()
        if rate and done % 100 == 0:
            ahead = done / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)


def _flush_requests(out: Producer, timeout_s: float) -> None:
    left = out.flush(timeout_s)
    if left:
        raise KafkaUnavailableError(f"Kafka did not acknowledge {left:,} send request(s) within "
                                    f"{timeout_s:.0f}s; the campaign stays Sending")


def _produce(out: Producer, topic: str, key: bytes, value: bytes,
             headers: Headers) -> None:
    while True:
        try:
            out.produce(topic, key=key, value=value, headers=headers)
            return
        except BufferError:
            out.poll(0.05)


def _report_never_queued(out: Producer, settings: Settings, serdes: Serdes, campaign_id: str,
                         channel: str, queued: int, recipients: Sequence[str], stop: Stop) -> int:
    encoder, headers = HeldBackEvents(serdes.not_sent, channel, STAGE_SENDING,
                                      "never queued: campaign stopped: ").for_stop(stop)
    for index in range(queued, len(recipients)):
        mid = message_id(campaign_id, channel, index).encode()
        _produce(out, settings.topics.notsent, mid, encoder.encode(mid, recipients[index], now_ms()),
                 headers)
    return len(recipients) - queued
