"""The dispatcher's outbox: estop's own durable record of every message it handed to a provider,
one SQLite file per channel in the data folder (``outbox/<channel>.sqlite``), shared by the
channel's dispatcher processes and outliving them. A provider adapter never persists anything;
this is where handoffs are made exactly once and their outcomes published exactly once.

* Idempotency by message id: a message is reserved (``submitting``) before it is submitted and
  becomes ``accepted`` with the provider's id once the provider confirmed it. A message found
  reserved but not confirmed is in doubt (a lost answer, or a crash between the submission and
  this record): the dispatcher asks the provider (``ProviderAdapter.find``) before submitting it
  again. A message found accepted is never submitted again, only counted.
* Outcomes: an accepted message becomes ``delivered`` or ``undelivered`` when the provider tells
  (``ProviderAdapter.deliveries``), ``cancelled`` when a stop cancelled it at the provider, or
  ``cancel_unconfirmed`` when the provider took the stop's cancel without proving it.
* Numbered report batches: outcomes are claimed as a batch (its rows carry the batch number),
  published in one Kafka transaction that also commits the number as a marker offset, then
  marked reported; a batch a crash left claimed is settled from the marker
  (``streams.dispatch.receipts``)."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from streams import localdb
from streams.clock import now_ms
from streams.providers.base import Accepted, Delivery, Handoff

SUBMITTING, ACCEPTED = "submitting", "accepted"
DELIVERED, UNDELIVERED, CANCELLED, REPORTED = "delivered", "undelivered", "cancelled", "reported"
CANCEL_UNCONFIRMED = "cancel_unconfirmed"  # the provider took the cancel without proving it
OUTCOMES = "('delivered', 'undelivered', 'cancelled', 'cancel_unconfirmed')"

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    message_id TEXT PRIMARY KEY,
    campaign_id TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    state TEXT NOT NULL,
    provider_id TEXT,
    submitted_at INTEGER,
    handed_at INTEGER,
    occurred_at INTEGER,
    stop_command_id TEXT,
    stop_requested_at INTEGER,
    reason TEXT,
    final_state TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    report_batch INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_campaign ON outbox (campaign_id, state);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, report_batch);
CREATE INDEX IF NOT EXISTS outbox_provider ON outbox (provider_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    """A message's fate at the provider stage, waiting to be published as an event."""

    message_id: str
    campaign_id: str
    recipient_id: str
    state: str  # delivered | undelivered | cancelled | cancel_unconfirmed
    handed_at: int | None
    occurred_at: int
    stop_command_id: str | None
    stop_requested_at: int | None
    reason: str | None  # the stop's reason (cancelled) or the provider's word (undelivered)
    attempts: int


@dataclass(frozen=True, slots=True)
class Reserved:
    """What ``reserve`` found for a slice of handoffs."""

    fresh: list[Handoff]  # never seen: submit them
    in_doubt: list[Handoff]  # submitted before, answer unknown: ask the provider first
    already: int  # accepted before (a redelivery after a crash): counted, not submitted


def outbox_path(data_dir: Path, channel: str) -> Path:
    return data_dir / "outbox" / f"{channel}.sqlite"



class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = path
        # One connection per thread: the dispatcher's thread hands over and publishes, the
        # control feed's thread records a stop's cancellations (a connection holds one
        # transaction at a time).
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._db.executescript(SCHEMA)
        with localdb.write(self._db) as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('outbox_id', ?)",
                       (uuid.uuid4().hex[:16],))
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('report_batch', '0')")
            self.outbox_id: str = db.execute(
                "SELECT value FROM meta WHERE key = 'outbox_id'").fetchone()[0]

    @property
    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = localdb.connect(self.path)
            with self._lock:
                self._connections.append(db)
        return db

    @classmethod
    def for_channel(cls, data_dir: Path, channel: str) -> Outbox:
        return cls(outbox_path(data_dir, channel))

    # -- handoffs ------------------------------------------------------------------------------

    def reserve(self, handoffs: Sequence[Handoff]) -> Reserved:
        """Record the intent to submit these messages, before submitting them."""
        states: dict[str, str] = {}
        with localdb.write(self._db) as db:
            for chunk, marks in localdb.chunks([h.message_id for h in handoffs]):
                states.update(db.execute(
                    f"SELECT message_id, state FROM outbox WHERE message_id IN ({marks})", chunk))
            at = now_ms()
            db.executemany(
                "INSERT INTO outbox (message_id, campaign_id, recipient_id, state, submitted_at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(h.message_id, h.campaign_id, h.recipient_id, SUBMITTING, at)
                 for h in handoffs if h.message_id not in states])
            db.executemany("UPDATE outbox SET attempts = attempts + 1, submitted_at = CASE state"
                           " WHEN 'submitting' THEN ? ELSE submitted_at END WHERE message_id = ?",
                           [(at, m) for m in states])
        return Reserved(
            fresh=[h for h in handoffs if h.message_id not in states],
            in_doubt=[h for h in handoffs if states.get(h.message_id) == SUBMITTING],
            already=sum(1 for s in states.values() if s != SUBMITTING),
        )

    def accepted(self, provider_ids: dict[str, str], at_ms: int | None) -> None:
        """The provider holds these messages (message_id -> provider_id), handed over at
        ``at_ms``; None when the provider was found to hold them only later (an answer was
        lost): they were handed over at their last submission, the only time the provider could
        take them, which is what ``handed_at`` (and the leak count built on it) must say."""
        if provider_ids:
            with localdb.write(self._db) as db:
                db.executemany("UPDATE outbox SET state = 'accepted', provider_id = ?,"
                               " handed_at = COALESCE(?, submitted_at)"
                               " WHERE message_id = ? AND state = 'submitting'",
                               [(p, at_ms, m) for m, p in provider_ids.items()])

    def not_held(self, message_ids: Iterable[str]) -> None:
        """The provider does not hold these messages (refused, or not found when in doubt)."""
        rows = [(m,) for m in message_ids]
        if rows:
            with localdb.write(self._db) as db:
                db.executemany("DELETE FROM outbox WHERE message_id = ? AND state = 'submitting'", rows)

    def has_campaign(self, campaign_ids: Iterable[str]) -> bool:
        """Whether any message of these campaigns was ever reserved here (one indexed lookup)."""
        ids = list(campaign_ids)
        return any(self._db.execute(
            f"SELECT 1 FROM outbox WHERE campaign_id IN ({marks}) LIMIT 1", chunk).fetchone()
                   for chunk, marks in localdb.chunks(ids))

    def states(self, message_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk, marks in localdb.chunks(message_ids):
            found.update(self._db.execute(
                f"SELECT message_id, state FROM outbox WHERE message_id IN ({marks})", chunk))
        return found

    # -- outcomes ------------------------------------------------------------------------------

    def unfinished(self) -> list[Accepted]:
        """Messages a provider accepted that have no outcome yet: what a restarted dispatcher
        hands its adapter (``ProviderAdapter.resume``)."""
        rows = self._db.execute(
            "SELECT message_id, provider_id, recipient_id, handed_at FROM outbox"
            " WHERE state = 'accepted' AND provider_id IS NOT NULL").fetchall()
        return [Accepted(m, p, r, h if h is not None else now_ms()) for m, p, r, h in rows]

    def campaigns_at_provider(self) -> list[str]:
        """Campaigns with messages the provider accepted and that have no outcome yet."""
        return [c for (c,) in self._db.execute(
            "SELECT DISTINCT campaign_id FROM outbox WHERE state = 'accepted'").fetchall()]

    def to_cancel(self, campaign_id: str) -> dict[str, str]:
        """message_id -> provider_id of the campaign's messages the provider may still hold."""
        return dict(self._db.execute(
            "SELECT message_id, provider_id FROM outbox WHERE campaign_id = ? AND state = 'accepted'",
            (campaign_id,)).fetchall())

    def cancelled(self, message_ids: Sequence[str], command_id: str, requested_at: int,
                  reason: str, state: str = CANCELLED) -> int:
        """The provider dropped these messages on a stop (``cancelled``), or took the cancel
        without proving it (``cancel_unconfirmed``); returns how many this call recorded."""
        count = 0
        with localdb.write(self._db) as db:
            for chunk, marks in localdb.chunks(message_ids):
                count += db.execute(
                    "UPDATE outbox SET state = ?, occurred_at = ?, stop_command_id = ?,"
                    f" stop_requested_at = ?, reason = ? WHERE message_id IN ({marks})"
                    " AND state = 'accepted'",
                    [state, now_ms(), command_id, requested_at, reason, *chunk]).rowcount
        return count

    def delivered(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """What the provider said became of accepted messages; each applies once. Returns the
        deliveries of messages still reserved here (submitted, their acceptance not recorded
        yet: the provider can be faster than the outbox): apply them again later."""
        early: list[Delivery] = []
        if not deliveries:
            return early
        with localdb.write(self._db) as db:
            for d in deliveries:
                # A receipt the provider sent again after a restart names only its own id
                # (e.g. an SMSC's deliver_sm for a message submitted by the previous process).
                match = ("message_id = ? AND provider_id = ?", (d.message_id, d.provider_id)) \
                    if d.message_id else ("provider_id = ?", (d.provider_id,))
                applied = db.execute(
                    f"UPDATE outbox SET state = ?, occurred_at = ?, reason = ? WHERE {match[0]}"
                    " AND state = 'accepted'",
                    (DELIVERED if d.delivered else UNDELIVERED, d.at_ms, d.detail or None,
                     *match[1])).rowcount
                if not applied and d.message_id and db.execute(
                        "SELECT 1 FROM outbox WHERE message_id = ? AND state = 'submitting'",
                        (d.message_id,)).fetchone():
                    early.append(d)
        return early

    # -- report batches ------------------------------------------------------------------------

    def claim(self, limit: int) -> tuple[int, list[Outcome]]:
        """Outcomes whose events are not published yet, claimed as one report batch; returns its
        number and the outcomes ((0, []) when there are none)."""
        db = self._db
        with localdb.write(db):
            batch = int(db.execute("SELECT value FROM meta WHERE key = 'report_batch'").fetchone()[0]) + 1
            claimed = db.execute(
                "UPDATE outbox SET report_batch = ? WHERE rowid IN (SELECT rowid FROM outbox"
                f" WHERE state IN {OUTCOMES} AND report_batch IS NULL LIMIT ?)", (batch, limit),
            ).rowcount
            if not claimed:
                return 0, []
            db.execute("UPDATE meta SET value = ? WHERE key = 'report_batch'", (str(batch),))
        rows = db.execute(
            "SELECT message_id, campaign_id, recipient_id, state, handed_at, occurred_at,"
            " stop_command_id, stop_requested_at, reason, attempts FROM outbox"
            f" WHERE report_batch = ? AND state IN {OUTCOMES}", (batch,)).fetchall()
        return batch, [Outcome(*row) for row in rows]

    def reported(self, batch: int) -> None:
        """The events of this batch are committed on Kafka."""
        with localdb.write(self._db) as db:
            db.execute("UPDATE outbox SET final_state = state, state = 'reported'"
                       f" WHERE report_batch = ? AND state IN {OUTCOMES}", (batch,))

    def release(self, batch: int) -> None:
        """The events of this batch were not published: claim its outcomes again later."""
        with localdb.write(self._db) as db:
            db.execute("UPDATE outbox SET report_batch = NULL"
                       f" WHERE report_batch = ? AND state IN {OUTCOMES}", (batch,))

    def unsettled(self) -> list[int]:
        """Batches claimed but neither reported nor released (a crash in between)."""
        return [int(row[0]) for row in self._db.execute(
            "SELECT DISTINCT report_batch FROM outbox WHERE report_batch IS NOT NULL"
            f" AND state IN {OUTCOMES} ORDER BY 1")]

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()


class OutboxStats:
    """Read-only questions tests, status and the demo ask of a channel's outbox."""

    def __init__(self, data_dir: Path, channel: str) -> None:
        self.path = outbox_path(data_dir, channel)

    def _count(self, sql: str, *args: object) -> int:
        rows = localdb.query(self.path, sql, args)
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def handed(self, campaign_id: str) -> int:
        """Messages of the campaign a provider accepted (whatever became of them)."""
        return self._count("SELECT COUNT(*) FROM outbox WHERE campaign_id = ? AND handed_at IS NOT NULL",
                           campaign_id)

    def handed_after(self, campaign_id: str, at_ms: int) -> int:
        return self._count("SELECT COUNT(*) FROM outbox WHERE campaign_id = ? AND handed_at > ?",
                           campaign_id, at_ms)

    def resubmitted(self, campaign_id: str) -> int:
        """Submissions beyond the first (retries, redeliveries after a crash): each is counted,
        none makes the provider hold a message twice."""
        return self._count("SELECT COALESCE(SUM(attempts - 1), 0) FROM outbox WHERE campaign_id = ?",
                           campaign_id)

    def at_provider(self, campaign_id: str) -> int:
        """Messages the provider accepted and has not yet delivered (or had cancelled)."""
        return self._count("SELECT COUNT(*) FROM outbox WHERE campaign_id = ? AND state IN"
                           " ('accepted', 'submitting')", campaign_id)

    def rows(self, campaign_id: str) -> tuple[int, int]:
        """(rows, distinct message ids) of the campaign."""
        rows = localdb.query(self.path, "SELECT COUNT(*), COUNT(DISTINCT message_id) FROM outbox"
                             " WHERE campaign_id = ?", (campaign_id,))
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)  # type: ignore[call-overload]

    def message_ids(self, campaign_id: str) -> set[str]:
        return {str(r[0]) for r in localdb.query(
            self.path, "SELECT message_id FROM outbox WHERE campaign_id = ?", (campaign_id,))}

    def cancelled(self, campaign_id: str) -> int:
        return self._count("SELECT COUNT(*) FROM outbox WHERE campaign_id = ? AND"
                           " (state = 'cancelled' OR final_state = 'cancelled')", campaign_id)
