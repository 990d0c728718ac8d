"""The audit trail: every stop, refused stop attempt, kill switch use, relaunch and export, and
every record the control plane refused on ``campaign-control``, as an ``AuditEvent`` on the
``audit`` topic, which the analytics sink stores (table ``audit``) for ``estop report`` and
the control plane's ``GET /audit``.

Only the operator and control principals may write the topic (ACLs), so nobody else can add or
fake an entry; the sink only inserts (an event id is stored once), nothing updates or deletes.
The actor is the identity the writer authenticated: the HTTP token's user (control plane) or the
Kafka principal of the command line (the OS user on an unsecured cluster, where anyone may write
anything). A stop refused by Kafka itself cannot be written by the refused principal: the
broker's authorizer log records it (see docs/security.md)."""

from __future__ import annotations

import getpass
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Producer

from streams.clock import now_ms
from streams.exceptions import EstopError
from streams.kafka.clients import producer
from streams.serde import Serdes
from streams.settings import Settings

STOP, KILL_SWITCH, RELAUNCH, EXPORT = "stop", "kill_switch", "relaunch", "export"
RELEASE = "release"  # the rest of a canary launch released by a person
CONTROL_RECORD = "control_record"  # a record on campaign-control refused, or a stop restated over it
ACCEPTED, ALREADY_STOPPED, REFUSED, REJECTED, FAILED, REPAIRED = (
    "accepted", "already_stopped", "refused", "rejected", "failed", "repaired")
# What an event keeps of the text it is given (a rejected request may carry a huge reason or id):
# an event always fits the audit topic, so a stop is audited whatever its request held.
TEXT_MAX = 2000
ID_MAX = 256
# Refused and rejected attempts: the first of a kind (action, outcome, actor, source, campaign,
# detail: the same attempt again) in a window is written at once, the others of that window as
# one summary event when it ends. At most WINDOWS_MAX kinds a window are written at once: a flood varying the
# campaign in the path is at most that many writes per window.
WINDOW_S = 10.0
WINDOWS_MAX = 100


@dataclass(frozen=True)
class Actor:
    """Who acts, as authenticated, and from where."""

    name: str
    via: str  # "cli" or "http"
    source: str
    role: str | None = None


def cli_actor(settings: Settings) -> Actor:
    """The command line's identity: its Kafka principal on a secured cluster, else the OS user
    (an unsecured cluster authenticates nobody)."""
    user = getpass.getuser()
    return Actor(settings.sasl_username or user, "cli", f"{user}@{socket.gethostname()}")


def _clip(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def event(settings: Settings, actor: Actor, action: str, outcome: str, campaign_id: str, *,
          command_id: str | None = None, reason: str | None = None,
          channels: list[str] | None = None, detail: str = "",
          audit_id: str | None = None) -> dict[str, Any]:
    """One AuditEvent; ``audit_id`` given when the event must be stored once however often it is
    made (a control record read again after a restart)."""
    return {
        "audit_id": audit_id or uuid.uuid4().hex,
        "at": now_ms(),
        "action": action,
        "outcome": outcome,
        "actor": _clip(actor.name, ID_MAX),
        "role": actor.role,
        "via": actor.via,
        "source": _clip(actor.source, ID_MAX),
        "principal": settings.sasl_username or "",
        "campaign_id": _clip(campaign_id, ID_MAX),
        "command_id": _clip(command_id, ID_MAX),
        "reason": _clip(reason, TEXT_MAX),
        "channels": sorted(channels or []),
        "detail": _clip(detail, TEXT_MAX),
    }


class AuditWriter:
    """Writes audit events through one long-lived producer (a process that audits often, the
    control plane, keeps one; a command makes one for its run). Each write waits for the broker
    and returns None once written, else why not, for the caller to report (an action is never
    undone because its audit could not be written; a principal Kafka refused the action is usually
    refused the audit topic too). Thread-safe."""

    def __init__(self, settings: Settings, serdes: Serdes) -> None:
        self.settings = settings
        self.serdes = serdes
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    def _out(self) -> Producer:
        with self._lock:
            if self._producer is None:
                self._producer = producer(self.settings, **{"linger.ms": 0})
            return self._producer

    def write(self, entry: dict[str, Any]) -> str | None:
        failure: list[str] = []
        done = threading.Event()

        def on_delivery(err: Any, _message: Any) -> None:
            if err is not None:
                failure.append(str(err))
            done.set()

        timeout = self.settings.admin_timeout_s
        try:
            out = self._out()
            out.produce(self.settings.topics.audit, key=entry["audit_id"].encode(),
                        value=self.serdes.audit.encode(entry), on_delivery=on_delivery)
            deadline = time.monotonic() + timeout
            while not done.is_set() and time.monotonic() < deadline:
                out.poll(0.05)
            if not done.is_set():
                failure.append(f"not acknowledged within {timeout:g}s")
        except (KafkaException, SystemError, BufferError, EstopError) as exc:
            failure.append(str(exc.__cause__ or exc))
        if failure:
            return (f"the audit event ({entry['action']} {entry['outcome']} by {entry['actor']}) "
                    f"was not written to {self.settings.topics.audit}: {failure[0]}")
        return None

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(self.settings.admin_timeout_s)
                self._producer = None


def record(settings: Settings, serdes: Serdes, entry: dict[str, Any]) -> str | None:
    """Write one audit event with a producer of its own (a command's single event)."""
    writer = AuditWriter(settings, serdes)
    try:
        return writer.write(entry)
    finally:
        writer.close()


@dataclass
class _Window:
    started: float
    entry: dict[str, Any]
    more: int = 0


class Throttle:
    """Refused and rejected attempts without a Kafka write per attempt: the first attempt of a
    kind (``kind``) in a window of ``WINDOW_S`` is written at once; the others are counted, and
    written as one summary event (the last of them, with the count) when the window ends. At
    most ``WINDOWS_MAX`` kinds are tracked; more share one window."""

    OVERFLOW = ("*", "*", "*", "many sources", "*", "*")

    def __init__(self, window_s: float = WINDOW_S, windows_max: int = WINDOWS_MAX) -> None:
        self.window_s = window_s
        self.windows_max = windows_max
        self._windows: dict[tuple[str, ...], _Window] = {}
        self._lock = threading.Lock()

    @staticmethod
    def kind(entry: dict[str, Any]) -> tuple[str, ...]:
        """Action, outcome, actor, source, campaign and detail: the same attempt made again."""
        return (entry["action"], entry["outcome"], entry["actor"], entry["source"],
                entry["campaign_id"], entry["detail"])

    def admit(self, entry: dict[str, Any], now: float) -> bool:
        """True when ``entry`` is to be written now; False when it is counted in its window."""
        key = self.kind(entry)
        with self._lock:
            window = self._windows.get(key)
            if window is None and len(self._windows) >= self.windows_max:
                key = self.OVERFLOW
                window = self._windows.get(key)
            if window is not None and now - window.started < self.window_s:
                window.more += 1
                window.entry = entry
                return False
            self._windows[key] = _Window(now, entry)
            return True

    def due(self, now: float) -> list[dict[str, Any]]:
        """Summary events of the windows that ended with attempts not written yet."""
        summaries = []
        with self._lock:
            for key, window in list(self._windows.items()):
                if now - window.started < self.window_s:
                    continue
                del self._windows[key]
                if window.more:
                    entry = dict(window.entry, audit_id=uuid.uuid4().hex)
                    entry["detail"] = _clip(f"{window.more} more like this within "
                                            f"{self.window_s:g}s, the last: {entry['detail']}",
                                            TEXT_MAX)
                    summaries.append(entry)
        return summaries
