"""SQLite files of estop's own in the data folder (the dispatcher's outbox, the simulated
providers' queues, the SQLite analytics store): one way to open them and to write to them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

CHUNK = 500  # ids per IN (...) clause: well under SQLite's limit on bound parameters


def connect(path: Path) -> sqlite3.Connection:
    """Autocommit mode (every write goes through ``write``, an explicit BEGIN IMMEDIATE); WAL so
    readers never wait for a writer; usable from several threads one call at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


@contextmanager
def write(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, its lock taken up front: reads in it see what it then changes
    (several processes may share one file)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def query(path: Path, sql: str, args: Sequence[object] = ()) -> list[tuple[object, ...]]:
    """A read-only query of a file another process writes; no rows when it does not exist yet."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def chunks(ids: Sequence[str]) -> Iterator[tuple[Sequence[str], str]]:
    """``ids`` in slices, each with its placeholders for an IN (...) clause."""
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start:start + CHUNK]
        yield chunk, ",".join("?" * len(chunk))
