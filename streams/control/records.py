"""The invariant of ``campaign-control``, in one place for every reader (gate and dispatcher
feeds, the command line, the launcher, the control plane): the latest record of a stopped
campaign is a stop of every channel it has stopped.

The topic is compacted by key, so Kafka keeps only a key's latest record. A record that would
break the invariant once compacted is refused (never applied) when its ids break the id rule or
its key is not its campaign's id (a record keyed ``A`` that stops ``Z`` would replace A's stop as
A's only record); a tombstone, an unknown action or an unreadable record leaves every stop in
force. Every reader counts and logs what it refused. The control plane, which may write the
topic on a secured cluster (the workers may not), audits each refused record and restates the
stop in force over any record that is not a full stop of a stopped campaign
(``streams.controlplane.app``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streams.control.view import ALL_CHANNELS, ControlView
from streams.models import ACTION_STOP
from streams.models.ids import ID_BYTES, ID_MAX, id_problem


def refusal(key: bytes | None, command: Mapping[str, Any]) -> str | None:
    """Why a decoded command must not be applied at all (one line), or None. (A start-up reads
    every command: the valid ones take two byte checks and a comparison.)"""
    if key is not None and 0 < len(key) <= ID_MAX and not key.translate(None, ID_BYTES) and \
            key == command["campaign_id"].encode():
        command_id = command["command_id"].encode()
        if 0 < len(command_id) <= ID_MAX and not command_id.translate(None, ID_BYTES):
            return None
    for name in ("campaign_id", "command_id"):
        problem = id_problem(command[name], name.replace("_", " "))
        if problem is not None:
            return problem
    if key != command["campaign_id"].encode():
        shown = repr(key[:60]) if key is not None else "none"
        return (f"its key ({shown}) is not its campaign id {command['campaign_id']!r}: compacted, "
                "it would replace the key's own latest record")
    return None


def covers(command: Mapping[str, Any] | None) -> frozenset[str]:
    """The channels a record stops on its own: what compaction keeps of the campaign's stop if
    the record stays its latest (nothing for a tombstone, a refused record, another action)."""
    if command is None or command.get("action") != ACTION_STOP:
        return frozenset()
    channels = command["channels"]
    return frozenset(channels) & ALL_CHANNELS if channels else ALL_CHANNELS


def restatement(view: ControlView, campaign_id: str) -> dict[str, Any] | None:
    """The record that makes the stop in force a campaign's latest record again: the first
    command in force, over every channel stopped (same command id, so no reader applies or
    acknowledges it twice); None when the campaign is not stopped."""
    stops = view.stops(campaign_id)
    if not stops:
        return None
    channels = view.channels_stopped(campaign_id)
    first = stops[0]
    return {
        "command_id": first.command_id,
        "campaign_id": campaign_id,
        "action": ACTION_STOP,
        "channels": [] if channels == ALL_CHANNELS else sorted(channels),
        "reason": first.reason,
        "requested_by": first.requested_by,
        "requested_at": first.requested_at,
    }
