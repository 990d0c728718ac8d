"""The simulated provider: accepts messages, "processes" each for ``delay_s``, then delivers it.

It stands for a provider that outlives estop's processes: its queue is a SQLite file of its own
in the data folder (``providers/simulated-<channel>.sqlite``), apart from the dispatcher's
outbox. Like a real provider it does not deduplicate: a message submitted twice is held twice,
so tests can see that the dispatcher never submits one twice. It can cancel by message id.

Faults (``ESTOP_PROVIDER_ERROR_RATE``, ``ESTOP_PROVIDER_TIMEOUT_RATE``): a handoff may be refused
(not accepted) or time out (accepted or not, half and half: the caller cannot tell, as with a
real provider whose answer was lost)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self
from urllib.parse import SplitResult

from streams import localdb
from streams.clock import now_ms
from streams.providers.base import (
    Accepted,
    CancelCapability,
    CancelStatus,
    Delivery,
    Handoff,
    SubmitStatus,
    Submitted,
)
from streams.settings import Settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    provider_id TEXT PRIMARY KEY,
    message_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    state TEXT NOT NULL,
    accepted_at INTEGER NOT NULL,
    due_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_message ON queue (message_id);
CREATE INDEX IF NOT EXISTS queue_due ON queue (state, due_at);
CREATE TABLE IF NOT EXISTS delivered (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    provider_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    at INTEGER NOT NULL
);
"""
QUEUED, DELIVERED, CANCELLED = "queued", "delivered", "cancelled"
READ_LIMIT = 20000  # deliveries returned per call


def queue_path(data_dir: Path, channel: str) -> Path:
    return data_dir / "providers" / f"simulated-{channel}.sqlite"



class SimulatedAdapter:
    cancel_capability = CancelCapability.BY_MESSAGE_ID
    receipt_source = "the simulated provider's delivery table (providers/simulated-<channel>.sqlite)"

    def __init__(self, path: Path, channel: str, delay_s: float, error_rate: float = 0.0,
                 timeout_rate: float = 0.0) -> None:
        self.channel = channel
        self.path = path
        self.delay_ms = int(delay_s * 1000)
        self.error_rate = error_rate
        self.timeout_rate = timeout_rate
        self._random = random.Random()
        self._db = localdb.connect(path)
        self._db.executescript(SCHEMA)
        self._cursor = 0  # the last delivery reported (from the start after each open)

    @classmethod
    def from_url(cls, settings: Settings, channel: str, url: SplitResult) -> Self:
        """``simulated``: a queue in the data folder, one per channel (the URL has no options)."""
        return cls(queue_path(settings.data_dir, channel), channel, settings.provider_delay_s,
                   settings.provider_error_rate, settings.provider_timeout_rate)

    def submit(self, handoffs: Sequence[Handoff]) -> list[Submitted]:
        now = now_ms()
        answers: list[Submitted] = []
        rows: list[tuple[str, str, str, int, int]] = []
        for handoff in handoffs:
            draw = self._random.random()
            if draw < self.error_rate:
                answers.append(Submitted(handoff.message_id, SubmitStatus.REFUSED, error="error"))
                continue
            provider_id = uuid.uuid4().hex
            if draw < self.error_rate + self.timeout_rate:
                answers.append(Submitted(handoff.message_id, SubmitStatus.UNKNOWN, error="timeout"))
                if self._random.random() < 0.5:
                    continue  # the request was lost on its way; otherwise only the answer was
            else:
                answers.append(Submitted(handoff.message_id, SubmitStatus.ACCEPTED, provider_id))
            rows.append((provider_id, handoff.message_id, handoff.campaign_id, now,
                         now + self.delay_ms))
        if rows:
            with localdb.write(self._db) as db:
                db.executemany("INSERT INTO queue (provider_id, message_id, campaign_id, state,"
                               " accepted_at, due_at) VALUES (?, ?, ?, 'queued', ?, ?)", rows)
        return answers

    def resume(self, accepted: Sequence[Accepted]) -> None:
        """Deliveries come from the provider's own queue file, which remembers these."""

    def find(self, handoffs: Sequence[Handoff]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk, marks in localdb.chunks([h.message_id for h in handoffs]):
            found.update((str(m), str(p)) for m, p in self._db.execute(
                f"SELECT message_id, provider_id FROM queue WHERE message_id IN ({marks})", chunk))
        return found

    def cancel(self, campaign_id: str, provider_ids: Mapping[str, str]) -> dict[str, CancelStatus]:
        by_provider = {p: m for m, p in provider_ids.items()}
        answers = dict.fromkeys(provider_ids, CancelStatus.UNKNOWN)
        with localdb.write(self._db) as db:
            for chunk, marks in localdb.chunks(list(by_provider)):
                states = db.execute(f"SELECT provider_id, state FROM queue WHERE provider_id IN"
                                    f" ({marks}) AND campaign_id = ?", [*chunk, campaign_id]).fetchall()
                for provider_id, state in states:
                    # Cancelled before (by a previous owner of the outbox that crashed before
                    # recording it) is cancelled all the same: the queue proves it.
                    answers[by_provider[provider_id]] = (CancelStatus.CANCELLED
                                                         if state in (QUEUED, CANCELLED)
                                                         else CancelStatus.TOO_LATE)
                db.execute(f"UPDATE queue SET state = 'cancelled' WHERE provider_id IN ({marks})"
                           " AND state = 'queued'", chunk)
        return answers

    def deliveries(self) -> list[Delivery]:
        self._deliver_due()
        rows = self._db.execute("SELECT seq, provider_id, message_id, at FROM delivered"
                                " WHERE seq > ? ORDER BY seq LIMIT ?",
                                (self._cursor, READ_LIMIT)).fetchall()
        if rows:
            self._cursor = rows[-1][0]
        return [Delivery(m, p, True, at) for _, p, m, at in rows]

    def _deliver_due(self) -> None:
        """The provider's own clock: messages whose processing time is over are delivered."""
        now = now_ms()
        with localdb.write(self._db) as db:
            db.execute("INSERT INTO delivered (provider_id, message_id, at) SELECT provider_id,"
                       " message_id, ? FROM queue WHERE state = 'queued' AND due_at <= ?", (now, now))
            db.execute("UPDATE queue SET state = 'delivered' WHERE state = 'queued' AND due_at <= ?",
                       (now,))

    def close(self) -> None:
        self._db.close()


class SimulatedQueueStats:
    """Read-only questions tests ask of a simulated provider: what it holds, and how often."""

    def __init__(self, data_dir: Path, channel: str) -> None:
        self.path = queue_path(data_dir, channel)

    def copies(self, campaign_id: str) -> int:
        """Messages of the campaign the provider holds more than once (must stay 0)."""
        rows = localdb.query(self.path, "SELECT COUNT(*) FROM (SELECT message_id FROM queue"
                             " WHERE campaign_id = ? GROUP BY message_id HAVING COUNT(*) > 1)",
                             (campaign_id,))
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def held(self, campaign_id: str) -> set[str]:
        return {str(r[0]) for r in localdb.query(
            self.path, "SELECT message_id FROM queue WHERE campaign_id = ?", (campaign_id,))}
