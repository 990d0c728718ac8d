"""Relaunch of a stopped campaign's unsent audience, once the error is fixed: exactly the
recipients the analytics store holds as notSent for messages the campaign was planned with
(the launcher's message ids: ``campaign:channel:index`` below its planned count), queued as a
new campaign through the launcher (the same path as any campaign). Used by `estop relaunch` and
the console."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from streams.campaigns.exceptions import RelaunchError
from streams.campaigns.launcher import LaunchResult, Progress, launch
from streams.models.ids import check_id
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.report import campaign_report
from streams.sink.store import NOT_SENT, OutcomeStore


@dataclass(frozen=True)
class Relaunch:
    source: str
    campaign_id: str
    audience: dict[str, list[str]]  # channel -> recipient ids
    foreign: int = 0  # notSent rows left out: message ids the source campaign never had

    @property
    def recipients(self) -> int:
        return sum(len(r) for r in self.audience.values())


def plan_relaunch(store: OutcomeStore, source: str, new_id: str, known: set[str]) -> Relaunch:
    """Check the relaunch and collect its audience; raises (nothing written) when the source
    still has messages without an outcome (its notSent set is not final yet), has no notSent
    recipient, or the new id breaks the id rule or is already a campaign (``known``)."""
    check_id(new_id, "new campaign id")
    if new_id == source or new_id in known:
        raise RelaunchError(f"campaign {new_id!r} already exists; relaunch under a new id")
    report = campaign_report(store, source)
    if report["pending"]:
        raise RelaunchError(f"campaign {source!r} still has {report['pending']:,} message(s) without "
                            "an outcome; relaunch once every message is accounted for")
    campaign = store.campaign(source)
    planned: dict[str, int] = dict(campaign["planned"]) if campaign else {}
    audience: dict[str, list[str]] = {}
    foreign = 0
    for message, channel, recipient, *_rest in store.export(source, NOT_SENT, None):
        if _planned_index(message, source, channel) < planned.get(channel, 0):
            audience.setdefault(channel, []).append(recipient)
        else:
            foreign += 1
    if not audience:
        raise RelaunchError(f"campaign {source!r} has no notSent recipient to relaunch")
    return Relaunch(source, new_id, audience, foreign)


def _planned_index(message_id: str, campaign_id: str, channel: str) -> int:
    """The index the launcher gave ``message_id`` in the campaign's plan (``message_id``), or
    a number no plan reaches: a notSent event for any other id (anyone who may write notsent
    can make one, with any recipient) never gets into a relaunch."""
    prefix = f"{campaign_id}:{channel}:"
    index = message_id[len(prefix):]
    if not message_id.startswith(prefix) or not (index.isascii() and index.isdigit()) or \
            str(int(index)) != index:
        return sys.maxsize
    return int(index)


def relaunch(settings: Settings, serdes: Serdes, plan: Relaunch, rate: float | None = None,
             progress: Progress = lambda _: None, canary: float | None = None) -> LaunchResult:
    """Queue the plan's audience as its new campaign; ``canary``: that share first, the rest
    after the hold (``streams.campaigns.canary``)."""
    return launch(settings, serdes, plan.campaign_id, list(plan.audience), plan.audience, rate,
                  progress, canary)
