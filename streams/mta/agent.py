"""The MTA agent: a small long-running process beside the private Postfix (`estop mta agent`;
`estop mta start` runs it in the background), so that a dispatcher reaches the MTA over the
network only and needs nothing of Postfix on its own host.

* **Receipts.** It follows Postfix's log (``streams.mta.maillog``, across rotations) and ships
  every delivery to ``dispatch.email.receipts`` with a ``ReceiptShipper``, keyed by the message
  id the log ties to the queue id, so each receipt lands on the partition its message has on
  ``dispatch.email``, where the dispatcher that owns it reads it. How far it shipped is kept in a
  position file in the MTA's folder, written only after Kafka acknowledged the batch: a restart
  reads the log up to there again without shipping, then ships the rest, so no receipt is lost
  and at most the one batch in flight at a crash is shipped twice (the owner applies a receipt
  once). While Kafka is away the agent retries, says so in its log, and keeps serving the API.
* **Find and cancel** (``streams.mta.agent_api`` serves them over HTTP): find says which of a
  dispatcher's messages in doubt Postfix queued, after a ``postlog`` marker proves the log has
  been read up to now; cancel holds the queue ids (``postsuper -h``: held mail is never
  delivered), checks with ``postcat`` that each still carries its own ``X-Estop-Message-Id``
  (queue ids are reused by Postfix), deletes those (``postsuper -d``) and releases any other.
  A message the receiving server may already have ("may be sent more than once") is deleted but
  answered too late: its removal is shipped as its delivery. A message no longer queued is too
  late, unless the log shows that postsuper removed it undelivered (an earlier cancel whose
  answer was lost): that one is cancelled, so a cancel may be asked again."""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from confluent_kafka import KafkaException
from pydantic import SecretStr

from streams.dispatch.receipts import ReceiptShipper
from streams.exceptions import EstopError
from streams.kafka.clients import process_id
from streams.mta.exceptions import MtaError
from streams.mta.maillog import LogFollower, LogPosition, PostfixLog, Read
from streams.mta.postfix import POSTCAT, POSTLOG, POSTSUPER, PostfixInstance
from streams.providers.base import CancelStatus
from streams.security.credentials import read_env, write_env
from streams.serde import serdes_for
from streams.settings import Settings

log = logging.getLogger(__name__)

CHANNEL = "email"
TOKEN_VARIABLE = "ESTOP_MTA_AGENT_TOKEN"
SHIP_BATCH = 5000  # receipts per Kafka batch: at most this many are shipped twice after a crash
RETRY_S = 5.0  # wait before shipping again after Kafka did not acknowledge
IDLE_S = 0.1  # how often the log is read when nothing new came
SYNCING_S = 0.01  # ... while a find or cancel waits for its marker
SYNC_TIMEOUT_S = 10.0
CHUNK = 1000  # queue ids per postsuper / postcat call
HELD = re.compile(r"^postsuper: ([0-9A-Za-z]+): placed on hold", re.MULTILINE)
REMOVED = re.compile(r"^postsuper: ([0-9A-Za-z]+): removed", re.MULTILINE)
SECTION = re.compile(r"^\*\*\* ENVELOPE RECORDS \w+/([0-9A-Za-z]+) \*\*\*$")


class AgentFiles:
    """The agent's files, in ``<mta>/agent/``: pid and log (when run in the background), its
    token, and one position file per receipts topic it ships to."""

    def __init__(self, mta_home: Path) -> None:
        self.folder = mta_home.resolve() / "agent"
        self.pid = self.folder / "agent.pid"
        self.log = self.folder / "agent.log"
        self.token = self.folder / "token.env"

    def position(self, topic: str) -> Path:
        return self.folder / f"position-{topic}.json"


def agent_token(settings: Settings) -> SecretStr | None:
    """The agent's bearer token: ESTOP_MTA_AGENT_TOKEN, else the token file in the MTA's folder
    (on the MTA's host), else None."""
    if settings.mta_agent_token is not None:
        return settings.mta_agent_token
    value = read_env(AgentFiles(settings.mta_home).token).get(TOKEN_VARIABLE)
    return SecretStr(value) if value else None


def ensure_token(settings: Settings) -> SecretStr:
    """The agent's token; without one set, a new one written to the token file (mode 0600)."""
    token = agent_token(settings)
    if token is None:
        path = AgentFiles(settings.mta_home).token
        token = SecretStr(secrets.token_urlsafe(32))
        write_env(path, {TOKEN_VARIABLE: token.get_secret_value()})
        log.info("generated the agent's token into %s", path)
    return token


class MtaAgent:
    """The agent's work, without its HTTP server: a thread that reads Postfix's log, one that
    ships its deliveries, and the find and cancel the API calls (from any thread)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instance = PostfixInstance.from_settings(settings)
        if not self.instance.configured:
            raise MtaError(f"no Postfix instance in {self.instance.home} (run `estop mta start`, "
                           "or set ESTOP_MTA_DIR)")
        self.files = AgentFiles(settings.mta_home)
        self.topic = settings.topics.receipts(CHANNEL)
        self.position_path = self.files.position(self.topic)
        self.state = PostfixLog()
        self.follower = LogFollower(self.instance.log_path, self.state)
        self.stopping = threading.Event()
        self.shipped = 0
        self.kafka_error: str | None = None
        self._lock = threading.Condition()  # guards the log's state and what is not shipped yet
        self._unshipped: deque[Read] = deque()
        self._read_to = LogPosition(0, 0)
        self._saved: LogPosition | None = None
        self._syncing = 0
        self._threads: list[threading.Thread] = []
        self._lock_file: IO[str] | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Read the log up to where the last run shipped it, then follow and ship it. One agent
        at a time ships a log to a topic (a lock file the kernel releases when it dies)."""
        self.files.folder.mkdir(parents=True, exist_ok=True)
        lock = self.position_path.with_suffix(".lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock.close()
            raise MtaError(f"another MTA agent already ships {self.instance.log_path} to "
                           f"{self.topic}") from exc
        self._lock_file = lock
        self._saved = self._load_position()
        self.follower.resume(self._saved)
        self._read_to = self.follower.position
        log.info("following %s from %s; receipts to %s at %s", self.instance.log_path,
                 f"offset {self._read_to.offset}" if self._saved else "its start", self.topic,
                 self.settings.bootstrap_servers)
        for name, target in (("log-reader", self._read_log), ("receipt-shipper", self._ship)):
            thread = threading.Thread(target=target, name=f"mta-agent-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Ship what was read (unless Kafka is away: the position file says where to resume)."""
        self.stopping.set()
        for thread in self._threads:
            thread.join()
        self.follower.close()
        if self._lock_file is not None:
            self._lock_file.close()

    def health(self) -> dict[str, Any]:
        with self._lock:
            unshipped = len(self._unshipped)
            read_to = self._read_to
        return {
            "status": "ok",
            "postfix": "running" if self.instance.running() else "not running",
            "log": str(self.instance.log_path),
            "read_to": {"inode": read_to.inode, "offset": read_to.offset},
            "receipts_topic": self.topic,
            "bootstrap_servers": self.settings.bootstrap_servers,
            "shipped": self.shipped,
            "unshipped": unshipped,
            "kafka_error": self.kafka_error,
        }

    # -- the log and its receipts --------------------------------------------------------------

    def _read_log(self) -> None:
        while not self.stopping.is_set():
            with self._lock:
                reads = self.follower.read()
                self._unshipped.extend(reads)
                self._read_to = self.follower.position
                self._lock.notify_all()  # a find or cancel may wait for a marker
                syncing = self._syncing
            if not reads:
                self.stopping.wait(SYNCING_S if syncing else IDLE_S)

    def _ship(self) -> None:
        """Ship what the reader found, in batches; after each, save the position up to which
        everything is shipped."""
        shipper: ReceiptShipper | None = None
        while True:
            if shipper is None:  # at start, to say at once when Kafka or the topic is missing
                try:
                    shipper = ReceiptShipper(self.settings, serdes_for(self.settings),
                                             CHANNEL, process_id("mta-agent"))
                except (EstopError, KafkaException) as exc:
                    if self._kafka_away(str(exc)):
                        return
                    continue
                self._kafka_back()
            with self._lock:
                batch = list(itertools.islice(self._unshipped, SHIP_BATCH))
                read_to = self._read_to
            if not batch:
                if read_to != self._saved:
                    self._save_position(read_to)
                if self.stopping.wait(IDLE_S):
                    return
                continue
            try:
                shipper.ship([read.delivery for read in batch])
            except (EstopError, KafkaException) as exc:
                if self._kafka_away(str(exc)):
                    return
                continue
            with self._lock:
                for _ in batch:
                    self._unshipped.popleft()
                position = batch[-1].position if self._unshipped else self._read_to
            self._save_position(position)
            self.shipped += len(batch)
            self._kafka_back()

    def _kafka_away(self, error: str) -> bool:
        """Say once that Kafka did not take the receipts, wait, and return whether the agent is
        stopping meanwhile (then the position file says where the next run resumes)."""
        if error != self.kafka_error:
            with self._lock:
                waiting = len(self._unshipped)
            log.warning("receipts not shipped: %s; %d read from the log wait, tried again every "
                        "%.0fs", error, waiting, RETRY_S)
        self.kafka_error = error
        return self.stopping.wait(RETRY_S)

    def _kafka_back(self) -> None:
        if self.kafka_error is not None:
            log.info("Kafka answers again: receipts go to %s", self.topic)
            self.kafka_error = None

    def _load_position(self) -> LogPosition | None:
        try:
            saved = json.loads(self.position_path.read_text())
            return LogPosition(int(saved["inode"]), int(saved["offset"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise MtaError(f"{self.position_path} is not a position the agent wrote ({exc}); "
                           "delete it to ship Postfix's whole log again") from exc

    def _save_position(self, position: LogPosition) -> None:
        """Atomically, and on disk before it counts: a crash leaves the old position or this one."""
        self.files.folder.mkdir(parents=True, exist_ok=True)
        staging = self.position_path.with_suffix(".tmp")
        with staging.open("w") as out:
            json.dump({"inode": position.inode, "offset": position.offset,
                       "log": str(self.instance.log_path)}, out)
            out.flush()
            os.fsync(out.fileno())
        staging.replace(self.position_path)
        self._saved = position

    # -- find and cancel -----------------------------------------------------------------------

    def sync(self) -> None:
        """Read the log up to a marker logged now, so every line Postfix logged before is in."""
        marker = f"estop-sync-{uuid.uuid4().hex}"
        with self._lock:
            self._syncing += 1
        try:
            self.instance.command(POSTLOG, "-t", "postfix/estop", marker)
            with self._lock:
                if not self._lock.wait_for(lambda: marker in self.state.markers, SYNC_TIMEOUT_S):
                    raise MtaError(f"Postfix's log ({self.instance.log_path}) did not show a marker "
                                   f"within {SYNC_TIMEOUT_S:.0f}s")
                self.state.markers.discard(marker)
        finally:
            with self._lock:
                self._syncing -= 1

    def find(self, message_ids: Iterable[str]) -> dict[str, str]:
        """Which of these messages Postfix queued: message id -> queue id."""
        self.sync()
        with self._lock:
            queued = self.state.queued
            return {m: queued[m] for m in message_ids if m in queued}

    def cancel(self, provider_ids: Mapping[str, str]) -> dict[str, CancelStatus]:
        """Delete what Postfix still holds of these messages (message id -> queue id)."""
        message_of = {q: m for m, q in provider_ids.items()}
        answers = dict.fromkeys(provider_ids, CancelStatus.TOO_LATE)
        queue_ids = list(message_of)
        removed: list[str] = []
        started = time.monotonic()
        for start in range(0, len(queue_ids), CHUNK):
            chunk = queue_ids[start:start + CHUNK]
            held = self._postsuper("-h", chunk, HELD)
            if not held:
                continue
            carried = self._carried(held)
            own = [q for q in held if carried.get(q) == message_of[q]]
            others = [q for q in held if q not in own]
            if others:  # a reused queue id: someone else's message; leave it as it was
                self._postsuper("-H", others, None)
            for queue_id in own:  # held, so still queued: a delete that fails is unknown
                answers[message_of[queue_id]] = CancelStatus.UNKNOWN
            removed += self._postsuper("-d", own, REMOVED)
        if removed:
            self.sync()  # once: every deferral logged before the holds, and the removals
        with self._lock:
            for queue_id in removed:
                message_id = message_of[queue_id]
                # A message the receiver may have is delivered by the log's removal line.
                answers[message_id] = (CancelStatus.TOO_LATE if message_id in self.state.uncertain
                                       else CancelStatus.CANCELLED)
            for message_id, queue_id in provider_ids.items():
                if answers[message_id] == CancelStatus.TOO_LATE and \
                        self.state.deleted.get(message_id) == queue_id:
                    answers[message_id] = CancelStatus.CANCELLED  # removed undelivered before
        log.info("cancel: %d messages asked, %d deleted now, %d cancelled in all, in %.2fs",
                 len(provider_ids), len(removed),
                 sum(1 for s in answers.values() if s == CancelStatus.CANCELLED),
                 time.monotonic() - started)
        return answers

    def _postsuper(self, flag: str, queue_ids: list[str], done: re.Pattern[str] | None) -> list[str]:
        if not queue_ids:
            return []
        result = self.instance.command(POSTSUPER, flag, "-", stdin="\n".join(queue_ids) + "\n",
                                       check=False)
        return done.findall(result.stderr) if done is not None else []

    def _carried(self, queue_ids: list[str]) -> dict[str, str]:
        """queue id -> the X-Estop-Message-Id header of the message it holds now."""
        out = self.instance.command(POSTCAT, "-e", "-h", "-q", *queue_ids, check=False).stdout
        carried: dict[str, str] = {}
        current: str | None = None
        for line in out.splitlines():
            section = SECTION.match(line)
            if section is not None:
                current = section.group(1)
            elif current is not None and line.lower().startswith("x-estop-message-id:"):
                carried[current] = line.split(":", 1)[1].strip()
        return carried
