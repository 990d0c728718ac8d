"""``estop status``: where a campaign stands, per channel. The lifecycle and the stop come from
the compacted ``campaign-status`` and ``campaign-control`` topics (what the control plane's tables
hold), outcomes from the analytics store (one per message id), handoffs from the dispatchers'
outboxes: nothing re-reads the ``sent`` and ``notsent`` history."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from streams.campaigns.lifecycle import effective_state, read_campaigns, read_control, stop_info
from streams.dispatch.changelog import LedgerStats
from streams.exceptions import UsageError
from streams.kafka.clients import headers_of
from streams.models import (
    CHANNELS,
    HEADER_CAMPAIGN,
    HEADER_CHANNEL,
    HEADER_OUTCOME,
    HEADER_STAGE,
    OUTCOME_FAILED,
    STAGE_SENDING,
    STAGES,
)
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.exceptions import UnknownCampaignError
from streams.sink.report import campaign_report
from streams.sink.store import open_store


@dataclass
class ChannelCounts:
    planned: int = 0
    queued: int = 0
    handed: int = 0
    sent: int = 0
    failed: int = 0  # the provider never accepted them within the retry budget
    not_sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    # Of the notSent at stage provider: the provider took the stop's cancel without proving it.
    cancel_unconfirmed: int = 0

    @property
    def not_sent_total(self) -> int:
        return sum(self.not_sent.values())

    @property
    def passed_gate(self) -> int:
        """Queued requests not halted at the gate (the launcher's never-queued ones are part of
        the ``sending`` notSent count but were never queued). Exact once nothing is pending."""
        halted_at_gate = self.not_sent[STAGE_SENDING] - (self.planned - self.queued)
        return self.queued - halted_at_gate

    @property
    def pending(self) -> int:
        return max(self.planned - self.sent - self.not_sent_total - self.failed, 0)


class OutcomeCounter:
    """Counts one outcome per message id for one campaign from the event topics (sent,
    notsent, failed)."""

    def __init__(self, campaign_id: str) -> None:
        self.campaign_id = campaign_id.encode()
        self.seen: set[bytes] = set()
        self.counts: dict[str, ChannelCounts] = {}

    def channel(self, name: str) -> ChannelCounts:
        return self.counts.setdefault(name, ChannelCounts())

    def add(self, message: Message) -> None:
        if message.error():
            return
        headers = {k: v for k, v in headers_of(message) if isinstance(v, bytes)}
        if headers.get(HEADER_CAMPAIGN) != self.campaign_id:
            return
        key = message.key()
        if not isinstance(key, bytes) or key in self.seen:
            return
        self.seen.add(key)
        counts = self.channel(headers.get(HEADER_CHANNEL, b"?").decode())
        stage = headers.get(HEADER_STAGE)
        if headers.get(HEADER_OUTCOME) == OUTCOME_FAILED.encode():
            counts.failed += 1
        elif stage is None:
            counts.sent += 1
        else:
            stage_name = stage.decode()
            counts.not_sent[stage_name] = counts.not_sent.get(stage_name, 0) + 1

    @property
    def total(self) -> int:
        return len(self.seen)


def campaign_status(settings: Settings, serdes: Serdes, campaign_id: str) -> dict[str, Any]:
    campaigns = read_campaigns(settings, serdes)
    view = read_control(settings, serdes)
    status = campaigns.get(campaign_id)
    state = effective_state(status, view, campaign_id)
    if state is None:
        raise UsageError(f"unknown campaign {campaign_id!r}: not on campaign-status or campaign-control")
    channels = status["channels"] if status else sorted(view.channels_stopped(campaign_id))
    stored = _stored_counts(settings, campaign_id)
    per_channel: dict[str, dict[str, Any]] = {}
    for channel in channels:
        counts = stored.get(channel, ChannelCounts())
        counts.planned = (status or {}).get("planned", {}).get(channel, 0)
        queued = (status or {}).get("queued", {})
        counts.queued = queued.get(channel, counts.planned) if queued else counts.planned
        counts.handed = LedgerStats(settings, channel).handed(campaign_id)
        per_channel[channel] = {
            "requested": counts.queued,
            "planned": counts.planned,
            "passed_gate": counts.passed_gate,
            "handed_to_provider": counts.handed,
            "sent": counts.sent,
            "not_sent": dict(counts.not_sent),
            "cancel_unconfirmed": counts.cancel_unconfirmed,
            "failed": counts.failed,
            "pending": counts.pending,
        }
    return {
        "campaign_id": campaign_id,
        "state": state,
        "channels": per_channel,
        "stops": [stop_info(s) for s in view.stops(campaign_id)],
        "totals": {
            "planned": sum(c["planned"] for c in per_channel.values()),
            "sent": sum(c["sent"] for c in per_channel.values()),
            "not_sent": sum(sum(c["not_sent"].values()) for c in per_channel.values()),
            "cancel_unconfirmed": sum(c["cancel_unconfirmed"] for c in per_channel.values()),
            "failed": sum(c["failed"] for c in per_channel.values()),
        },
        "known_channels": list(CHANNELS),
    }


def _stored_counts(settings: Settings, campaign_id: str) -> dict[str, ChannelCounts]:
    """Sent, notSent by stage and failed per channel from the analytics store (none yet: zeros)."""
    store = open_store(settings)
    try:
        report = campaign_report(store, campaign_id)
    except UnknownCampaignError:
        return {}
    finally:
        store.close()
    return {channel: ChannelCounts(sent=c["sent"], failed=c["failed"],
                                   not_sent={stage: c["not_sent_by_stage"].get(stage, 0)
                                             for stage in STAGES},
                                   cancel_unconfirmed=c["cancel_unconfirmed"])
            for channel, c in report["by_channel"].items()}
