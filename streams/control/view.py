"""What every gate and dispatcher knows about stops: the whole ``campaign-control`` topic, in
memory. Pure state and semantics here; reading Kafka is the feed's job."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any

from streams.models import ACTION_STOP, CHANNELS

ALL_CHANNELS = frozenset(CHANNELS)


@dataclass(frozen=True, slots=True)
class Stop:
    """A campaign's stop in force. One small object per stopped campaign."""

    command_id: str
    campaign_id: str
    channels: frozenset[str]
    requested_at: int
    requested_by: str
    reason: str


@dataclass(slots=True)
class Applied:
    """The outcome of one control record: what to acknowledge and what newly halted. (Not
    frozen: a start-up creates one per command, and a frozen dataclass costs 4 times more.)"""

    command_id: str
    campaign_id: str
    requested_at: int
    newly_halted: frozenset[str]  # channels this command halted that were running before


_NONE: dict[str, Stop] = {}
# Every subset of the channels, built once: a million stops share these few sets.
_CHANNEL_SETS: dict[frozenset[str], frozenset[str]] = {ALL_CHANNELS: ALL_CHANNELS}


def _shared(channels: frozenset[str]) -> frozenset[str]:
    return _CHANNEL_SETS.setdefault(channels, channels)


class ControlView:
    """Stops per campaign and channel. A stop is final: a later command may widen its channels,
    never lift it; tombstones and unknown actions for a stopped campaign are counted and ignored.
    Each channel keeps the command that first halted it, so events name the right command.

    A campaign one command stopped (the usual case) is stored as that one Stop, whose channels
    say where it applies; only a campaign stopped channel by channel by several commands gets a
    dict per channel. With the channel sets shared and the reason and requester interned, a
    stopped campaign costs little more than its key and command id (``estop bench``)."""

    def __init__(self) -> None:
        self._stops: dict[str, Stop | dict[str, Stop]] = {}
        # Held while applying a command and by a dispatcher around check-then-handoff, so no
        # handoff that saw "not stopped" can land after the process acknowledged the stop.
        self.lock = threading.Lock()
        self.applied = 0
        self.anomalies = 0

    def __len__(self) -> int:
        return len(self._stops)

    def stopped(self, campaign_id: str, channel: str) -> Stop | None:
        found = self._stops.get(campaign_id)
        if found is None:
            return None
        if type(found) is Stop:
            return found if channel in found.channels else None
        return found.get(channel)  # type: ignore[union-attr]

    def _per_channel(self, campaign_id: str) -> dict[str, Stop]:
        found = self._stops.get(campaign_id)
        if found is None:
            return _NONE
        if isinstance(found, Stop):
            return dict.fromkeys(found.channels, found)
        return found

    def campaigns(self) -> set[str]:
        """Every campaign with a stop in force."""
        return set(self._stops)

    def channels_stopped(self, campaign_id: str) -> frozenset[str]:
        found = self._stops.get(campaign_id)
        if isinstance(found, Stop):
            return found.channels
        return frozenset(found or ())

    def stops(self, campaign_id: str) -> list[Stop]:
        """The distinct commands in force for a campaign, oldest first."""
        unique = {id(s): s for s in self._per_channel(campaign_id).values()}
        return sorted(unique.values(), key=lambda s: s.requested_at)

    def apply_tombstone(self, campaign_id: str) -> bool:
        """A deleted key must not lift a stop; True (and counted) when it tried to."""
        with self.lock:
            if campaign_id in self._stops:
                self.anomalies += 1
                return True
            return False

    def apply_anomaly(self) -> None:
        with self.lock:
            self.anomalies += 1

    def apply(self, command: dict[str, Any]) -> Applied | None:
        """Apply a decoded ControlCommand; None when it is not a command this view acts on."""
        if command["action"] != ACTION_STOP:
            self.apply_anomaly()
            return None
        channels = command["channels"]
        requested = _shared(frozenset(channels)) if channels else ALL_CHANNELS
        if not requested <= ALL_CHANNELS:
            self.apply_anomaly()
            requested = _shared(requested & ALL_CHANNELS)
            if not requested:
                return None
        campaign_id = command["campaign_id"]
        with self.lock:
            found = self._stops.get(campaign_id)
            newly = requested if found is None else _shared(requested - self.channels_stopped(campaign_id))
            if newly:
                stop = Stop(
                    command_id=command["command_id"],
                    campaign_id=campaign_id,
                    channels=newly,
                    requested_at=command["requested_at"],
                    requested_by=sys.intern(command["requested_by"]),
                    reason=sys.intern(command["reason"]),
                )
                if found is None:
                    self._stops[campaign_id] = stop
                else:
                    per_channel = dict(self._per_channel(campaign_id))
                    per_channel.update(dict.fromkeys(newly, stop))
                    self._stops[campaign_id] = per_channel
            self.applied += 1
        return Applied(
            command_id=command["command_id"],
            campaign_id=campaign_id,
            requested_at=command["requested_at"],
            newly_halted=frozenset(newly),
        )
