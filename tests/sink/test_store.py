"""The analytics store, the report and the export, on SQLite and on a real PostgreSQL server:
every test here runs once per engine (the ``store`` fixture), with the same expectations."""

from __future__ import annotations

import csv
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.models import REASON_CANCEL_UNCONFIRMED, REASON_CANCELLED, REASON_HELD
from streams.sink.exceptions import UnknownCampaignError
from streams.sink.report import EXPORT_COLUMNS, campaign_report, campaign_timeline, export_recipients
from streams.sink.store import NOT_SENT, SENT, Batch, OutcomeRow, OutcomeStore
from tests.sink.conftest import StoreLocation

T0 = 1_750_000_000_000  # a fixed epoch-ms base: nothing here depends on the clock


def sent(message_id: str, campaign: str = "c1", channel: str = "email", handed_at: int = T0,
         recipient: str | None = None) -> OutcomeRow:
    return OutcomeRow(message_id, campaign, channel, recipient or f"r-{message_id}", SENT,
                      f"{channel}.sent", None, None, None, handed_at, handed_at + 10)


def not_sent(message_id: str, campaign: str = "c1", channel: str = "email",
             stage: str = "provider", occurred_at: int = T0, command: str = "cmd-1",
             recipient: str | None = None, reason: str | None = None) -> OutcomeRow:
    return OutcomeRow(message_id, campaign, channel, recipient or f"r-{message_id}", NOT_SENT,
                      f"{channel}.notSent", stage, reason or f"campaign stopped ({stage})", command,
                      None, occurred_at)


def status(campaign: str, state: str, updated_at: int, planned: dict[str, int]) -> dict[str, Any]:
    return {"campaign_id": campaign, "state": state, "channels": list(planned), "planned": planned,
            "updated_at": updated_at}


def stop(command: str, campaign: str = "c1", channels: list[str] | None = None,
         requested_at: int = T0, by: str = "ops") -> dict[str, Any]:
    return {"command_id": command, "campaign_id": campaign, "channels": channels or [],
            "reason": "wrong discount code", "requested_by": by, "requested_at": requested_at}


def ack(command: str, process: str, applied_at: int) -> dict[str, Any]:
    return {"command_id": command, "process_id": process, "applied_at": applied_at}


def batch(outcomes: list[OutcomeRow] | None = None, campaigns: list[dict[str, Any]] | None = None,
          stops: list[dict[str, Any]] | None = None, acks: list[dict[str, Any]] | None = None) -> Batch:
    return Batch(outcomes or [], campaigns or [], stops or [], acks or [])


def counts(store: OutcomeStore, campaign: str = "c1") -> dict[tuple[str, str, str | None], int]:
    return {(channel, outcome, stage): n for channel, outcome, stage, n in store.counts(campaign)}


def exported(store: OutcomeStore, campaign: str, outcome: str,
             channel: str | None = None) -> list[tuple[Any, ...]]:
    return list(store.export(campaign, outcome, channel))


# -- idempotency and the sent-wins rule ----------------------------------------------------------


def test_the_same_batch_twice_changes_nothing(store: OutcomeStore) -> None:
    full = batch(
        [sent("m1"), sent("m2", channel="sms"), not_sent("m3"), not_sent("m4", stage="sending")],
        [status("c1", "Sending", T0, {"email": 3, "sms": 1})],
        [stop("cmd-1")],
        [ack("cmd-1", "worker-a", T0 + 5)],
    )
    first = store.write(full)
    assert (first.inserted_sent, first.inserted_not_sent, first.conflicts) == (2, 2, 0)
    before = (counts(store), store.campaign("c1"), store.stops("c1"), campaign_report(store, "c1"))

    again = store.write(full)

    assert (again.inserted, again.conflicts) == (0, 0)
    after = (counts(store), store.campaign("c1"), store.stops("c1"), campaign_report(store, "c1"))
    assert after == before
    assert counts(store) == {("email", SENT, None): 1, ("sms", SENT, None): 1,
                             ("email", NOT_SENT, "provider"): 1, ("email", NOT_SENT, "sending"): 1}


def test_sent_after_not_sent_replaces_it_and_counts_one_conflict(store: OutcomeStore) -> None:
    assert store.write(batch([not_sent("m1")])).inserted_not_sent == 1

    result = store.write(batch([sent("m1")]))

    assert (result.inserted, result.conflicts) == (0, 1)
    assert counts(store) == {("email", SENT, None): 1}
    [row] = exported(store, "c1", SENT)
    assert row[0] == "m1" and row[3] == SENT and row[4] is None  # the sent event's data is kept
    # Replaying both events again is not a new conflict: the message was counted once.
    assert store.write(batch([not_sent("m1")])).conflicts == 0
    assert store.write(batch([sent("m1")])).conflicts == 0
    assert store.write(batch([not_sent("m1"), sent("m1")])).conflicts == 0
    assert counts(store) == {("email", SENT, None): 1}


def test_not_sent_after_sent_keeps_sent_and_counts_one_conflict(store: OutcomeStore) -> None:
    assert store.write(batch([sent("m1")])).inserted_sent == 1

    result = store.write(batch([not_sent("m1")]))

    assert (result.inserted, result.conflicts) == (0, 1)
    assert counts(store) == {("email", SENT, None): 1}
    assert exported(store, "c1", NOT_SENT) == []
    assert store.write(batch([not_sent("m1")])).conflicts == 0
    assert counts(store) == {("email", SENT, None): 1}


CANCELS = [f"{REASON_CANCELLED}: campaign stopped: wrong code",
           f"{REASON_CANCEL_UNCONFIRMED}: campaign stopped: wrong code"]


@pytest.mark.parametrize("reason", CANCELS, ids=["cancelled", "unconfirmed"])
def test_a_receipt_after_a_cancel_at_the_provider_replaces_it_once(store: OutcomeStore,
                                                                   reason: str) -> None:
    """A later delivery receipt always wins over an earlier cancel: the provider delivered the
    message after all. Expected, so not a conflict; counted once, however often replayed."""
    store.write(batch([not_sent("m1", reason=reason)], stops=[stop("cmd-1")]))
    assert campaign_report(store, "c1")["not_sent_by_stage"]["provider"] == 1

    result = store.write(batch([sent("m1")]))

    assert (result.inserted, result.conflicts, result.receipts_over_cancel) == (0, 0, 1)
    assert counts(store) == {("email", SENT, None): 1}
    report = campaign_report(store, "c1")
    assert (report["sent"], report["not_sent"]) == (1, 0)
    assert (report["cancelled_at_provider"], report["cancel_unconfirmed"]) == (0, 0)
    cancel = not_sent("m1", reason=reason)
    for replay in ([cancel], [sent("m1")], [cancel, sent("m1")]):
        again = store.write(batch(replay))
        assert (again.inserted, again.conflicts, again.receipts_over_cancel) == (0, 0, 0)
    assert counts(store) == {("email", SENT, None): 1}


@pytest.mark.parametrize("reason", CANCELS, ids=["cancelled", "unconfirmed"])
def test_a_cancel_stored_after_its_receipt_never_replaces_it(store: OutcomeStore, reason: str) -> None:
    """sent and notsent are two topics: the receipt's sent may be read before the cancel's
    notSent, or in the same batch. sent stays, counted once, never the reverse."""
    store.write(batch([sent("m1")]))
    result = store.write(batch([not_sent("m1", reason=reason)]))
    assert (result.inserted, result.conflicts, result.receipts_over_cancel) == (0, 0, 1)
    same_batch = store.write(batch([sent("m2"), not_sent("m2", reason=reason)]))
    assert (same_batch.inserted_sent, same_batch.conflicts, same_batch.receipts_over_cancel) == (1, 0, 1)
    assert counts(store) == {("email", SENT, None): 2}
    assert store.write(batch([not_sent("m1", reason=reason), not_sent("m2", reason=reason)])
                       ).receipts_over_cancel == 0


def test_a_sent_over_a_message_held_back_is_still_a_conflict(store: OutcomeStore) -> None:
    """Only a cancel at the provider is overridden as expected: a message held before its handoff,
    or halted at the gate, never reached a provider, so a sent for it is a conflict (sent wins)."""
    store.write(batch([not_sent("m1", reason=f"{REASON_HELD}: campaign stopped: wrong code"),
                       not_sent("m2", stage="sending", reason=CANCELS[0])]))
    result = store.write(batch([sent("m1"), sent("m2")]))
    assert (result.conflicts, result.receipts_over_cancel) == (2, 0)


def test_duplicates_inside_one_batch(store: OutcomeStore) -> None:
    result = store.write(batch([
        not_sent("m1"), not_sent("m1"),             # redelivered notSent
        sent("m2"), sent("m2"),                     # redelivered sent
        not_sent("m3"), sent("m3"), not_sent("m3"),  # both outcomes: sent wins, one conflict
        sent("m4"), not_sent("m4"),
    ]))

    assert (result.inserted_sent, result.inserted_not_sent, result.conflicts) == (3, 1, 2)
    assert counts(store) == {("email", NOT_SENT, "provider"): 1, ("email", SENT, None): 3}
    assert [r[0] for r in exported(store, "c1", SENT)] == ["m2", "m3", "m4"]
    again = store.write(batch([not_sent("m3"), sent("m3"), sent("m4"), not_sent("m4")]))
    assert (again.inserted, again.conflicts) == (0, 0)


def test_a_batch_of_new_and_stored_messages_is_written_as_a_whole(store: OutcomeStore) -> None:
    """New messages go in with one plain insert; one stored message among them sends the whole
    batch the long way (looked up, upserted by the sent-wins rule), nothing written twice."""
    assert store.write(batch([not_sent("m1"), sent("m2")])).inserted == 2

    result = store.write(batch([not_sent("m3"), sent("m1"), not_sent("m2"), not_sent("m4")]))

    assert (result.inserted_sent, result.inserted_not_sent, result.conflicts) == (0, 2, 2)
    assert counts(store) == {("email", SENT, None): 2, ("email", NOT_SENT, "provider"): 2}
    store.write(batch([not_sent("m5", campaign="c2")]))
    assert (store.outcomes("c1"), store.outcomes("c2"), store.outcomes("c3")) == (4, 1, 0)


def test_a_store_created_before_conflict_flags_is_upgraded(store_location: StoreLocation) -> None:
    store_location.execute(
        """CREATE TABLE outcomes (message_id TEXT PRIMARY KEY, campaign_id TEXT NOT NULL,
           channel TEXT NOT NULL, recipient_id TEXT NOT NULL, outcome TEXT NOT NULL,
           event TEXT NOT NULL, stage TEXT, reason TEXT, stop_command_id TEXT, handed_at BIGINT,
           occurred_at BIGINT NOT NULL, stored_at BIGINT NOT NULL)""",
        "INSERT INTO outcomes VALUES ('m1', 'c1', 'email', 'r1', 'not_sent', 'message.notSent',"
        " 'provider', 'stopped', 'cmd-1', NULL, 1, 1)",
    )
    store = store_location.open()

    assert store.write(batch([sent("m1")])).conflicts == 1
    assert store.write(batch([sent("m1"), not_sent("m1")])).conflicts == 0
    assert counts(store) == {("email", SENT, None): 1}


def test_a_reopened_store_keeps_everything(store_location: StoreLocation) -> None:
    first = store_location.open()
    first.write(batch([sent("m1"), not_sent("m2")], [status("c1", "Sending", T0, {"email": 2})],
                      [stop("cmd-1")], [ack("cmd-1", "w", T0 + 1)]))
    report = campaign_report(first, "c1")
    first.close()

    second = store_location.open()

    assert campaign_report(second, "c1") == report
    assert second.write(batch([sent("m1"), not_sent("m2")])).inserted == 0


# -- campaigns, stops, acknowledgements ------------------------------------------------------------


def test_campaign_status_keeps_the_newest_update(store: OutcomeStore) -> None:
    store.write(batch(campaigns=[status("c1", "Finished", T0 + 2000, {"email": 10})]))
    store.write(batch(campaigns=[status("c1", "Sending", T0 + 1000, {"email": 10})]))
    assert store.campaign("c1") == {"state": "Finished", "channels": ["email"],
                                    "planned": {"email": 10}, "updated_at": T0 + 2000}

    store.write(batch(campaigns=[status("c1", "Stopped", T0 + 3000, {"email": 10}),
                                 status("c1", "Sending", T0 + 1500, {"email": 10})]))
    campaign = store.campaign("c1")
    assert campaign is not None
    assert (campaign["state"], campaign["updated_at"]) == ("Stopped", T0 + 3000)

    store.write(batch(campaigns=[status("c2", "Sending", T0, {"sms": 4, "push": 4})]))
    assert store.campaigns() == ["c1", "c2"]
    assert store.campaign("nope") is None


def test_stops_with_their_acknowledgements(store: OutcomeStore) -> None:
    store.write(batch(
        stops=[stop("cmd-2", channels=["sms"], requested_at=T0 + 100, by="bob"),
               stop("cmd-1", requested_at=T0, by="alice"), stop("other", campaign="c2")],
        acks=[ack("cmd-1", "worker-a", T0 + 30), ack("cmd-1", "worker-b", T0 + 50)],
    ))
    # Redelivered stop and ack, an ack for another command, an ack arriving late.
    store.write(batch(stops=[stop("cmd-1", requested_at=T0, by="alice")],
                      acks=[ack("cmd-1", "worker-a", T0 + 30), ack("cmd-2", "worker-a", T0 + 120)]))

    stops = store.stops("c1")

    assert [s["command_id"] for s in stops] == ["cmd-1", "cmd-2"]  # in order of request
    first, second = stops
    assert first == {"command_id": "cmd-1", "channels": [], "reason": "wrong discount code",
                     "requested_by": "alice", "requested_at": T0, "acks": 2,
                     "last_applied_at": T0 + 50}
    assert (second["channels"], second["acks"], second["last_applied_at"]) == (["sms"], 1, T0 + 120)
    assert [s["command_id"] for s in store.stops("c2")] == ["other"]
    assert store.stops("c2")[0]["acks"] == 0 and store.stops("c2")[0]["last_applied_at"] is None
    assert store.campaigns() == ["c1", "c2"]  # a campaign known only from its stop is listed


def test_handoffs_after_confirmation(store: OutcomeStore) -> None:
    store.write(batch(
        outcomes=[
            # c1: stopped on every channel, confirmed when the last ack came in (T0 + 1500).
            sent("a1", handed_at=T0 + 1400),                  # before confirmation: fine
            sent("a2", handed_at=T0 + 1500),                  # at confirmation: fine
            sent("a3", handed_at=T0 + 1600),                  # after: a leak
            sent("a4", channel="sms", handed_at=T0 + 9000),   # after: a leak
            not_sent("a5", occurred_at=T0 + 9000),           # halted: never a leak
            # c2: stopped on webpush only.
            sent("b1", campaign="c2", channel="webpush", handed_at=T0 + 5000),  # a leak
            sent("b2", campaign="c2", channel="push", handed_at=T0 + 5000),     # not covered
            sent("b3", campaign="c2", channel="email", handed_at=T0 + 5000),    # not covered
            # c3: a stop nobody acknowledged yet is not confirmed; c4 was never stopped.
            sent("c1", campaign="c3", handed_at=T0 + 9000),
            sent("d1", campaign="c4", handed_at=T0 + 9000),
        ],
        stops=[stop("s1"), stop("s2", campaign="c2", channels=["webpush"]),
               stop("s3", campaign="c3")],
        acks=[ack("s1", "w1", T0 + 1000), ack("s1", "w2", T0 + 1500), ack("s2", "w1", T0 + 1000)],
    ))

    assert store.handoffs_after_confirmation() == {"email": 1, "sms": 1, "webpush": 1}


def test_no_handoff_after_confirmation_without_a_late_sent(store: OutcomeStore) -> None:
    store.write(batch([sent("a1", handed_at=T0)], stops=[stop("s1")],
                      acks=[ack("s1", "w1", T0 + 1)]))
    assert store.handoffs_after_confirmation() == {}


# -- export ---------------------------------------------------------------------------------


@pytest.fixture
def mixed(store: OutcomeStore) -> OutcomeStore:
    """A campaign with outcomes on three channels written out of order, plus another campaign."""
    store.write(batch(
        outcomes=[
            not_sent("c1:sms:2", channel="sms", stage="sending", occurred_at=T0 + 3),
            sent("c1:email:1", recipient="r1"),
            not_sent("c1:email:3", occurred_at=T0 + 1, recipient="r3"),
            not_sent("c1:push:1", channel="push", occurred_at=T0 + 2),
            not_sent("c1:email:2", stage="sending", occurred_at=T0, recipient="r2"),
            sent("c1:sms:1", channel="sms"),
            not_sent("c2:email:1", campaign="c2"),
        ],
        campaigns=[status("c1", "Stopped", T0, {"email": 3, "sms": 2, "push": 1})],
    ))
    return store


def test_export_is_ordered_by_channel_and_message_and_filtered(mixed: OutcomeStore) -> None:
    rows = exported(mixed, "c1", NOT_SENT)
    assert [(r[0], r[1]) for r in rows] == [("c1:email:2", "email"), ("c1:email:3", "email"),
                                            ("c1:push:1", "push"), ("c1:sms:2", "sms")]
    assert rows[0] == ("c1:email:2", "email", "r2", NOT_SENT, "sending",
                       "campaign stopped (sending)", T0)
    assert [r[0] for r in exported(mixed, "c1", NOT_SENT, "email")] == ["c1:email:2", "c1:email:3"]
    assert [r[0] for r in exported(mixed, "c1", SENT)] == ["c1:email:1", "c1:sms:1"]
    assert exported(mixed, "c1", SENT, "push") == []
    assert [r[0] for r in exported(mixed, "c2", NOT_SENT)] == ["c2:email:1"]


def test_export_recipients_writes_the_csv(mixed: OutcomeStore, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "retarget.csv"

    rows = export_recipients(mixed, "c1", "not_sent", "email", out)

    assert rows == 2
    with out.open(newline="") as file:
        lines = list(csv.reader(file))
    assert tuple(lines[0]) == EXPORT_COLUMNS
    assert lines[1:] == [
        ["c1:email:2", "email", "r2", "not_sent", "sending", "campaign stopped (sending)",
         "2025-06-15T15:06:40.000+00:00"],
        ["c1:email:3", "email", "r3", "not_sent", "provider", "campaign stopped (provider)",
         "2025-06-15T15:06:40.001+00:00"],
    ]
    assert export_recipients(mixed, "c1", "sent", None, out) == 2
    with out.open(newline="") as file:
        assert [line[0] for line in list(csv.reader(file))[1:]] == ["c1:email:1", "c1:sms:1"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["retarget.csv"]  # no temporary left
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # like any new file, not 0600


def test_export_of_an_unknown_campaign_creates_no_file(store: OutcomeStore, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "unknown.csv"

    with pytest.raises(UnknownCampaignError, match="nope"):
        export_recipients(store, "nope", "not_sent", None, out)

    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_a_failed_export_leaves_the_previous_file_untouched(mixed: OutcomeStore, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "exports" / "retarget.csv"
    out.parent.mkdir()
    out.write_text("previous export\n")
    real_export = mixed.export

    def failing(campaign_id: str, outcome: str, channel: str | None) -> Iterator[tuple[Any, ...]]:
        rows = real_export(campaign_id, outcome, channel)
        yield next(rows)
        raise RuntimeError("the store went away mid-export")

    monkeypatch.setattr(mixed, "export", failing)
    with pytest.raises(RuntimeError, match="mid-export"):
        export_recipients(mixed, "c1", "not_sent", None, out)

    assert out.read_text() == "previous export\n"
    assert [p.name for p in out.parent.iterdir()] == ["retarget.csv"]  # no temporary left


# -- the report --------------------------------------------------------------------------------


def test_campaign_report(store: OutcomeStore) -> None:
    requested_at = int(time.time() * 1000) - 2000  # the halted rows are stored after this
    store.write(batch(
        outcomes=[
            sent("e1"), sent("e2"),
            not_sent("e3", stage="sending"), not_sent("e4", stage="sending"),
            not_sent("e5", reason=f"{REASON_CANCELLED}: campaign stopped: wrong code"),
            sent("s1", channel="sms"),
            not_sent("s3", channel="sms", reason=CANCELS[1]),
            not_sent("s2", channel="sms", reason=f"{REASON_HELD}: campaign stopped: wrong code"),
            not_sent("p1", channel="push", stage="sending"),  # a channel the status did not list
            sent("x1", campaign="c2"),
        ],
        campaigns=[status("c1", "Finished", T0, {"email": 5, "sms": 3})],
        stops=[stop("cmd-1", requested_at=requested_at, by="alice")],
        acks=[ack("cmd-1", "worker-a", requested_at + 40)],
    ))

    report = campaign_report(store, "c1")

    assert report["campaign_id"] == "c1"
    assert report["state"] == "Stopped"  # a stop outranks the last lifecycle record
    assert (report["total"], report["sent"], report["not_sent"]) == (8, 3, 6)
    assert (report["accounted"], report["pending"]) == (9, 0)
    assert report["not_sent_by_stage"] == {"sending": 3, "provider": 3}
    # Of the three halted at the provider stage, one was cancelled at the provider (email), one
    # had its cancel requested there without the provider proving it (sms), and one was held
    # before its handoff (sms).
    assert (report["cancelled_at_provider"], report["cancel_unconfirmed"]) == (1, 1)
    assert report["by_channel"] == {
        "email": {"planned": 5, "sent": 2, "not_sent": 3, "accounted": 5, "pending": 0,
                  "not_sent_by_stage": {"sending": 2, "provider": 1}, "failed": 0,
                  "cancelled_at_provider": 1, "cancel_unconfirmed": 0},
        "sms": {"planned": 3, "sent": 1, "not_sent": 2, "accounted": 3, "pending": 0,
                "not_sent_by_stage": {"sending": 0, "provider": 2}, "failed": 0,
                "cancelled_at_provider": 0, "cancel_unconfirmed": 1},
        "push": {"planned": 0, "sent": 0, "not_sent": 1, "accounted": 1, "pending": 0,
                 "not_sent_by_stage": {"sending": 1, "provider": 0}, "failed": 0,
                 "cancelled_at_provider": 0, "cancel_unconfirmed": 0},
    }
    assert report["stops"] == [{"command_id": "cmd-1", "channels": [],
                                "reason": "wrong discount code", "requested_by": "alice",
                                "requested_at": requested_at, "acks": 1,
                                "last_applied_at": requested_at + 40}]
    assert report["stop_to_last_halted_accounted_s"] >= 2.0


def test_report_without_a_stop_or_status(store: OutcomeStore) -> None:
    store.write(batch([sent("m1"), not_sent("m2", stage="sending")]))

    report = campaign_report(store, "c1")

    assert report["state"] is None
    assert (report["total"], report["sent"], report["not_sent"], report["pending"]) == (0, 1, 1, 0)
    assert report["stops"] == [] and report["stop_to_last_halted_accounted_s"] is None
    assert report["by_channel"]["email"]["not_sent_by_stage"] == {"sending": 1, "provider": 0}


def test_report_of_an_unknown_campaign(store: OutcomeStore) -> None:
    store.write(batch([sent("m1")], [status("c1", "Sending", T0, {"email": 1})]))

    with pytest.raises(UnknownCampaignError, match="unknown campaign 'c9'"):
        campaign_report(store, "c9")


def test_timeline_slices_outcomes_cumulatively_over_time(store: OutcomeStore) -> None:
    # sent at T0+10..T0+50 (handed_at + 10), notSent at T0+1000..T0+1003: 4 slices of 249 ms
    store.write(batch([sent(f"s{i}", handed_at=T0 + i * 10) for i in range(5)]
                      + [not_sent(f"n{i}", occurred_at=T0 + 1000 + i) for i in range(4)]
                      + [sent("other", campaign="c2")]))

    series = campaign_timeline(store, "c1", buckets=4)

    assert (series["start"], series["slice_ms"]) == (T0 + 10, 249)
    assert series["points"] == [
        {"at": T0 + 10 + 249, "sent": 5, "not_sent": 0, "failed": 0},
        {"at": T0 + 10 + 4 * 249, "sent": 5, "not_sent": 4, "failed": 0},
    ]
    assert campaign_timeline(store, "none")["points"] == []
