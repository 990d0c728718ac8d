"""What the analytics store holds of a campaign (its outcomes, stops and audit trail, the
campaign account's figures), its outcomes over time and the export of recipients."""

from __future__ import annotations

import csv
import datetime as dt
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streams.models import STAGES
from streams.sink.exceptions import UnknownCampaignError
from streams.sink.store import FAILED, NOT_SENT, SENT, OutcomeStore

EXPORT_COLUMNS = ("message_id", "channel", "recipient_id", "outcome", "stage", "reason", "occurred_at")
# A cell a spreadsheet would read as a formula (or whose tab or carriage return it would act on)
# starts with one of these; such a cell is written with a leading apostrophe (OWASP's advice for
# CSV injection), so a recipient id "=HYPERLINK(...)" stays text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def stored_outcomes(store: OutcomeStore, campaign_id: str) -> dict[str, Any]:
    """What the analytics store holds of a campaign, what its account is built from
    (``streams.campaigns.account``): its copy of the lifecycle record (``recorded``), per channel
    the planned count and the outcomes (sent, failed, notSent by stage, cancels at the provider),
    the stops with their acknowledgements, the time from the stop to the last halted message
    stored and the audit trail. UnknownCampaignError when it holds nothing of it."""
    campaign = store.campaign(campaign_id)
    stops = store.stops(campaign_id)
    counts = store.counts(campaign_id)
    audit = store.audit(campaign_id)
    if campaign is None and not stops and not counts and not audit:
        raise UnknownCampaignError(f"unknown campaign {campaign_id!r}: the analytics store has no "
                                   "status, stop or outcome for it")
    planned: dict[str, int] = dict(campaign["planned"]) if campaign else {}
    channels = list(campaign["channels"]) if campaign else []
    channels += sorted({row[0] for row in counts} - set(channels))
    by_channel: dict[str, dict[str, Any]] = {
        channel: {"planned": planned.get(channel, 0), "sent": 0, "failed": 0,
                  "not_sent_by_stage": dict.fromkeys(STAGES, 0)} for channel in channels}
    for channel, outcome, stage, count in counts:
        entry = by_channel[channel]
        if outcome == SENT:
            entry["sent"] += count
        elif outcome == FAILED:
            entry["failed"] += count
        else:
            key = stage or "unknown"
            entry["not_sent_by_stage"][key] = entry["not_sent_by_stage"].get(key, 0) + count
    cancels = store.provider_cancels(campaign_id)
    for channel, entry in by_channel.items():
        entry["cancelled_at_provider"], entry["cancel_unconfirmed"] = cancels.get(channel, (0, 0))
    last_halted = store.last_halted_at(campaign_id)
    stop_to_last = None
    if stops and last_halted is not None:
        stop_to_last = max(last_halted - stops[0]["requested_at"], 0) / 1000
    return {"campaign_id": campaign_id, "recorded": campaign, "by_channel": by_channel,
            "stops": stops, "stop_to_last_halted_accounted_s": stop_to_last, "audit": audit}


def campaign_report(store: OutcomeStore, campaign_id: str) -> dict[str, Any]:
    """`estop report --json` from the analytics store alone (its copies of the lifecycle record
    and of the stops decide the state, by the control view's rule): for the bench, the demo and
    a relaunch, which read no Kafka topic. `estop report` itself takes the state from the
    control view (``streams.campaigns.account.campaign_account``)."""
    from streams.campaigns.account import CampaignReport, stored_account

    stored = stored_outcomes(store, campaign_id)
    return CampaignReport(stored_account(campaign_id, stored), tuple(stored["stops"]),
                          tuple(stored["audit"])).as_dict()


def campaign_timeline(store: OutcomeStore, campaign_id: str, buckets: int = 120) -> dict[str, Any]:
    """Sent, notSent and failed outcomes over time, cumulative per slice (for the console's
    chart); ``at`` is the end of each slice in ms since the epoch."""
    start, width, rows = store.timeline(campaign_id, buckets)
    per_slice: dict[int, dict[str, int]] = {}
    for index, outcome, count in rows:
        per_slice.setdefault(index, dict.fromkeys((SENT, NOT_SENT, FAILED), 0))[outcome] += count
    totals = dict.fromkeys((SENT, NOT_SENT, FAILED), 0)
    points: list[dict[str, int]] = []
    for index in sorted(per_slice):
        for outcome, count in per_slice[index].items():
            totals[outcome] += count
        points.append({"at": start + (index + 1) * width, **totals})
    return {"campaign_id": campaign_id, "start": start if rows else None, "slice_ms": width,
            "points": points}


def export_rows(store: OutcomeStore, campaign_id: str, outcome: str,
                channel: str | None) -> Iterator[list[str]]:
    """The export as CSV rows, header first: what `estop export` writes and the console serves;
    every cell spreadsheet-safe (``FORMULA_STARTS``)."""
    if store.campaign(campaign_id) is None and not store.counts(campaign_id):
        raise UnknownCampaignError(f"unknown campaign {campaign_id!r}")
    stored = {"not_sent": NOT_SENT, "failed": FAILED}.get(outcome, SENT)
    yield list(EXPORT_COLUMNS)
    for row in store.export(campaign_id, stored, channel):
        *head, occurred_at = row
        yield [_cell(value) for value in (*head, _iso(occurred_at))]


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def export_recipients(store: OutcomeStore, campaign_id: str, outcome: str, channel: str | None,
                      out: Path) -> int:
    """Write the CSV atomically (a temporary file renamed into place): no partial file on error."""
    rows = export_rows(store, campaign_id, outcome, channel)
    header = next(rows)  # checks the campaign before any file is created
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    written = 0
    try:
        # mkstemp creates the file private (0600); the export gets the mode any new file gets.
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            for row in rows:
                writer.writerow(row)
                written += 1
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return written


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")
