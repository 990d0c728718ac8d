"""Provider adapters. The interface is what a dispatcher needs from an email server, SMS
gateway or push service: submit, cancel what it still holds for a campaign, delivery receipts.

The simulated provider keeps its queue in a SQLite ledger (one file per channel in the data
folder) so it outlives a dispatcher restart the way a real provider does, and so tests can see
every handoff per message id. Its primary key on message id is the idempotency key: a message
resubmitted after a crash is recognised, counted, and never queued twice."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

QUEUED, DELIVERED, CANCELLED, HALTED, REPORTED = "queued", "delivered", "cancelled", "halted", "reported"


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
    state: str  # delivered | cancelled | halted
    handed_at: int | None
    occurred_at: int
    stop_command_id: str | None
    stop_requested_at: int | None
    reason: str | None


class ProviderAdapter(Protocol):
    channel: str

    def submit(self, handoffs: list[Handoff], halted: list[Handoff],
               stop_ids: dict[str, tuple[str, int, str]]) -> int:
        """Hand ``handoffs`` over and record ``halted`` (never handed) in one step; returns the
        number newly accepted (a resubmitted message id is not accepted twice)."""

    def cancel(self, campaign_id: str, command_id: str, requested_at: int, reason: str) -> int:
        """Cancel what the provider still holds of a campaign; returns how many."""

    def outcomes(self, limit: int) -> list[Outcome]:
        """Delivered, cancelled and halted messages not yet published."""

    def published(self, message_ids: list[str]) -> None:
        """The events for these outcomes are acknowledged by Kafka."""


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
    attempts INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS ledger_due ON ledger (state, due_at);
CREATE INDEX IF NOT EXISTS ledger_campaign ON ledger (campaign_id, state);
"""


class SimulatedProvider:
    """A provider that accepts messages, "processes" each for ``delay_s``, then delivers it."""

    def __init__(self, path: Path, channel: str, delay_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.channel = channel
        self.path = path
        self.delay_ms = int(delay_s * 1000)
        self._local = threading.local()  # one connection per thread: the stop hook runs on its own
        self._db.executescript(SCHEMA)

    @property
    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = _connect(self.path)
        return db

    @classmethod
    def for_channel(cls, data_dir: Path, channel: str, delay_s: float) -> SimulatedProvider:
        return cls(ledger_path(data_dir, channel), channel, delay_s)

    def submit(self, handoffs: list[Handoff], halted: list[Handoff],
               stop_ids: dict[str, tuple[str, int, str]]) -> int:
        now = _now_ms()
        db = self._db
        with db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO ledger (message_id, campaign_id, recipient_id, state,"
                " handed_at, due_at) VALUES (?, ?, ?, 'queued', ?, ?)",
                [(h.message_id, h.campaign_id, h.recipient_id, now, now + self.delay_ms)
                 for h in handoffs],
            )
            accepted = db.total_changes - before
            if accepted < len(handoffs):
                # Resubmitted after a crash: already held, so counted and not queued again.
                db.executemany(
                    "UPDATE ledger SET attempts = attempts + 1 WHERE message_id = ? AND handed_at < ?",
                    [(h.message_id, now) for h in handoffs],
                )
            db.executemany(
                "INSERT INTO ledger (message_id, campaign_id, recipient_id, state, occurred_at,"
                " stop_command_id, stop_requested_at, reason)"
                " VALUES (?, ?, ?, 'halted', ?, ?, ?, ?) ON CONFLICT(message_id) DO NOTHING",
                [(h.message_id, h.campaign_id, h.recipient_id, now, *stop_ids[h.campaign_id])
                 for h in halted],
            )
        return accepted

    def cancel(self, campaign_id: str, command_id: str, requested_at: int, reason: str) -> int:
        with self._db as db:
            return db.execute(
                "UPDATE ledger SET state = 'cancelled', occurred_at = ?, stop_command_id = ?,"
                " stop_requested_at = ?, reason = ? WHERE campaign_id = ? AND state = 'queued'",
                (_now_ms(), command_id, requested_at, reason, campaign_id),
            ).rowcount

    def deliver_due(self, limit: int = 10000) -> int:
        """The provider's own clock: messages whose processing time is over are delivered."""
        now = _now_ms()
        with self._db as db:
            return db.execute(
                "UPDATE ledger SET state = 'delivered', occurred_at = ? WHERE rowid IN"
                " (SELECT rowid FROM ledger WHERE state = 'queued' AND due_at <= ? LIMIT ?)",
                (now, now, limit),
            ).rowcount

    def outcomes(self, limit: int) -> list[Outcome]:
        self.deliver_due()
        rows = self._db.execute(
            "SELECT message_id, campaign_id, recipient_id, state, handed_at, occurred_at,"
            " stop_command_id, stop_requested_at, reason FROM ledger"
            " WHERE state IN ('delivered', 'cancelled', 'halted') LIMIT ?",
            (limit,),
        ).fetchall()
        return [Outcome(*row) for row in rows]

    def published(self, message_ids: list[str]) -> None:
        with self._db as db:
            db.executemany(
                "UPDATE ledger SET final_state = state, state = 'reported' WHERE message_id = ?",
                [(m,) for m in message_ids],
            )

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()


def ledger_path(data_dir: Path, channel: str) -> Path:
    return data_dir / "providers" / f"{channel}.sqlite"


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.isolation_level = "DEFERRED"
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
