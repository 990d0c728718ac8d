"""Postfix's log as the MTA agent reads it: which queue id carries which message, which messages
Postfix queued, and what became of them, followed across rotations.

* Deliveries: ``status=sent`` delivered; ``bounced`` and ``expired`` undelivered. Each queue id
  is tied to its message by the ``X-Estop-Message-Id`` line the instance's header_checks rule
  logs (``streams.mta.postfix``).
* A message whose end of data the receiving server never answered ("message may be sent more
  than once") may already be with the recipient: when a stop then deletes it (a ``postsuper``
  removal), the removal is its delivery, never a cancellation.
* ``postfix logrotate`` renames the log, has ``postlogd`` open a new one on its next line, and
  compresses the old one. The follower keeps the old file open, reads it to its end once the new
  one exists (nothing is written to the old one after that), then goes on with the new one.

A position (the file's inode and the offset after the last whole line read) says how far the
log was read; ``LogFollower.resume`` reads up to a position again without reporting deliveries,
so what the log says about earlier messages (their queue ids) is known after a restart."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from streams.clock import now_ms
from streams.providers.base import Delivery

log = logging.getLogger(__name__)

# Postfix log lines of interest, e.g.
#   cleanup[9]: 4jg5..: info: header X-Estop-Message-Id: c1:email:1 from localhost[...]; ...
#   qmgr[7]: 4jg5..: from=<a@estop.test>, size=381, nrcpt=1 (queue active)
#   smtp[8]: 4jg5..: to=<r1@example.test>, relay=..., dsn=2.0.0, status=sent (250 2.0.0 Ok)
#   qmgr[7]: 4jg5..: from=<a@estop.test>, status=expired, returned to sender
#   postsuper[9]: 4jg5..: removed
LOG_LINE = re.compile(r"^(\w{3} +\d+ [\d:]{8}) \S+ postfix/(\w+)\[\d+\]: ([0-9A-Za-z]+): (.*)$")
HEADER_INFO = re.compile(r"^info: header X-Estop-Message-Id: (\S+) from ")
STATUS = re.compile(r"status=(sent|bounced|expired)(?: \((.*)\))?")
#   smtp[8]: 4jg5..: to=<..>, ..., status=deferred (lost connection with ..[..] while sending end
#   of data -- message may be sent more than once)
# but not the messages Postfix then holds back from that server without sending them:
#   error[9]: 4jg6..: ..., status=deferred (delivery temporarily suspended: lost connection ...)
UNCERTAIN = re.compile(r"status=deferred \((?!delivery temporarily suspended).*"
                       r"message may be sent more than once")
MAYBE_SENT = ("sent: the receiving server took it without answering its end of data; "
              "deleted from the queue by the stop, so it was not sent again")
MARKER = re.compile(r"estop-sync-[0-9a-f]{32}")
READ_CHUNK = 1 << 20  # bytes read at a time: one batch of lines


class PostfixLog:
    """What the log said so far, line by line."""

    def __init__(self) -> None:
        self.message_of: dict[str, str] = {}  # queue id -> message id
        self.queued: dict[str, str] = {}  # message id -> queue id, once qmgr took it
        self.uncertain: set[str] = set()  # message ids a receiving server may already have
        self.deleted: dict[str, str] = {}  # message id -> queue id postsuper removed undelivered
        self.markers: set[str] = set()  # sync markers seen (see MtaAgent.sync)
        self._year = datetime.now().year

    def line(self, text: str) -> Delivery | None:
        """Take in one line; the delivery it reports, if any."""
        match = LOG_LINE.match(text)
        if match is None:
            marker = MARKER.search(text)
            if marker is not None:
                self.markers.add(marker.group(0))
            return None
        stamp, daemon, queue_id, rest = match.groups()
        if daemon == "cleanup":
            info = HEADER_INFO.match(rest)
            if info is not None:
                self.message_of[queue_id] = info.group(1)
            return None
        message_id = self.message_of.get(queue_id)
        if message_id is None:
            return None
        if daemon == "qmgr" and rest.startswith("from=") and "(queue active)" in rest:
            self.queued[message_id] = queue_id
        if daemon == "smtp" and UNCERTAIN.search(rest):
            self.uncertain.add(message_id)
            return None
        if daemon == "postsuper" and rest == "removed":
            if message_id in self.uncertain:
                return Delivery(message_id, queue_id, True, self._when(stamp), MAYBE_SENT)
            self.deleted[message_id] = queue_id
            return None
        status = STATUS.search(rest)
        if status is None:
            return None
        return Delivery(message_id, queue_id, status.group(1) == "sent", self._when(stamp),
                        f"{status.group(1)}: {status.group(2) or ''}".strip())

    def _when(self, stamp: str) -> int:
        try:
            parsed = datetime.strptime(f"{self._year} {stamp}", "%Y %b %d %H:%M:%S")
        except ValueError:
            return now_ms()
        return int(parsed.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class LogPosition:
    """How far a log file was read: its inode, and the offset after the last whole line (inode
    0: the start of the current log)."""

    inode: int
    offset: int


@dataclass(frozen=True, slots=True)
class Read:
    """A delivery the log reported, and the position right after its line."""

    delivery: Delivery
    position: LogPosition


class LogFollower:
    """Reads the log at ``path`` forward, line by line, into a ``PostfixLog``, across rotations.
    Not thread-safe: one thread reads."""

    def __init__(self, path: Path, state: PostfixLog) -> None:
        self.path = path
        self.state = state
        self._handle: BinaryIO | None = None
        self._inode = 0
        self._offset = 0
        self._partial = b""

    @property
    def position(self) -> LogPosition:
        return LogPosition(self._inode, self._offset)

    def resume(self, position: LogPosition | None) -> None:
        """Start where ``position`` says (None: at the start of the current log). The lines up to
        it are read again for what they say, their deliveries not reported; the file it names is
        the current log or a rotated one beside it that is not compressed yet."""
        self.close()
        if position is None or position.inode == 0:
            self._open_current()
            return
        for candidate in [self.path, *sorted(self.path.parent.glob(f"{self.path.name}.*"))]:
            try:
                if candidate.stat().st_ino == position.inode:
                    self._open(candidate)
                    break
            except FileNotFoundError:
                continue
        else:
            log.warning("the log file the agent had read to offset %d (inode %d) is gone (rotated "
                        "and compressed while the agent was down?): deliveries Postfix logged there "
                        "after that point cannot be shipped", position.offset, position.inode)
            self._open_current()
            return
        size = os.fstat(self._fileno()).st_size
        if size < position.offset:
            log.warning("%s is shorter (%d bytes) than where the agent had read it to (%d): "
                        "reading it again from its start", self.path, size, position.offset)
            return
        while self._offset < position.offset:
            self._chunk(min(READ_CHUNK, position.offset - self._offset))

    def read(self) -> list[Read]:
        """The deliveries in the lines logged since the last call (about READ_CHUNK bytes of
        them, more when a rotation is found: the old file is read to its end first)."""
        if self._handle is None and not self._open_current():
            return []
        found, size = self._chunk(READ_CHUNK)
        if size == 0 and self._rotated():
            # The new file exists, so nothing more is written to the old one: read it to its end.
            while True:
                more, size = self._chunk(READ_CHUNK)
                found += more
                if not size:
                    break
            if self._partial:
                log.warning("the rotated log ends in an unfinished line, ignored: %r", self._partial)
            old = self.position
            self.close()
            self._inode, self._offset = 0, 0  # the start of the current log, once it exists
            self._open_current()
            log.info("Postfix's log was rotated: the old file was read to its end (%d bytes), "
                     "reading the new one", old.offset)
        return found

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._partial = b""

    # -- files ---------------------------------------------------------------------------------

    def _open_current(self) -> bool:
        try:
            self._open(self.path)
        except FileNotFoundError:
            return False  # after a rotation, until Postfix logs its next line
        return True

    def _open(self, path: Path) -> None:
        handle = path.open("rb")
        self._handle = handle
        self._inode = os.fstat(handle.fileno()).st_ino
        self._offset = 0
        self._partial = b""

    def _fileno(self) -> int:
        assert self._handle is not None
        return self._handle.fileno()

    def _rotated(self) -> bool:
        """The path names another file now (renamed by a rotation), or this one was truncated."""
        try:
            current = self.path.stat()
        except FileNotFoundError:
            return False  # renamed; the new file appears with Postfix's next line
        if current.st_ino != self._inode:
            return True
        if current.st_size < self._offset:
            log.warning("%s was truncated: reading it again from its start", self.path)
            assert self._handle is not None
            self._handle.seek(0)
            self._offset, self._partial = 0, b""
        return False

    def _chunk(self, limit: int) -> tuple[list[Read], int]:
        """Read up to ``limit`` bytes and take in their whole lines: the deliveries they report
        (each with the position after its line), and how many bytes were read."""
        assert self._handle is not None
        data = self._handle.read(limit)
        if not data:
            return [], 0
        size = len(data)
        data, self._partial = self._partial + data, b""
        found: list[Read] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._offset += end + 1 - start
            delivery = self.state.line(data[start:end].decode(errors="replace"))
            if delivery is not None:
                found.append(Read(delivery, self.position))
            start = end + 1
        self._partial = data[start:]
        return found, size
