"""A campaign's accounting, computed once: what was planned and queued per channel (its
lifecycle record), what became of it (the analytics store: sent, notSent by stage, failed,
cancels at the provider) and its state (the control view decides Stopped). ``estop status`` and
the control plane's API (and so the console) render this one result instead of each adding the
counts up its own way."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.campaigns.lifecycle import effective_state
from streams.control.view import ControlView
from streams.models import STAGES


@dataclass(frozen=True)
class ChannelAccount:
    channel: str
    planned: int
    queued: int  # requests the launcher queued (the rest never queued: notSent at stage sending)
    sent: int
    failed: int  # the provider never accepted them within the retry budget
    not_sent_by_stage: Mapping[str, int]
    cancelled_at_provider: int  # of the notSent at stage provider: cancelled, as it proved
    cancel_unconfirmed: int  # of the notSent at stage provider: cancel asked, not proved

    @property
    def not_sent(self) -> int:
        return sum(self.not_sent_by_stage.values())

    @property
    def accounted(self) -> int:
        return self.sent + self.not_sent + self.failed

    @property
    def pending(self) -> int:
        """Messages without an outcome yet (failed ones are accounted, not pending)."""
        return max(self.planned - self.accounted, 0)


@dataclass(frozen=True)
class CampaignAccount:
    campaign_id: str
    state: str | None  # None: the lifecycle topic and the control view never saw it
    channels: tuple[ChannelAccount, ...]
    stop_to_last_halted_accounted_s: float | None
    # Who stopped it (the first stop in force): a person's name, or guardrail:<rule> for a
    # guardrail's automatic stop; None while not stopped.
    stopped_by: str | None = None

    def total(self, field: str) -> int:
        """A count summed over the channels (``planned``, ``sent``, ``not_sent``, ``failed``,
        ``pending``, ``cancel_unconfirmed``, ...)."""
        return sum(int(getattr(channel, field)) for channel in self.channels)

    def channel(self, name: str) -> ChannelAccount:
        return next(c for c in self.channels if c.channel == name)


def campaign_account(campaign_id: str, status: Mapping[str, Any] | None, view: ControlView,
                     report: Mapping[str, Any] | None) -> CampaignAccount:
    """The account of one campaign from its latest lifecycle record (``status``), the control
    view and its analytics report (``streams.sink.report.campaign_report``; None when the store
    has nothing of it yet: zeros). Channels: the status's, else the stopped ones, then any the
    store saw outcomes on."""
    planned: dict[str, int] = dict(status["planned"]) if status else {}
    queued: dict[str, int] = dict(status.get("queued") or {}) if status else {}
    names = list(status["channels"]) if status else sorted(view.channels_stopped(campaign_id))
    by_channel: Mapping[str, Mapping[str, Any]] = report["by_channel"] if report else {}
    names += sorted(set(by_channel) - set(names))
    channels = []
    for name in names:
        stored = by_channel.get(name, {})
        total = int(planned.get(name, stored.get("planned", 0)))
        stages = stored.get("not_sent_by_stage", {})
        channels.append(ChannelAccount(
            channel=name, planned=total, queued=int(queued.get(name, total)),
            sent=int(stored.get("sent", 0)), failed=int(stored.get("failed", 0)),
            not_sent_by_stage={**dict.fromkeys(STAGES, 0),
                               **{stage: int(n) for stage, n in stages.items()}},
            cancelled_at_provider=int(stored.get("cancelled_at_provider", 0)),
            cancel_unconfirmed=int(stored.get("cancel_unconfirmed", 0))))
    return CampaignAccount(
        campaign_id=campaign_id,
        state=effective_state(dict(status) if status else None, view, campaign_id),
        channels=tuple(channels),
        stop_to_last_halted_accounted_s=(report.get("stop_to_last_halted_accounted_s")
                                         if report else None),
        stopped_by=stops[0].requested_by if (stops := view.stops(campaign_id)) else None)
