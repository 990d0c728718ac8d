"""Gate, stage ``sending``: every send request of a channel is joined against the control view.
Not stopped: forwarded as is to ``dispatch.<channel>``. Stopped: becomes a notSent event.

One Kafka transaction per consumed batch carries the outputs, the dead letters and the input
offsets together (``streams.kafka.stage``), so a record is never lost or doubled between input
and output."""

from __future__ import annotations

import logging
import threading

from confluent_kafka import KafkaException, Message

from streams.clock import now_ms
from streams.control.view import ControlView
from streams.faults import crash_point
from streams.kafka.clients import RecordHeaders
from streams.kafka.deadletter import dead_letter, headers_size
from streams.kafka.stage import ControlSync, TransactionalStage
from streams.metrics import DEAD_LETTERED, GATE_REQUESTS, NOT_SENT
from streams.models import HEADER_CAMPAIGN, HEADER_CHANNEL, HEADER_RECIPIENT, STAGE_SENDING
from streams.models.ids import RECIPIENT_MAX
from streams.routing import (
    CampaignHeader,
    Route,
    RoutingHeaders,
    SendRequest,
    decide,
    record_problem,
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
        # A batch carries few campaigns: each header is checked against the id rule once.
        self._campaigns: dict[bytes, CampaignHeader] = {}

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
                # dispatcher. The route itself is ``streams.routing.decide``, as there.
                routing = RoutingHeaders.of(raw_headers)
                campaign_raw, channel_header, recipient_header = (
                    routing.campaign, routing.channel, routing.recipient)
                problem = _size_problem(value, key, raw_headers, routing)
                request: SendRequest | None = None
                campaign: str | None = None
                record_channel: str | None = channel
                if problem is None:
                    assert value is not None
                    if campaign_raw is None or not known(value):
                        try:
                            request = self._read(value)
                            campaign, record_channel = request.campaign_id, request.channel
                        except SerdeError as exc:
                            problem = exc.reason
                    else:
                        found = campaigns.get(campaign_raw)
                        if found is None:
                            found = campaigns[campaign_raw] = CampaignHeader.of(campaign_raw)
                        campaign, problem = found.campaign_id, found.problem
                        if channel_header is not None and channel_header != channel_bytes:
                            record_channel = channel_header.decode(errors="replace")
                decision = decide(channel, campaign, record_channel, view_stopped, problem)
                if decision.route is Route.FORWARD:
                    forward: RecordHeaders = raw_headers
                    if request is not None or channel_header != channel_bytes:  # else they say it all
                        assert campaign is not None
                        forward = [(HEADER_CAMPAIGN, campaign.encode()), (HEADER_CHANNEL, channel_bytes)]
                        if recipient_header:
                            forward.append((HEADER_RECIPIENT, recipient_header))
                    produce(self.target, value=value, key=key, headers=forward)
                    passed += 1
                    continue
                if decision.route is Route.DEAD_LETTER:
                    dead_letter(out, message, decision.reason)
                    dead += 1
                    continue
                # Held back: the key and the recipient header make the event, else the body.
                recipient: str | bytes | None = recipient_header
                if request is None and not (key and recipient):
                    assert value is not None
                    try:
                        request = self._read(value)
                    except SerdeError as exc:
                        dead_letter(out, message, exc.reason)
                        dead += 1
                        continue
                if request is not None:
                    key, recipient = request.message_id.encode(), request.recipient_id
                assert key is not None and recipient is not None and decision.stop is not None
                encoder, event_headers = held_back(decision.stop)
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

    def _read(self, value: bytes) -> SendRequest:
        """The request a record's body makes; SerdeError when it is unreadable or names an
        invalid id."""
        return SendRequest.checked(self.serdes.send_request.decode(value))


def _size_problem(value: bytes | None, key: bytes | None, headers: RecordHeaders,
                  routing: RoutingHeaders) -> str | None:
    """Why a record is refused before it is read (``streams.routing.record_problem``), or its
    headers are larger than any send request has; None when none is. Headers that are only the
    routing headers are bounded but for the recipient (the campaign's is checked as an id, the
    channel's against the topic): only other headers, or a long recipient, are measured, not
    every record's."""
    problem = record_problem(value, key)
    if problem is not None:
        return problem
    if headers and (len(headers) > routing.count
                    or (routing.recipient is not None and len(routing.recipient) > RECIPIENT_MAX)):
        return headers_size(headers)
    return None
