"""The analytics store: exactly one outcome per message id, plus what the report needs about
campaigns and stops. SQLite by default (a file in the data folder), PostgreSQL when
``ESTOP_ANALYTICS_DSN`` names one; both run the same SQL and pass the same tests.

Rule for a message that has both a sent and a notSent: sent wins, never the reverse. When the
notSent is a stop's cancel at the provider (stage provider, reason ``REASON_CANCELLED`` or
``REASON_CANCEL_UNCONFIRMED``), that is expected: a delivery receipt that comes after the cancel
proves the provider delivered the message after all (real providers answer "ok" to a cancel of a
message they already delivered), so the sent replaces the notSent, in whichever order the two
events arrive, and the row is flagged ``receipt_over_cancel``. Any other such pair is possible
only under replay: the row is flagged ``conflict``. Each flag is set and reported once, so
replaying the same events again counts nothing new."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from streams.clock import now_ms
from streams.models import CHANNELS, REASON_CANCEL_UNCONFIRMED, REASON_CANCELLED, STAGE_PROVIDER
from streams.settings import Settings
from streams.sink.exceptions import StoreError

SENT, NOT_SENT, FAILED = "sent", "not_sent", "failed"
# A notSent of a stop's cancel at the provider, which a later delivery receipt (sent) overrides.
CANCEL_REASONS = (REASON_CANCELLED, REASON_CANCEL_UNCONFIRMED)
CANCEL_KIND = "cancel at the provider"  # what _kind calls such a notSent

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS outcomes (
        message_id TEXT PRIMARY KEY,
        campaign_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        recipient_id TEXT NOT NULL,
        outcome TEXT NOT NULL,
        event TEXT NOT NULL,
        stage TEXT,
        reason TEXT,
        stop_command_id TEXT,
        handed_at BIGINT,
        occurred_at BIGINT NOT NULL,
        stored_at BIGINT NOT NULL,
        conflict SMALLINT NOT NULL DEFAULT 0,
        receipt_over_cancel SMALLINT NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS outcomes_campaign ON outcomes (campaign_id, channel, outcome, stage)",
    """CREATE TABLE IF NOT EXISTS campaigns (
        campaign_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        channels TEXT NOT NULL,
        planned TEXT NOT NULL,
        updated_at BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS stops (
        command_id TEXT PRIMARY KEY,
        campaign_id TEXT NOT NULL,
        channels TEXT NOT NULL,
        reason TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        requested_at BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS stops_campaign ON stops (campaign_id)",
    """CREATE TABLE IF NOT EXISTS acks (
        command_id TEXT NOT NULL,
        process_id TEXT NOT NULL,
        applied_at BIGINT NOT NULL,
        PRIMARY KEY (command_id, process_id))""",
    # Append-only: written once per event id, never updated or deleted (streams.security.audit).
    """CREATE TABLE IF NOT EXISTS audit (
        audit_id TEXT PRIMARY KEY,
        at BIGINT NOT NULL,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        actor TEXT NOT NULL,
        role TEXT,
        via TEXT NOT NULL,
        source TEXT NOT NULL,
        principal TEXT NOT NULL,
        campaign_id TEXT NOT NULL,
        command_id TEXT,
        reason TEXT,
        channels TEXT NOT NULL,
        detail TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS audit_campaign ON audit (campaign_id, at)",
]

OUTCOME_COLUMNS = ("message_id, campaign_id, channel, recipient_id, outcome, event, stage, reason,"
                   " stop_command_id, handed_at, occurred_at")
ON_OUTCOME_CONFLICT = """
ON CONFLICT (message_id) DO UPDATE SET
    outcome = excluded.outcome, event = excluded.event, stage = excluded.stage,
    reason = excluded.reason, stop_command_id = excluded.stop_command_id,
    handed_at = excluded.handed_at, occurred_at = excluded.occurred_at,
    stored_at = excluded.stored_at
WHERE outcomes.outcome <> 'sent' AND excluded.outcome = 'sent'
"""
INSERT_OUTCOME = (f"INSERT INTO outcomes ({OUTCOME_COLUMNS}, stored_at)"
                  " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
UPSERT_OUTCOME = INSERT_OUTCOME + ON_OUTCOME_CONFLICT
INSERT_NEW_OUTCOME = INSERT_OUTCOME + " ON CONFLICT (message_id) DO NOTHING"
# PostgreSQL: a batch is COPYed into this per-session staging table, then merged in one statement.
STAGING = ("CREATE TEMPORARY TABLE IF NOT EXISTS outcomes_in (LIKE outcomes INCLUDING DEFAULTS)"
           " ON COMMIT DELETE ROWS")
MERGE_STAGED = (f"INSERT INTO outcomes ({OUTCOME_COLUMNS}, stored_at)"
                f" SELECT {OUTCOME_COLUMNS}, stored_at FROM outcomes_in" + ON_OUTCOME_CONFLICT)
UPSERT_CAMPAIGN = """
INSERT INTO campaigns (campaign_id, state, channels, planned, updated_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (campaign_id) DO UPDATE SET state = excluded.state, channels = excluded.channels,
    planned = excluded.planned, updated_at = excluded.updated_at
WHERE excluded.updated_at >= campaigns.updated_at
"""
INSERT_STOP = """
INSERT INTO stops (command_id, campaign_id, channels, reason, requested_by, requested_at)
VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (command_id) DO NOTHING
"""
FLAG_CONFLICT = "UPDATE outcomes SET conflict = 1 WHERE message_id = ?"
FLAG_RECEIPT_OVER_CANCEL = "UPDATE outcomes SET receipt_over_cancel = 1 WHERE message_id = ?"
# Added to stores created before: (column, definition).
ADDED_COLUMNS = [("conflict", "SMALLINT NOT NULL DEFAULT 0"),
                 ("receipt_over_cancel", "SMALLINT NOT NULL DEFAULT 0")]
AUDIT_COLUMNS = ("audit_id", "at", "action", "outcome", "actor", "role", "via", "source", "principal",
                 "campaign_id", "command_id", "reason", "channels", "detail")
INSERT_AUDIT = f"""
INSERT INTO audit ({", ".join(AUDIT_COLUMNS)}) VALUES ({", ".join("?" for _ in AUDIT_COLUMNS)})
ON CONFLICT (audit_id) DO NOTHING
"""
INSERT_ACK = """
INSERT INTO acks (command_id, process_id, applied_at) VALUES (?, ?, ?)
ON CONFLICT (command_id, process_id) DO NOTHING
"""


@dataclass(slots=True)  # not frozen: the sink makes one per event, a frozen one costs 4 times more
class OutcomeRow:
    message_id: str
    campaign_id: str
    channel: str
    recipient_id: str
    outcome: str
    event: str
    stage: str | None
    reason: str | None
    stop_command_id: str | None
    handed_at: int | None
    occurred_at: int


@dataclass
class Batch:
    """Everything one consumed batch contributes, written in one store transaction."""

    outcomes: list[OutcomeRow]
    campaigns: list[dict[str, Any]]
    stops: list[dict[str, Any]]
    acks: list[dict[str, Any]]
    audit: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class WriteResult:
    inserted_sent: int
    inserted_not_sent: int
    conflicts: int
    inserted_failed: int = 0
    # Messages a stop's cancel counted notSent whose delivery receipt (sent) came all the same.
    receipts_over_cancel: int = 0

    @property
    def inserted(self) -> int:
        return self.inserted_sent + self.inserted_not_sent + self.inserted_failed


SELECT_STORED = ("SELECT message_id, outcome, stage, reason, conflict + receipt_over_cancel"
                 " FROM outcomes")


class Stored(NamedTuple):
    """What the store held for a message before a write."""

    outcome: str
    kind: str  # the outcome, with a stop's cancel at the provider told apart (_kind)
    flagged: bool  # a conflict or a receipt over a cancel was counted for it already


def _kind(outcome: str, stage: str | None, reason: str | None) -> str:
    """An outcome, with a stop's cancel at the provider (which a later sent overrides, as
    expected) told apart from every other notSent."""
    if outcome == NOT_SENT and stage == STAGE_PROVIDER and (reason or "").startswith(CANCEL_REASONS):
        return CANCEL_KIND
    return outcome


def _kind_of(row: OutcomeRow) -> str:
    return _kind(row.outcome, row.stage, row.reason)


def _stored(rows: Iterable[tuple[Any, ...]]) -> dict[str, Stored]:
    return {m: Stored(outcome, _kind(outcome, stage, reason), bool(flags))
            for m, outcome, stage, reason, flags in rows}


def _chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class OutcomeStore:
    """SQL shared by both engines; subclasses open the connection and translate placeholders."""

    placeholder = "?"

    def __init__(self, connection: Any) -> None:
        self._db = connection
        with self._transaction() as cur:
            for statement in SCHEMA:
                cur.execute(statement)
            columns = self._columns(cur, "outcomes")
            for column, definition in ADDED_COLUMNS:  # a store created before these flags
                if column not in columns:
                    cur.execute(f"ALTER TABLE outcomes ADD COLUMN {column} {definition}")

    # -- engine hooks ------------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def _transaction(self) -> Any:
        raise NotImplementedError

    def _columns(self, cur: Any, table: str) -> set[str]:
        raise NotImplementedError

    def close(self) -> None:
        self._db.close()

    # -- writes ------------------------------------------------------------------------------

    def write(self, batch: Batch) -> WriteResult:
        """Apply a batch idempotently; returns new outcomes, the messages newly found with both
        a sent and a notSent, and of those the ones whose notSent was a stop's cancel at the
        provider (each such message is counted once, however often replayed)."""
        now = now_ms()
        latest: dict[str, OutcomeRow] = {}
        mixed: dict[str, set[str]] = {}  # ids with more than one outcome in this batch: rare
        for row in batch.outcomes:
            held = latest.get(row.message_id)
            if held is None:
                latest[row.message_id] = row
                continue
            if held.outcome != row.outcome:
                mixed.setdefault(row.message_id, {_kind_of(held)}).add(_kind_of(row))
            if held.outcome != SENT and row.outcome == SENT:
                latest[row.message_id] = row
        with self._transaction() as cur:
            existing = self._write_outcomes(cur, [
                (r.message_id, r.campaign_id, r.channel, r.recipient_id, r.outcome, r.event, r.stage,
                 r.reason, r.stop_command_id, r.handed_at, r.occurred_at, now)
                for r in latest.values()
            ])
            # Two outcomes in this batch, or one that differs from the stored one, not flagged yet.
            both = {m: kinds for m, kinds in mixed.items() if m not in existing}
            for m, stored in existing.items():
                if not stored.flagged and (m in mixed or stored.outcome != latest[m].outcome):
                    both[m] = {*mixed.get(m, {_kind_of(latest[m])}), stored.kind}
            over_cancel = [m for m, kinds in both.items() if kinds == {SENT, CANCEL_KIND}]
            conflicted = [m for m, kinds in both.items() if kinds != {SENT, CANCEL_KIND}]
            if conflicted:
                cur.executemany(self._sql(FLAG_CONFLICT), [(m,) for m in conflicted])
            if over_cancel:
                cur.executemany(self._sql(FLAG_RECEIPT_OVER_CANCEL), [(m,) for m in over_cancel])
            if batch.campaigns:
                cur.executemany(self._sql(UPSERT_CAMPAIGN), [
                    (c["campaign_id"], c["state"], json.dumps(c["channels"]),
                     json.dumps(c["planned"]), c["updated_at"]) for c in batch.campaigns
                ])
            if batch.stops:
                cur.executemany(self._sql(INSERT_STOP), [
                    (s["command_id"], s["campaign_id"], json.dumps(s["channels"]), s["reason"],
                     s["requested_by"], s["requested_at"]) for s in batch.stops
                ])
            if batch.acks:
                cur.executemany(self._sql(INSERT_ACK), [
                    (a["command_id"], a["process_id"], a["applied_at"]) for a in batch.acks
                ])
            if batch.audit:
                cur.executemany(self._sql(INSERT_AUDIT), [
                    tuple(json.dumps(e[c]) if c == "channels" else e[c] for c in AUDIT_COLUMNS)
                    for e in batch.audit
                ])
        new = [row.outcome for m, row in latest.items() if m not in existing]
        return WriteResult(new.count(SENT), new.count(NOT_SENT), len(conflicted), new.count(FAILED),
                           len(over_cancel))

    def _write_outcomes(self, cur: Any, rows: list[tuple[Any, ...]]) -> dict[str, Stored]:
        """Upsert the rows (columns of ``UPSERT_OUTCOME``); returns what each id had before, for
        the ids already stored.

        Rows go in ordered by message id, so the primary key's index is written page after page
        rather than all over. A batch of messages none of which is stored yet (the rule: each
        event arrives once) is one plain insert; only when one of them was stored before (a
        replay) is the insert undone and the batch looked up and upserted."""
        rows.sort()  # by message id: ids are unique in a batch, so nothing else is compared
        cur.execute("SAVEPOINT outcomes_new")
        cur.executemany(self._sql(INSERT_NEW_OUTCOME), rows)
        if cur.rowcount == len(rows):
            cur.execute("RELEASE outcomes_new")
            return {}
        cur.execute("ROLLBACK TO outcomes_new")
        cur.execute("RELEASE outcomes_new")
        existing: dict[str, Stored] = {}
        for chunk in _chunks([row[0] for row in rows]):
            marks = ",".join(self.placeholder for _ in chunk)
            cur.execute(f"{SELECT_STORED} WHERE message_id IN ({marks})", list(chunk))
            existing.update(_stored(cur.fetchall()))
        cur.executemany(self._sql(UPSERT_OUTCOME), rows)
        return existing

    # -- reads -------------------------------------------------------------------------------

    def _query(self, statement: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._transaction() as cur:
            values = list(args)
            if values:
                cur.execute(self._sql(statement), values)
            else:
                cur.execute(statement)  # no placeholders: psycopg must not parse the '%'s
            return list(cur.fetchall())

    def counts(self, campaign_id: str) -> list[tuple[str, str, str | None, int]]:
        """(channel, outcome, stage, count) rows of a campaign."""
        return [(r[0], r[1], r[2], int(r[3])) for r in self._query(
            "SELECT channel, outcome, stage, COUNT(*) FROM outcomes WHERE campaign_id = ?"
            " GROUP BY channel, outcome, stage", (campaign_id,))]

    def outcomes(self, campaign_id: str) -> int:
        """How many messages of the campaign have their outcome stored."""
        return int(self._query("SELECT COUNT(*) FROM outcomes WHERE campaign_id = ?",
                               (campaign_id,))[0][0])

    def provider_cancels(self, campaign_id: str) -> dict[str, tuple[int, int]]:
        """Per channel, the notSent messages a provider held on a stop: (cancelled there, as the
        provider proved; cancel requested there and not confirmed)."""
        return {r[0]: (int(r[1]), int(r[2])) for r in self._query(
            "SELECT channel, SUM(CASE WHEN reason LIKE ? THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN reason LIKE ? THEN 1 ELSE 0 END) FROM outcomes"
            " WHERE campaign_id = ? AND outcome = 'not_sent' AND stage = ? GROUP BY channel",
            (f"{REASON_CANCELLED}%", f"{REASON_CANCEL_UNCONFIRMED}%", campaign_id, STAGE_PROVIDER))}

    def campaign(self, campaign_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT state, channels, planned, updated_at FROM campaigns"
                           " WHERE campaign_id = ?", (campaign_id,))
        if not rows:
            return None
        state, channels, planned, updated_at = rows[0]
        return {"state": state, "channels": json.loads(channels), "planned": json.loads(planned),
                "updated_at": updated_at}

    def campaigns(self) -> list[str]:
        return [r[0] for r in self._query(
            "SELECT campaign_id FROM campaigns UNION SELECT campaign_id FROM stops ORDER BY 1")]

    def stops(self, campaign_id: str) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT s.command_id, s.channels, s.reason, s.requested_by, s.requested_at,"
            " COUNT(a.process_id), MAX(a.applied_at) FROM stops s"
            " LEFT JOIN acks a ON a.command_id = s.command_id WHERE s.campaign_id = ?"
            " GROUP BY s.command_id, s.channels, s.reason, s.requested_by, s.requested_at"
            " ORDER BY s.requested_at", (campaign_id,))
        return [{"command_id": r[0], "channels": json.loads(r[1]), "reason": r[2],
                 "requested_by": r[3], "requested_at": r[4], "acks": int(r[5]),
                 "last_applied_at": r[6]} for r in rows]

    def audit(self, campaign_id: str | None = None, limit: int = 1000,
              before: tuple[int, str] | None = None) -> list[dict[str, Any]]:
        """Audit events, oldest first: the latest ``limit`` (of one campaign, or of all) before
        ``before`` (at, audit_id), the last event of the page after it."""
        columns = ", ".join(AUDIT_COLUMNS)
        where: list[str] = []
        args: list[Any] = []
        if campaign_id is not None:
            where.append("campaign_id = ?")
            args.append(campaign_id)
        if before is not None:
            where.append("(at < ? OR (at = ? AND audit_id < ?))")
            args += [before[0], before[0], before[1]]
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(f"SELECT {columns} FROM (SELECT {columns} FROM audit{condition}"
                           f" ORDER BY at DESC, audit_id DESC LIMIT {int(limit)}) latest"
                           " ORDER BY at, audit_id", args)
        entries = [dict(zip(AUDIT_COLUMNS, row, strict=True)) for row in rows]
        for entry in entries:
            entry["channels"] = json.loads(entry["channels"])
        return entries

    def last_halted_at(self, campaign_id: str) -> int | None:
        rows = self._query("SELECT MAX(stored_at) FROM outcomes WHERE campaign_id = ?"
                           " AND outcome = 'not_sent'", (campaign_id,))
        return rows[0][0] if rows else None

    def handoffs_after_confirmation(self) -> dict[str, int]:
        """Sent messages handed to a provider after every acknowledgement of a stop covering
        their channel was in: the leak the product promises never happens (per channel)."""
        rows = self._query(
            "SELECT o.channel, COUNT(*) FROM outcomes o"
            " JOIN (SELECT s.campaign_id, s.channels, MAX(a.applied_at) AS confirmed_at"
            "       FROM stops s JOIN acks a ON a.command_id = s.command_id"
            "       GROUP BY s.command_id, s.campaign_id, s.channels) c"
            " ON c.campaign_id = o.campaign_id"
            # Every stored outcome names one of these channels: naming them lets the campaign
            # index seek to the sent rows instead of reading all of the campaign's (checked every
            # few seconds by the sink while a stop brings hundreds of thousands of notSent rows).
            f" WHERE o.channel IN ({', '.join(repr(c) for c in CHANNELS)}) AND o.outcome = 'sent'"
            " AND o.handed_at > c.confirmed_at"
            " AND (c.channels = '[]' OR c.channels LIKE '%\"' || o.channel || '\"%')"
            " GROUP BY o.channel")
        return {r[0]: int(r[1]) for r in rows}

    def timeline(self, campaign_id: str, buckets: int) -> tuple[int, int, list[tuple[int, str, int]]]:
        """Outcomes over time in at most ``buckets`` equal slices of the span from the first to
        the last outcome: (start ms, slice width ms, [(slice index, outcome, count)])."""
        first, last = self._query("SELECT MIN(occurred_at), MAX(occurred_at) FROM outcomes"
                                  " WHERE campaign_id = ?", (campaign_id,))[0]
        if first is None:
            return 0, 0, []
        width = max(-(-(int(last) - int(first) + 1) // buckets), 1)
        rows = self._query("SELECT (occurred_at - ?) / ?, outcome, COUNT(*) FROM outcomes"
                           " WHERE campaign_id = ? GROUP BY 1, 2 ORDER BY 1",
                           (int(first), width, campaign_id))
        return int(first), width, [(int(r[0]), r[1], int(r[2])) for r in rows]

    def export(self, campaign_id: str, outcome: str, channel: str | None) -> Iterator[tuple[Any, ...]]:
        statement = ("SELECT message_id, channel, recipient_id, outcome, stage, reason, occurred_at"
                     " FROM outcomes WHERE campaign_id = ? AND outcome = ?")
        args: list[Any] = [campaign_id, outcome]
        if channel:
            statement += " AND channel = ?"
            args.append(channel)
        yield from self._query(statement + " ORDER BY channel, message_id", args)


class _SQLiteTransaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Cursor:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db.cursor()

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


class SQLiteStore(OutcomeStore):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # Copy the write-ahead log into the database every 40 MB instead of every 4: a stop's
        # hundreds of thousands of rows rewrite the same index pages, copied (and synced) once
        # per checkpoint. Durability is the log's, unchanged.
        db.execute("PRAGMA wal_autocheckpoint=10000")
        self.path = path
        super().__init__(db)

    def _transaction(self) -> Any:
        return _SQLiteTransaction(self._db)

    def _columns(self, cur: Any, table: str) -> set[str]:
        cur.execute(f"PRAGMA table_info({table})")
        return {row[1] for row in cur.fetchall()}


class PostgresStore(OutcomeStore):
    placeholder = "%s"

    def __init__(self, dsn: str) -> None:
        import psycopg

        try:
            db = psycopg.connect(dsn, autocommit=True)  # transactions are explicit blocks
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}".strip()) from exc
        super().__init__(db)

    def _transaction(self) -> Any:
        return _PostgresTransaction(self._db)

    def _write_outcomes(self, cur: Any, rows: list[tuple[Any, ...]]) -> dict[str, Stored]:
        """COPY into the staging table and merge from there: no round trip per row."""
        cur.execute(STAGING)
        with cur.copy(f"COPY outcomes_in ({OUTCOME_COLUMNS}, stored_at) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(f"{SELECT_STORED} WHERE message_id = ANY(%s)", ([row[0] for row in rows],))
        existing = _stored(cur.fetchall())
        cur.execute(MERGE_STAGED)
        return existing

    def _columns(self, cur: Any, table: str) -> set[str]:
        cur.execute("SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = %s", (table,))
        return {row[0] for row in cur.fetchall()}


class _PostgresTransaction:
    def __init__(self, db: Any) -> None:
        self.db = db
        self.block: Any = None

    def __enter__(self) -> Any:
        self.block = self.db.transaction()
        self.block.__enter__()
        self.cursor = self.db.cursor()
        return self.cursor

    def __exit__(self, *exc: Any) -> None:
        self.cursor.close()
        self.block.__exit__(*exc)


def open_store(settings: Settings) -> OutcomeStore:
    if settings.analytics_dsn is not None:
        return PostgresStore(settings.analytics_dsn.get_secret_value())
    return SQLiteStore(settings.data_dir / "analytics.sqlite")
