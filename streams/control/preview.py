"""What a stop would halt, before it is pressed (`estop stop CAMPAIGN --dry-run`, the console's
stop dialog, ``GET /campaigns/{id}/stop-preview``). Read from Kafka, nothing written:

* not queued yet: planned but not on ``send-requests.<channel>`` (the launcher still queueing,
  or a canary's rest): the launcher reports them notSent, stage sending;
* before the gate: the campaign's records on ``send-requests.<channel>`` at or past the gate
  group's committed offsets (a gate commits its output and its offsets in one transaction);
* at the dispatchers: its records on ``dispatch.<channel>`` past the dispatcher group's committed
  offsets that the handoff ledger does not know yet (a dispatcher reserves a slice in its ledger
  before it hands it over, and commits its input offsets at the end of a batch);
* handing over: reserved in the ledger, the provider's answer not recorded yet;
* accepted at the provider, split by what the channel's adapter declares it can cancel
  (``streams.providers.cancel_capability``, from this process's settings);
* delivered: reported delivered in the ledger.

The bound on what can still reach recipients after the stop: what a provider that cannot
cancel holds already, plus, on such a channel, the one pacing slice each dispatcher may be
handing over when the stop arrives (``ESTOP_PROVIDER_RATE`` x 10 ms). On a channel that cancels,
that slice is cancelled with the rest once it is recorded."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, ConsumerGroupTopicPartitions, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.campaigns.lifecycle import effective_state, read_campaigns, read_control
from streams.control.confirmation import holdings
from streams.control.exceptions import InvalidStopError
from streams.control.stop import check_campaign
from streams.dispatch.changelog import LedgerStats
from streams.dispatch.dispatcher import PACE_SLICE_S
from streams.dispatch.ledger import ACCEPTED, DELIVERED, REPORTED, SUBMITTING
from streams.kafka.clients import admin, consumer, wait_for_broker
from streams.kafka.reader import read_until, watermarks
from streams.models import STATE_SENDING, check_channels
from streams.providers import cancel_capability
from streams.providers.base import CancelCapability
from streams.routing import RoutingHeaders
from streams.serde import SerdeError, Serdes
from streams.settings import Settings
from streams.sink.exceptions import UnknownCampaignError


@dataclass
class ChannelImpact:
    channel: str
    cancel_capability: str  # as the channel's adapter declares it
    already_stopped: bool = False  # a command stopped this channel: the stop changes nothing here
    not_queued: int = 0
    before_gate: int = 0
    at_dispatchers: int = 0
    handing_over: int = 0
    at_provider_cancellable: int = 0
    at_provider_not_cancellable: int = 0
    delivered: int = 0
    dispatchers: int = 0  # processes holding partitions of dispatch.<channel> now
    slice: int = 0  # messages a dispatcher checks against the stops at once
    may_still_leak: int = 0

    @property
    def would_halt(self) -> int:
        """Messages the stop would turn into notSent events."""
        return self.not_queued + self.before_gate + self.at_dispatchers + \
            self.at_provider_cancellable


@dataclass
class StopImpact:
    campaign_id: str
    state: str
    channels: list[ChannelImpact] = field(default_factory=list)
    stored: dict[str, dict[str, int]] = field(default_factory=dict)  # analytics store: per channel

    def as_dict(self) -> dict[str, Any]:
        channels = [{**asdict(c), "would_halt": c.would_halt} for c in self.channels]
        totals = {name: sum(c[name] for c in channels if isinstance(c[name], int))
                  for name in ("not_queued", "before_gate", "at_dispatchers", "handing_over",
                               "at_provider_cancellable", "at_provider_not_cancellable",
                               "delivered", "may_still_leak", "would_halt")}
        return {"campaign_id": self.campaign_id, "state": self.state, "dry_run": True,
                "channels": channels, "totals": totals, "stored": self.stored}


def preview_stop(settings: Settings, serdes: Serdes, campaign_id: str,
                 channels: Iterable[str] = (), report: dict[str, Any] | None = None) -> StopImpact:
    """What stopping ``campaign_id`` on ``channels`` (empty: every channel) would halt now;
    ``report`` is what the analytics store holds of it (``stored_outcomes``), if anything. Raises
    InvalidStopError for a bad id or channel, UnknownCampaignError for a campaign never seen."""
    check_campaign(campaign_id)
    try:
        wanted = check_channels(list(channels))
    except ValueError as exc:
        raise InvalidStopError(str(exc)) from exc
    wait_for_broker(settings)
    status = read_campaigns(settings, serdes).get(campaign_id)
    view = read_control(settings, serdes)
    state = effective_state(status, view, campaign_id)
    if state is None:
        raise UnknownCampaignError(f"unknown campaign {campaign_id!r}: not on campaign-status or "
                                   "campaign-control")
    known = list(status["channels"]) if status else sorted(view.channels_stopped(campaign_id))
    stopped = view.channels_stopped(campaign_id)
    impact = StopImpact(campaign_id, state)
    if report is not None:
        impact.stored = {c: {"sent": e["sent"], "not_sent": sum(e["not_sent_by_stage"].values()),
                             "failed": e["failed"]} for c, e in report["by_channel"].items()}
    planned: dict[str, int] = dict(status["planned"]) if status else {}
    queued: dict[str, int] = dict(status["queued"]) if status and status["queued"] else {}
    with admin(settings) as client:
        held = holdings(settings, client, [c for c in known if not wanted or c in wanted])
        for channel in known:
            if wanted and channel not in wanted:
                continue
            capability = cancel_capability(settings, channel)
            entry = ChannelImpact(channel, capability.value, already_stopped=channel in stopped)
            impact.channels.append(entry)
            if entry.already_stopped:
                continue
            # While the campaign is Sending the launcher may still queue: count what is there.
            whole = state == STATE_SENDING or channel not in queued
            gate_topic = settings.topics.send_requests(channel)
            on_topic, waiting = _scan(settings, serdes, gate_topic, campaign_id,
                                      _committed(settings, client, settings.topics.gate_group(channel),
                                                 gate_topic), whole)
            entry.not_queued = max(planned.get(channel, 0) - (on_topic if whole else queued[channel]), 0)
            entry.before_gate = len(waiting)
            dispatch_topic = settings.topics.dispatch(channel)
            _, backlog = _scan(settings, serdes, dispatch_topic, campaign_id,
                               _committed(settings, client,
                                          settings.topics.dispatcher_group(channel),
                                          dispatch_topic), False)
            ledger = {e.message_id: e for e in LedgerStats(settings, channel, serdes).entries(campaign_id)}
            entry.at_dispatchers = sum(1 for key in set(backlog) if key.decode() not in ledger)
            for item in ledger.values():
                if item.state == SUBMITTING:
                    entry.handing_over += 1
                elif item.state == ACCEPTED and capability != CancelCapability.NONE and item.provider_id:
                    entry.at_provider_cancellable += 1
                elif item.state == ACCEPTED:
                    entry.at_provider_not_cancellable += 1
                elif item.state == REPORTED and item.outcome == DELIVERED:
                    entry.delivered += 1
            group = next(g for g in held.groups if g.role == f"dispatcher.{channel}")
            entry.dispatchers = len(set(group.holders.values()))
            entry.slice = max(1, int(settings.provider_rate * PACE_SLICE_S))
            entry.may_still_leak = entry.at_provider_not_cancellable
            if capability == CancelCapability.NONE:
                entry.may_still_leak += min(entry.dispatchers * entry.slice,
                                            entry.at_dispatchers + entry.handing_over)
    return impact


def _committed(settings: Settings, client: AdminClient, group: str, topic: str) -> dict[int, int]:
    """Partition -> the group's committed offset on ``topic`` (-1: none committed yet)."""
    metadata = client.list_topics(topic, timeout=settings.admin_timeout_s).topics[topic]
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p)
                                                   for p in metadata.partitions])
    answer = client.list_consumer_group_offsets([request])[group].result(
        timeout=settings.admin_timeout_s)
    return {tp.partition: tp.offset for tp in answer.topic_partitions}


def _scan(settings: Settings, serdes: Serdes, topic: str, campaign_id: str,
          committed: dict[int, int], whole: bool) -> tuple[int, list[bytes]]:
    """The campaign's records on ``topic`` (read_committed): how many were read (from the
    beginning when ``whole``, else from ``committed``) and the keys of those at or past
    ``committed``, which the group has not processed yet."""
    campaign = campaign_id.encode()
    reader = consumer(settings)
    seen = 0
    waiting: list[bytes] = []
    try:
        starts, ends = {}, {}
        for partition, offset in committed.items():
            low, high = watermarks(reader, TopicPartition(topic, partition), settings.admin_timeout_s)
            start = low if whole or offset < 0 else max(offset, low)
            if start < high:
                starts[partition], ends[partition] = start, high
        if not starts:
            return 0, []
        reader.assign([TopicPartition(topic, p, o if o > 0 else OFFSET_BEGINNING)
                       for p, o in starts.items()])

        def count(message: Message) -> None:
            nonlocal seen
            if _campaign_of(serdes, message) != campaign:
                return
            seen += 1
            if message.offset() >= committed.get(message.partition() or 0, -1):  # type: ignore[operator]
                waiting.append(message.key() or b"")

        read_until(reader, topic, ends, count)
    finally:
        reader.close()
    return seen, waiting


def _campaign_of(serdes: Serdes, message: Message) -> bytes | None:
    """The campaign a send request belongs to: its header, else its body."""
    campaign = RoutingHeaders.of(message.headers()).campaign
    if campaign is not None:
        return campaign
    try:
        return str(serdes.send_request.decode(message.value() or b"")["campaign_id"]).encode()
    except SerdeError:
        return None



def preview_with_store(settings: Settings, serdes: Serdes, campaign_id: str,
                       channels: Iterable[str] = ()) -> StopImpact:
    """``preview_stop`` with the outcomes the analytics store holds (none when it has none)."""
    from streams.sink.report import stored_outcomes
    from streams.sink.store import open_store

    store = open_store(settings)
    try:
        report: dict[str, Any] | None = stored_outcomes(store, campaign_id)
    except UnknownCampaignError:
        report = None
    finally:
        store.close()
    return preview_stop(settings, serdes, campaign_id, channels, report)


COLUMNS = (("not queued", "not_queued"), ("before gate", "before_gate"),
           ("at dispatchers", "at_dispatchers"), ("handing over", "handing_over"),
           ("provider: cancellable", "at_provider_cancellable"),
           ("not cancellable", "at_provider_not_cancellable"), ("delivered", "delivered"),
           ("would halt", "would_halt"), ("may still leak", "may_still_leak"))


def describe(impact: StopImpact) -> str:
    """The preview as `estop stop --dry-run` prints it: one row per channel."""
    data = impact.as_dict()
    lines = [f"dry run: a stop of {impact.campaign_id} ({impact.state}) now would halt "
             f"{data['totals']['would_halt']:,} message(s); nothing written",
             f"  {'channel':<8} {'cancel at provider':<19}"
             + "".join(f"{title:>{len(title) + 2}}" for title, _ in COLUMNS)]
    for row in data["channels"]:
        if row["already_stopped"]:
            lines.append(f"  {row['channel']:<8} already stopped: the stop changes nothing here")
            continue
        lines.append(f"  {row['channel']:<8} {row['cancel_capability']:<19}"
                     + "".join(f"{row[key]:>{len(title) + 2},}" for title, key in COLUMNS))
    for row in data["channels"]:
        if row["may_still_leak"]:
            what = []
            if row["at_provider_not_cancellable"]:
                what.append(f"{row['at_provider_not_cancellable']:,} its provider holds and cannot "
                            "cancel")
            if row["may_still_leak"] > row["at_provider_not_cancellable"]:
                what.append(f"up to one pacing slice of {row['slice']:,} per dispatcher "
                            f"({row['dispatchers']}) being handed over when the stop arrives")
            lines.append(f"  {row['channel']}: may still reach recipients: " + "; ".join(what))
    lines.append("  a message a provider is already delivering when the cancel arrives is reported "
                 "sent, not halted")
    return "\n".join(lines)
