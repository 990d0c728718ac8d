"""Gate, stage ``sending``: every send request of a channel is joined against the control view.
Not stopped: forwarded as is to ``dispatch.<channel>``. Stopped: becomes a notSent event.

One Kafka transaction per consumed batch carries the outputs, the dead letters and the input
offsets together (``streams.kafka.stage``), so a record is never lost or doubled between input
and output."""

from __future__ import annotations

import logging
import threading
from typing import Any

from confluent_kafka import KafkaException, Message

from streams.clock import now_ms
from streams.control.view import ControlView
from streams.faults import crash_point
from streams.kafka.clients import RecordHeaders, raw_routing
from streams.kafka.deadletter import MAX_RECORD_BYTES, dead_letter, headers_size
from streams.kafka.stage import ControlSync, TransactionalStage
from streams.metrics import DEAD_LETTERED, GATE_REQUESTS, NOT_SENT
from streams.models import (
    CHANNELS,
    HEADER_CAMPAIGN,
    HEADER_CHANNEL,
    HEADER_RECIPIENT,
    STAGE_SENDING,
)
from streams.models.ids import (
    MESSAGE_ID_MAX,
    RECIPIENT_MAX,
    id_problem,
    is_valid_id,
    request_problem,
)
from streams.serde import SerdeError, Serdes
from streams.serde.fastevents import HeldBackEvents
from streams.settings import Settings

log = logging.getLogger(__name__)

GATE_BATCH_FACTOR = 5  # see Gate.batch_limit
CAMPAIGN_CACHE = 10_000  # campaign headers whose id check a gate remembers


class Gate(TransactionalStage):
    settles_bad_records = True  # a record Kafka refuses what the gate made of is dead-lettered
    def __init__(self, settings: Settings, channel: str, view: ControlView, serdes: Serdes,
                 process_id: str, feed: ControlSync | None = None) -> None:
        topics = settings.topics
        super().__init__(settings, topics.send_requests(channel), topics.gate_group(channel),
                         process_id, f"gate {channel}", f"gate.{channel}", feed)
        self.channel = channel
        self.view = view
        self.serdes = serdes
        self.target = topics.dispatch(channel)
        self.notsent = topics.notsent
        self.held_back = HeldBackEvents(serdes.not_sent, channel, STAGE_SENDING, "campaign stopped: ")
        self.passed = 0
        self.halted = 0
        self.dead_lettered = 0
        # Campaign header -> (campaign id, why it is refused or None): a batch carries few
        # campaigns, each checked against the id rule once.
        self._campaigns: dict[bytes, tuple[str, str | None]] = {}

    def batch_limit(self) -> int:
        """Five times ``ESTOP_BATCH_SIZE``: a batch is one transaction whose commit waits for the
        broker, and the gate hands nothing to a provider, so only the transaction's size bounds it
        (measured: 0.56 to 0.61 of the raw baseline with 2,000, 0.82 to 0.96 with 10,000)."""
        return self.settings.batch_size * GATE_BATCH_FACTOR

    def process(self, messages: list[Message], _running: threading.Event) -> None:
        view_stopped = self.view.stopped
        held_back = self.held_back.for_stop
        channel = self.channel
        channel_bytes = channel.encode()
        known = self.serdes.send_request.has_known_header
        campaigns = self._campaigns
        if len(campaigns) > CAMPAIGN_CACHE:
            campaigns.clear()  # a producer naming a new campaign on every record fills no memory
        self.transactions.begin()
        out = self.transactions.producer  # this batch's producer (a fenced one gets replaced)
        produce = out.produce
        passed = halted = dead = 0
        offsets: dict[int, int] = {}
        try:
            for message in messages:
                if message.error():
                    continue
                offsets[message.partition()] = message.offset() + 1  # type: ignore[index,operator]
                value = message.value()
                key: bytes | None = message.key()
                raw_headers = message.headers()
                # Fast path: route by the campaign and channel headers, checking only the Avro
                # envelope, the sizes and the ids; the body is decoded when the gate must read it
                # (a notSent event, a record without headers) and, for passing records, by the
                # dispatcher.
                campaign_raw, channel_header, recipient_header = raw_routing(raw_headers)
                routed = (campaign_raw is not None) + (channel_header is not None) + (
                    recipient_header is not None)
                problem = _size_problem(value, key, raw_headers, routed, recipient_header)
                if problem is not None:
                    dead_letter(out, message, problem)
                    dead += 1
                    continue
                assert value is not None
                request = None
                if campaign_raw is None or not known(value):
                    request = self._read(out, message, value)
                    if request is None:
                        dead += 1
                        continue
                    campaign, record_channel = request["campaign_id"], request["channel"]
                else:
                    found = campaigns.get(campaign_raw)
                    if found is None:
                        found = campaigns[campaign_raw] = _campaign_of(campaign_raw)
                    if found[1] is not None:
                        dead_letter(out, message, found[1])
                        dead += 1
                        continue
                    campaign = found[0]
                    record_channel = (channel if channel_header is None or channel_header == channel_bytes
                                      else channel_header.decode(errors="replace"))
                if record_channel != channel:
                    known_channel = "channel" if record_channel in CHANNELS else "unknown channel"
                    dead_letter(out, message,
                                f"{known_channel} {record_channel!r} on the {channel} topic")
                    dead += 1
                    continue
                stop = view_stopped(campaign, channel)
                if stop is None:
                    forward: RecordHeaders = raw_headers
                    if request is not None or channel_header != channel_bytes:  # else they say it all
                        forward = [(HEADER_CAMPAIGN, campaign.encode()), (HEADER_CHANNEL, channel_bytes)]
                        if recipient_header:
                            forward.append((HEADER_RECIPIENT, recipient_header))
                    produce(self.target, value=value, key=key, headers=forward)
                    passed += 1
                    continue
                # Held back: the key and the recipient header make the event, else the body.
                recipient: str | bytes | None = recipient_header
                if request is None and not (key and recipient):
                    request = self._read(out, message, value)
                    if request is None:
                        dead += 1
                        continue
                if request is not None:
                    key, recipient = request["message_id"].encode(), request["recipient_id"]
                assert key is not None and recipient is not None
                encoder, event_headers = held_back(stop)
                produce(self.notsent, value=encoder.encode(key, recipient, now_ms()), key=key,
                        headers=event_headers)
                halted += 1
        except KafkaException as exc:
            self.abort(exc)
            return
        crash_point(self.settings, "gate-produced")
        if not self.commit(offsets):
            return
        self.passed += passed
        self.halted += halted
        self.dead_lettered += dead
        GATE_REQUESTS.labels(channel, "passed").inc(passed)
        GATE_REQUESTS.labels(channel, "halted").inc(halted)
        GATE_REQUESTS.labels(channel, "dead_lettered").inc(dead)
        NOT_SENT.labels(channel, STAGE_SENDING).inc(halted)
        if dead:
            DEAD_LETTERED.labels(self.source).inc(dead)

    def dead_lettered_alone(self) -> None:
        self.dead_lettered += 1
        GATE_REQUESTS.labels(self.channel, "dead_lettered").inc()

    def _read(self, out: Any, message: Message, value: bytes) -> dict[str, Any] | None:
        """The decoded request, or None once it went to the dead-letter topic."""
        try:
            return _valid(self.serdes.send_request.decode(value))
        except SerdeError as exc:
            dead_letter(out, message, exc.reason)
            return None


def _valid(request: dict[str, Any]) -> dict[str, Any]:
    """A decoded request the gate can act on: every id valid (``streams.models.ids``)."""
    problem = request_problem(request)
    if problem is not None:
        raise SerdeError(problem)
    return request


def _campaign_of(raw: bytes) -> tuple[str, str | None]:
    """A campaign header: the campaign id, and why it is refused (an id no stop could name:
    passing its requests would put them beyond every stop), or None."""
    problem = id_problem(raw)
    return raw.decode(errors="replace"), (None if problem is None else f"header {problem}")


def _size_problem(value: bytes | None, key: bytes | None, headers: RecordHeaders, routed: int,
                  recipient: bytes | None) -> str | None:
    """Why a record is refused before it is read: no value, or a value, key or headers larger
    than any send request has (a key is a message id); None when none is. Headers that are only
    the ``routed`` routing headers are bounded but for the recipient (the campaign's is checked
    as an id, the channel's against the topic): only other headers, or a long recipient, are
    measured, not every record's."""
    if value is None:
        return "empty value"
    if len(value) > MAX_RECORD_BYTES:
        return f"record of {len(value):,} bytes"
    if key is not None and not is_valid_id(key, MESSAGE_ID_MAX):
        return f"key: {id_problem(key, 'message id', MESSAGE_ID_MAX)}"
    if headers and (len(headers) > routed or (recipient is not None and len(recipient) > RECIPIENT_MAX)):
        return headers_size(headers)
    return None
