"""A campaign's accounting, computed once: what was planned and queued per channel (its
lifecycle record), what became of it (the analytics store: sent, notSent by stage, failed,
cancels at the provider) and its state (the control view decides Stopped). ``estop report``,
``estop status`` and the control plane's API (and so the console) render this one result instead
of each adding the counts up its own way; ``CampaignReport`` is what ``estop report`` prints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams.campaigns.lifecycle import effective_state, resolved_state
from streams.clock import when
from streams.control.view import ControlView
from streams.models import STAGES

if TYPE_CHECKING:
    from rich.console import Group


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

    def figures(self) -> dict[str, Any]:
        """The channel's entry of ``by_channel`` in `estop report --json`."""
        return {"planned": self.planned, "sent": self.sent, "not_sent": self.not_sent,
                "not_sent_by_stage": dict(self.not_sent_by_stage), "failed": self.failed,
                "cancelled_at_provider": self.cancelled_at_provider,
                "cancel_unconfirmed": self.cancel_unconfirmed, "accounted": self.accounted,
                "pending": self.pending}


@dataclass(frozen=True)
class CampaignAccount:
    campaign_id: str
    state: str | None  # None: the lifecycle topic and the control view never saw it
    channels: tuple[ChannelAccount, ...]
    stop_to_last_halted_accounted_s: float | None
    # Who requested the first stop in force: the operator's name, the kill switch's caller or
    # guardrail:<rule> for a guardrail's automatic stop; None while not stopped.
    stopped_by: str | None = None

    def total(self, field: str) -> int:
        """A count summed over the channels (``planned``, ``sent``, ``not_sent``, ``failed``,
        ``pending``, ``cancel_unconfirmed``, ...)."""
        return sum(int(getattr(channel, field)) for channel in self.channels)

    def channel(self, name: str) -> ChannelAccount:
        return next(c for c in self.channels if c.channel == name)

    def not_sent_by_stage(self) -> dict[str, int]:
        stages = dict.fromkeys(STAGES, 0)
        for channel in self.channels:
            for stage, count in channel.not_sent_by_stage.items():
                stages[stage] = stages.get(stage, 0) + count
        return stages

    def figures(self) -> dict[str, Any]:
        """The counts of `estop report --json` (totals, by stage, by channel)."""
        return {
            "total": self.total("planned"),
            "sent": self.total("sent"),
            "not_sent": self.total("not_sent"),
            "failed": self.total("failed"),  # the provider never accepted them within the retry budget
            "accounted": self.total("accounted"),
            "pending": self.total("pending"),
            "not_sent_by_stage": {stage: n for stage, n in self.not_sent_by_stage().items()
                                  if stage in STAGES},
            # Of the notSent at stage provider: accepted by a provider, cancelled there on the
            # stop as the provider proved; and cancel requested there, not confirmed (the
            # provider took the request without proving the message will not be delivered).
            "cancelled_at_provider": self.total("cancelled_at_provider"),
            "cancel_unconfirmed": self.total("cancel_unconfirmed"),
            "by_channel": {c.channel: c.figures() for c in self.channels},
        }


@dataclass(frozen=True)
class CampaignReport:
    """What `estop report` prints: the account, and from the analytics store the stops with
    their acknowledgements and the audit trail of the campaign."""

    account: CampaignAccount
    stops: tuple[Mapping[str, Any], ...]
    audit: tuple[Mapping[str, Any], ...]

    def as_dict(self) -> dict[str, Any]:
        """`estop report --json` (the README's command table names its fields)."""
        account = self.account
        return {
            "campaign_id": account.campaign_id,
            "state": account.state,
            **account.figures(),
            "stops": [dict(stop) for stop in self.stops],
            "stopped_by": account.stopped_by,
            "stop_to_last_halted_accounted_s": account.stop_to_last_halted_accounted_s,
            # Every stop, refused stop attempt and kill switch use naming the campaign.
            "audit": [dict(entry) for entry in self.audit],
        }

    def table(self) -> Group:
        """The table `estop report` prints, with a line per stop, the provider cancels, the
        time to the last halted message and the audit trail."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        account = self.account
        stopped_by = f" by {account.stopped_by}" if account.stopped_by else ""
        table = Table(title=f"{account.campaign_id}: {account.state or 'unknown state'}{stopped_by}")
        for column in ("channel", "planned", "sent", "notSent", "@sending", "@provider", "failed",
                       "pending"):
            table.add_column(column, justify="left" if column == "channel" else "right")
        for c in account.channels:
            table.add_row(c.channel, *_counts(c.planned, c.sent, c.not_sent, c.not_sent_by_stage,
                                              c.failed, c.pending))
        table.add_row("total", *_counts(
            account.total("planned"), account.total("sent"), account.total("not_sent"),
            account.not_sent_by_stage(), account.total("failed"), account.total("pending")),
            style="bold")
        lines = []
        for stop in self.stops:
            channels = ", ".join(stop["channels"]) or "all channels"
            lines.append(f"stopped {channels} at {when(stop['requested_at'])} by "
                         f"{stop['requested_by']}: {stop['reason']} ({stop['acks']} acknowledgements)")
        cancelled = account.total("cancelled_at_provider")
        if cancelled:
            lines.append(f"{cancelled:,} cancelled at the provider (accepted by it, removed from "
                         "its queue by the stop)")
        unconfirmed = account.total("cancel_unconfirmed")
        if unconfirmed:
            per_channel = ", ".join(f"{c.channel} {c.cancel_unconfirmed:,}"
                                    for c in account.channels if c.cancel_unconfirmed)
            lines.append(f"{unconfirmed:,} cancel requested at the provider, not confirmed "
                         f"({per_channel}): counted notSent, though the provider did not prove "
                         "they will not be delivered; a delivery receipt that comes later counts "
                         "one sent")
        if account.stop_to_last_halted_accounted_s is not None:
            lines.append(f"last halted message accounted "
                         f"{account.stop_to_last_halted_accounted_s:.1f}s after the stop")
        if self.audit:
            lines.append("audit:")
        lines += ["  " + audit_line(entry) for entry in self.audit]
        return Group(table, *(Text(line) for line in lines))


def _counts(planned: int, sent: int, not_sent: int, stages: Mapping[str, int], failed: int,
            pending: int) -> tuple[str, ...]:
    return (f"{planned:,}", f"{sent:,}", f"{not_sent:,}", f"{stages.get('sending', 0):,}",
            f"{stages.get('provider', 0):,}", f"{failed:,}", f"{pending:,}")


def audit_line(entry: Mapping[str, Any]) -> str:
    """One audit event: when, what, outcome, who (role), via, from where, why."""
    role = f" ({entry['role']})" if entry.get("role") else ""
    detail = f": {entry['detail']}" if entry.get("detail") else ""
    command = f" command {entry['command_id']}" if entry.get("command_id") else ""
    return (f"{when(entry['at'])} {entry['action']} {entry['outcome']} by {entry['actor']}{role} "
            f"via {entry['via']} from {entry['source']}{command}{detail}")


def campaign_account(campaign_id: str, status: Mapping[str, Any] | None, view: ControlView,
                     stored: Mapping[str, Any] | None) -> CampaignAccount:
    """The account of one campaign from its latest lifecycle record (``status``), the control
    view (its state and who stopped it) and what the analytics store holds of it
    (``streams.sink.report.stored_outcomes``; None when it has nothing yet: zeros). Channels:
    the status's, else the stopped ones, then any the store saw outcomes on."""
    stops = view.stops(campaign_id)
    return account_of(campaign_id, effective_state(dict(status) if status else None, view,
                                                   campaign_id),
                      stops[0].requested_by if stops else None, status,
                      sorted(view.channels_stopped(campaign_id)), stored)


def stored_account(campaign_id: str, stored: Mapping[str, Any]) -> CampaignAccount:
    """The account from the analytics store alone (its copy of the lifecycle record and of the
    stops, by the same rule): what the bench, the demo and a relaunch read without Kafka."""
    stops = stored["stops"]
    recorded = stored["recorded"]
    return account_of(campaign_id, resolved_state(recorded["state"] if recorded else None,
                                                  bool(stops)),
                      stops[0]["requested_by"] if stops else None, recorded,
                      sorted({c for s in stops for c in s["channels"]}), stored)


def account_of(campaign_id: str, state: str | None, stopped_by: str | None,
               status: Mapping[str, Any] | None, stopped: list[str],
               stored: Mapping[str, Any] | None) -> CampaignAccount:
    planned: dict[str, int] = dict(status["planned"]) if status else {}
    queued: dict[str, int] = dict(status.get("queued") or {}) if status else {}
    names = list(status["channels"]) if status else list(stopped)
    by_channel: Mapping[str, Mapping[str, Any]] = stored["by_channel"] if stored else {}
    names += sorted(set(by_channel) - set(names))
    channels = []
    for name in names:
        counts = by_channel.get(name, {})
        total = int(planned.get(name, counts.get("planned", 0)))
        stages = counts.get("not_sent_by_stage", {})
        channels.append(ChannelAccount(
            channel=name, planned=total, queued=int(queued.get(name, total)),
            sent=int(counts.get("sent", 0)), failed=int(counts.get("failed", 0)),
            not_sent_by_stage={**dict.fromkeys(STAGES, 0),
                               **{stage: int(n) for stage, n in stages.items()}},
            cancelled_at_provider=int(counts.get("cancelled_at_provider", 0)),
            cancel_unconfirmed=int(counts.get("cancel_unconfirmed", 0))))
    return CampaignAccount(
        campaign_id=campaign_id, state=state, channels=tuple(channels),
        stop_to_last_halted_accounted_s=(stored.get("stop_to_last_halted_accounted_s")
                                         if stored else None),
        stopped_by=stopped_by)
