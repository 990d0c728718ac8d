"""Provider adapters. The interface is what a dispatcher needs from an email server, SMS
gateway or push service: submit, cancel what it still holds for a campaign, delivery receipts.

The simulated provider keeps its queue in a SQLite ledger (one file per channel in the data
folder) so it outlives a dispatcher restart the way a real provider does, and so tests can see
every handoff per message id. Its primary key on message id is the idempotency key: a message
resubmitted after a crash is recognised, counted, and never queued twice.

Faults (``ESTOP_PROVIDER_ERROR_RATE``, ``ESTOP_PROVIDER_TIMEOUT_RATE``): a handoff may be refused
with an error (not accepted) or time out (accepted or not: the caller cannot tell, as with a real
provider whose answer was lost). Retrying a timeout is safe because of the idempotency key.

Outcomes are published in numbered report batches: a batch is claimed (its rows carry the batch
number), published in one Kafka transaction that also commits the batch number as a marker
offset, then marked reported. A batch left claimed by a crash is settled from the marker."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

QUEUED, DELIVERED, CANCELLED, REPORTED = "queued", "delivered", "cancelled", "reported"
# What a provider answers to a handoff it did not confirm.
ERROR, TIMEOUT = "error", "timeout"


@dataclass(frozen=True, slots=True)
class Handoff:
    message_id: str
    campaign_id: str
    recipient_id: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """A message's fate at the provider stage, waiting to be published as an event."""

    message_id: str
    campaign_id: str
    recipient_id: str
    state: str  # delivered | cancelled
    handed_at: int | None
    occurred_at: int
    stop_command_id: str | None
    stop_requested_at: int | None
    reason: str | None


class ProviderAdapter(Protocol):
    channel: str

    def submit(self, handoffs: list[Handoff]) -> list[tuple[Handoff, str]]:
        """Hand messages over; returns those the provider did not confirm, each with its answer:
        ``error`` (refused, not accepted) or ``timeout`` (no answer: maybe accepted). A message id
        handed over again is recognised and never queued twice, so a retry is safe."""

    def known(self, message_ids: list[str]) -> set[str]:
        """The ids among these that were ever handed over."""

    def cancel(self, campaign_id: str, command_id: str, requested_at: int, reason: str) -> int:
        """Cancel what the provider still holds of a campaign; returns how many."""

    def claim(self, limit: int) -> tuple[int, list[Outcome]]:
        """Delivered and cancelled messages whose events are not published yet, claimed as one
        report batch; returns its number and the outcomes ((0, []) when there are none)."""

    def reported(self, batch: int) -> None:
        """The events of this batch are committed on Kafka."""

    def release(self, batch: int) -> None:
        """The events of this batch were not published: claim its outcomes again later."""

    def unsettled(self) -> list[int]:
        """Batches claimed but neither reported nor released (a crash in between)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    message_id TEXT PRIMARY KEY,
    campaign_id TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    state TEXT NOT NULL,
    handed_at INTEGER,
    due_at INTEGER,
    occurred_at INTEGER,
    stop_command_id TEXT,
    stop_requested_at INTEGER,
    reason TEXT,
    final_state TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    report_batch INTEGER
);
CREATE INDEX IF NOT EXISTS ledger_due ON ledger (state, due_at);
CREATE INDEX IF NOT EXISTS ledger_campaign ON ledger (campaign_id, state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
UNREPORTED = "('delivered', 'cancelled')"


class SimulatedProvider:
    """A provider that accepts messages, "processes" each for ``delay_s``, then delivers it."""

    def __init__(self, path: Path, channel: str, delay_s: float, error_rate: float = 0.0,
                 timeout_rate: float = 0.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.channel = channel
        self.path = path
        self.delay_ms = int(delay_s * 1000)
        self.error_rate = error_rate
        self.timeout_rate = timeout_rate
        self._random = random.Random()
        self._local = threading.local()  # one connection per thread: the stop hook runs on its own
        db = self._db
        db.executescript(SCHEMA)
        with _write(db):
            columns = {row[1] for row in db.execute("PRAGMA table_info(ledger)")}
            if "report_batch" not in columns:  # a ledger written before report batches
                db.execute("ALTER TABLE ledger ADD COLUMN report_batch INTEGER")
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('ledger_id', ?)",
                       (uuid.uuid4().hex[:16],))
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('report_batch', '0')")
            self.ledger_id: str = db.execute("SELECT value FROM meta WHERE key = 'ledger_id'").fetchone()[0]

    @property
    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = _connect(self.path)
        return db

    @classmethod
    def for_channel(cls, data_dir: Path, channel: str, delay_s: float, error_rate: float = 0.0,
                    timeout_rate: float = 0.0) -> SimulatedProvider:
        return cls(ledger_path(data_dir, channel), channel, delay_s, error_rate, timeout_rate)

    def submit(self, handoffs: list[Handoff]) -> list[tuple[Handoff, str]]:
        now = _now_ms()
        refused: list[tuple[Handoff, str]] = []
        accepted: list[Handoff] = []
        for handoff in handoffs:
            draw = self._random.random()
            if draw < self.error_rate:
                refused.append((handoff, ERROR))
                continue
            if draw < self.error_rate + self.timeout_rate:
                refused.append((handoff, TIMEOUT))
                if self._random.random() < 0.5:
                    continue  # the request was lost on its way; otherwise only the answer was
            accepted.append(handoff)
        if not accepted:
            return refused
        db = self._db
        with _write(db):
            held = _existing(db, [h.message_id for h in accepted])
            db.executemany(
                "INSERT INTO ledger (message_id, campaign_id, recipient_id, state, handed_at, due_at)"
                " VALUES (?, ?, ?, 'queued', ?, ?)",
                [(h.message_id, h.campaign_id, h.recipient_id, now, now + self.delay_ms)
                 for h in accepted if h.message_id not in held],
            )
            # Handed over again (a redelivery after a crash, a retry after a timeout): already
            # held, so counted and not queued twice.
            db.executemany("UPDATE ledger SET attempts = attempts + 1 WHERE message_id = ?",
                           [(m,) for m in held])
        return refused

    def known(self, message_ids: list[str]) -> set[str]:
        """Which of these messages were ever handed over: their outcome belongs to the ledger."""
        return _existing(self._db, message_ids)

    def cancel(self, campaign_id: str, command_id: str, requested_at: int, reason: str) -> int:
        with _write(self._db) as db:
            return db.execute(
                "UPDATE ledger SET state = 'cancelled', occurred_at = ?, stop_command_id = ?,"
                " stop_requested_at = ?, reason = ? WHERE campaign_id = ? AND state = 'queued'",
                (_now_ms(), command_id, requested_at, reason, campaign_id),
            ).rowcount

    def deliver_due(self, limit: int = 10000) -> int:
        """The provider's own clock: messages whose processing time is over are delivered."""
        now = _now_ms()
        with _write(self._db) as db:
            return db.execute(
                "UPDATE ledger SET state = 'delivered', occurred_at = ? WHERE rowid IN"
                " (SELECT rowid FROM ledger WHERE state = 'queued' AND due_at <= ? LIMIT ?)",
                (now, now, limit),
            ).rowcount

    def claim(self, limit: int) -> tuple[int, list[Outcome]]:
        self.deliver_due()
        db = self._db
        with _write(db):
            batch = int(db.execute("SELECT value FROM meta WHERE key = 'report_batch'").fetchone()[0]) + 1
            claimed = db.execute(
                "UPDATE ledger SET report_batch = ? WHERE rowid IN (SELECT rowid FROM ledger"
                f" WHERE state IN {UNREPORTED} AND report_batch IS NULL LIMIT ?)",
                (batch, limit),
            ).rowcount
            if not claimed:
                return 0, []
            db.execute("UPDATE meta SET value = ? WHERE key = 'report_batch'", (str(batch),))
        rows = db.execute(
            "SELECT message_id, campaign_id, recipient_id, state, handed_at, occurred_at,"
            " stop_command_id, stop_requested_at, reason FROM ledger"
            f" WHERE report_batch = ? AND state IN {UNREPORTED}",
            (batch,),
        ).fetchall()
        return batch, [Outcome(*row) for row in rows]

    def reported(self, batch: int) -> None:
        with _write(self._db) as db:
            db.execute("UPDATE ledger SET final_state = state, state = 'reported'"
                       f" WHERE report_batch = ? AND state IN {UNREPORTED}", (batch,))

    def release(self, batch: int) -> None:
        with _write(self._db) as db:
            db.execute("UPDATE ledger SET report_batch = NULL"
                       f" WHERE report_batch = ? AND state IN {UNREPORTED}", (batch,))

    def unsettled(self) -> list[int]:
        return [int(row[0]) for row in self._db.execute(
            "SELECT DISTINCT report_batch FROM ledger WHERE report_batch IS NOT NULL"
            f" AND state IN {UNREPORTED} ORDER BY 1")]

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()


@contextmanager
def _write(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, its lock taken up front: reads in it see what it then changes
    (several dispatcher processes of a channel share one ledger)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _existing(db: sqlite3.Connection, message_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(message_ids), 500):
        chunk = message_ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        found.update(row[0] for row in db.execute(
            f"SELECT message_id FROM ledger WHERE message_id IN ({marks})", chunk))
    return found


def ledger_path(data_dir: Path, channel: str) -> Path:
    return data_dir / "providers" / f"{channel}.sqlite"


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: every write goes through _write(), an explicit BEGIN IMMEDIATE.
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class LedgerStats:
    """Read-only questions tests, status and the demo ask of a provider ledger."""

    def __init__(self, data_dir: Path, channel: str) -> None:
        self.path = ledger_path(data_dir, channel)

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        if not self.path.exists():
            return []
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def handed(self, campaign_id: str) -> int:
        """Messages of the campaign that reached the provider (handed over, whatever became of them)."""
        rows = self._query("SELECT COUNT(*) FROM ledger WHERE campaign_id = ? AND handed_at IS NOT NULL",
                           (campaign_id,))
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def handed_after(self, campaign_id: str, at_ms: int) -> int:
        rows = self._query(
            "SELECT COUNT(*) FROM ledger WHERE campaign_id = ? AND handed_at > ?", (campaign_id, at_ms)
        )
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def duplicate_submits(self, campaign_id: str) -> int:
        rows = self._query("SELECT COALESCE(SUM(attempts - 1), 0) FROM ledger WHERE campaign_id = ?",
                           (campaign_id,))
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def in_queue(self, campaign_id: str) -> int:
        rows = self._query("SELECT COUNT(*) FROM ledger WHERE campaign_id = ? AND state = 'queued'",
                           (campaign_id,))
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]
