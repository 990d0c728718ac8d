"""``estop status``: where a campaign stands, per channel. The lifecycle and the stop come from
the compacted ``campaign-status`` and ``campaign-control`` topics (what the control plane's tables
hold), outcomes from the analytics store (one per message id), handoffs from the dispatchers'
ledgers: nothing re-reads the ``sent`` and ``notsent`` history. The counts are the campaign's
account (``streams.campaigns.account``). ``OutcomeCounter`` counts outcomes from the event topics
instead, for the demo and the tests to check the pipeline against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from streams.campaigns.account import CampaignReport, campaign_account
from streams.campaigns.lifecycle import read_campaigns, read_control, stop_info
from streams.clock import when
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
from streams.sink.report import stored_outcomes
from streams.sink.store import open_store


@dataclass
class ChannelCounts:
    """One channel's outcomes as counted from the event topics."""

    sent: int = 0
    failed: int = 0  # the provider never accepted them within the retry budget
    not_sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))

    @property
    def not_sent_total(self) -> int:
        return sum(self.not_sent.values())


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
    """``estop status``: the campaign's account (``streams.campaigns.account``, what the control
    plane's API answers too) with, per channel, what passed the gate and what the dispatchers'
    ledgers handed to the provider."""
    campaigns = read_campaigns(settings, serdes)
    view = read_control(settings, serdes)
    status = campaigns.get(campaign_id)
    account = campaign_account(campaign_id, status, view, _stored(settings, campaign_id))
    if account.state is None:
        raise UsageError(f"unknown campaign {campaign_id!r}: not on campaign-status or campaign-control")
    per_channel: dict[str, dict[str, Any]] = {}
    for c in account.channels:
        halted_at_gate = c.not_sent_by_stage[STAGE_SENDING] - (c.planned - c.queued)
        per_channel[c.channel] = {
            "requested": c.queued,
            "planned": c.planned,
            # Queued requests not halted at the gate (the launcher's never-queued ones are part
            # of the sending notSent count but were never queued). Exact once nothing is pending.
            "passed_gate": c.queued - halted_at_gate,
            "handed_to_provider": LedgerStats(settings, c.channel).handed(campaign_id),
            "sent": c.sent,
            "not_sent": {stage: c.not_sent_by_stage[stage] for stage in STAGES},
            "cancel_unconfirmed": c.cancel_unconfirmed,
            "failed": c.failed,
            "pending": c.pending,
        }
    return {
        "campaign_id": campaign_id,
        "state": account.state,
        "channels": per_channel,
        "stops": [stop_info(s) for s in view.stops(campaign_id)],
        "stopped_by": account.stopped_by,
        "totals": {field: account.total(field)
                   for field in ("planned", "sent", "not_sent", "cancel_unconfirmed", "failed")},
        "known_channels": list(CHANNELS),
    }


def status_lines(status: dict[str, Any]) -> list[str]:
    """What `estop status` prints of ``campaign_status``: the state, a row per channel, a line
    per stop."""
    lines = [f"{status['campaign_id']}: {status['state']}",
             f"  {'channel':<8} {'requested':>10} {'passed gate':>12} {'handed':>10} "
             f"{'sent':>10} {'notSent@sending':>16} {'notSent@provider':>17} "
             f"{'cancel unconfirmed':>19} {'failed':>8} {'pending':>9}"]
    for channel, c in status["channels"].items():
        lines.append(f"  {channel:<8} {c['requested']:>10,} {c['passed_gate']:>12,} "
                     f"{c['handed_to_provider']:>10,} {c['sent']:>10,} "
                     f"{c['not_sent']['sending']:>16,} {c['not_sent']['provider']:>17,} "
                     f"{c['cancel_unconfirmed']:>19,} {c['failed']:>8,} {c['pending']:>9,}")
    for s in status["stops"]:
        lines.append(f"  stopped {', '.join(s['channels'])} by {s['requested_by']} at "
                     f"{when(s['requested_at'])}: {s['reason']} (command {s['command_id']})")
    return lines


def campaign_report_now(settings: Settings, serdes: Serdes, campaign_id: str) -> CampaignReport:
    """``estop report``: the campaign's account (state and who stopped it from the control view,
    as `estop status` and the API) with the stops and the audit trail the store holds.
    UnknownCampaignError when neither Kafka nor the store knows it."""
    status = read_campaigns(settings, serdes).get(campaign_id)
    view = read_control(settings, serdes)
    stored = _stored(settings, campaign_id)
    account = campaign_account(campaign_id, status, view, stored)
    if account.state is None and stored is None:
        raise UnknownCampaignError(f"unknown campaign {campaign_id!r}: not on campaign-status or "
                                   "campaign-control, and the analytics store has nothing of it")
    return CampaignReport(account, tuple(stored["stops"]) if stored else (),
                          tuple(stored["audit"]) if stored else ())


def _stored(settings: Settings, campaign_id: str) -> dict[str, Any] | None:
    """What the analytics store holds of the campaign (None until it has something of it)."""
    store = open_store(settings)
    try:
        return stored_outcomes(store, campaign_id)
    except UnknownCampaignError:
        return None
    finally:
        store.close()
