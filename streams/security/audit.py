"""The audit trail: every stop, refused stop attempt and kill switch use, as an ``AuditEvent`` on
the ``audit`` topic, which the analytics sink stores (table ``audit``) for ``estop report`` and
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
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Producer

from streams.clock import now_ms
from streams.exceptions import EstopError
from streams.kafka.clients import producer
from streams.serde import Serdes
from streams.settings import Settings

STOP, KILL_SWITCH = "stop", "kill_switch"
ACCEPTED, ALREADY_STOPPED, REFUSED, REJECTED, FAILED = (
    "accepted", "already_stopped", "refused", "rejected", "failed")


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


def event(settings: Settings, actor: Actor, action: str, outcome: str, campaign_id: str, *,
          command_id: str | None = None, reason: str | None = None,
          channels: list[str] | None = None, detail: str = "") -> dict[str, Any]:
    return {
        "audit_id": uuid.uuid4().hex,
        "at": now_ms(),
        "action": action,
        "outcome": outcome,
        "actor": actor.name,
        "role": actor.role,
        "via": actor.via,
        "source": actor.source,
        "principal": settings.sasl_username or "",
        "campaign_id": campaign_id,
        "command_id": command_id,
        "reason": reason,
        "channels": sorted(channels or []),
        "detail": detail,
    }


def record(settings: Settings, serdes: Serdes, entry: dict[str, Any],
           out: Producer | None = None) -> str | None:
    """Write one audit event and wait for the broker; returns None when written, else why not,
    for the caller to report (an action is never undone because its audit could not be written;
    a principal Kafka refused the action is usually refused the audit topic too)."""
    out = out or producer(settings, **{"linger.ms": 0})
    failure: list[str] = []

    def on_delivery(err: Any, _message: Any) -> None:
        if err is not None:
            failure.append(str(err))

    try:
        out.produce(settings.topics.audit, key=entry["audit_id"].encode(),
                    value=serdes.audit.encode(entry), on_delivery=on_delivery)
        if out.flush(settings.admin_timeout_s):
            failure.append(f"not acknowledged within {settings.admin_timeout_s:g}s")
    except (KafkaException, SystemError, BufferError, EstopError) as exc:
        failure.append(str(exc.__cause__ or exc))
    if failure:
        return (f"the audit event ({entry['action']} {entry['outcome']} by {entry['actor']}) was "
                f"not written to {settings.topics.audit}: {failure[0]}")
    return None
