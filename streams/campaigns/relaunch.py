"""Relaunch of a stopped campaign's unsent audience, once the error is fixed: exactly the
recipients the analytics store holds as notSent, queued as a new campaign through the launcher
(the same path as any campaign). Used by `estop relaunch` and the console."""

from __future__ import annotations

from dataclasses import dataclass

from streams.campaigns.exceptions import RelaunchError
from streams.campaigns.launcher import LaunchResult, Progress, launch
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.report import campaign_report
from streams.sink.store import NOT_SENT, OutcomeStore


@dataclass(frozen=True)
class Relaunch:
    source: str
    campaign_id: str
    audience: dict[str, list[str]]  # channel -> recipient ids

    @property
    def recipients(self) -> int:
        return sum(len(r) for r in self.audience.values())


def plan_relaunch(store: OutcomeStore, source: str, new_id: str, known: set[str]) -> Relaunch:
    """Check the relaunch and collect its audience; raises (nothing written) when the source
    still has messages without an outcome (its notSent set is not final yet), has no notSent
    recipient, or the new id is empty or already a campaign (``known``)."""
    new_id = new_id.strip()
    if not new_id:
        raise RelaunchError("the relaunch needs a new campaign id (--as NEW_ID)")
    if new_id == source or new_id in known:
        raise RelaunchError(f"campaign {new_id!r} already exists; relaunch under a new id")
    report = campaign_report(store, source)
    if report["pending"]:
        raise RelaunchError(f"campaign {source!r} still has {report['pending']:,} message(s) without "
                            "an outcome; relaunch once every message is accounted for")
    audience: dict[str, list[str]] = {}
    for _message, channel, recipient, *_rest in store.export(source, NOT_SENT, None):
        audience.setdefault(channel, []).append(recipient)
    if not audience:
        raise RelaunchError(f"campaign {source!r} has no notSent recipient to relaunch")
    return Relaunch(source, new_id, audience)


def relaunch(settings: Settings, serdes: Serdes, plan: Relaunch, rate: float | None = None,
             progress: Progress = lambda _: None) -> LaunchResult:
    return launch(settings, serdes, plan.campaign_id, list(plan.audience), plan.audience, rate,
                  progress)
