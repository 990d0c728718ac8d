"""What every gate and dispatcher knows about stops: the whole ``campaign-control`` topic, in
memory. Pure state and semantics here; reading Kafka is the feed's job."""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one control record: what to acknowledge and what newly halted."""

    command_id: str
    campaign_id: str
    requested_at: int
    newly_halted: frozenset[str]  # channels this command halted that were running before


_NONE: dict[str, Stop] = {}


class ControlView:
    """Stops per campaign and channel. A stop is final: a later command may widen its channels,
    never lift it; tombstones and unknown actions for a stopped campaign are counted and ignored.
    Each channel keeps the command that first halted it, so events name the right command."""

    def __init__(self) -> None:
        self._stops: dict[str, dict[str, Stop]] = {}
        # Held while applying a command and by a dispatcher around check-then-handoff, so no
        # handoff that saw "not stopped" can land after the process acknowledged the stop.
        self.lock = threading.Lock()
        self.applied = 0
        self.anomalies = 0

    def __len__(self) -> int:
        return len(self._stops)

    def stopped(self, campaign_id: str, channel: str) -> Stop | None:
        return self._stops.get(campaign_id, _NONE).get(channel)

    def campaigns(self) -> set[str]:
        """Every campaign with a stop in force."""
        return set(self._stops)

    def channels_stopped(self, campaign_id: str) -> frozenset[str]:
        return frozenset(self._stops.get(campaign_id, _NONE))

    def stops(self, campaign_id: str) -> list[Stop]:
        """The distinct commands in force for a campaign, oldest first."""
        unique = {id(s): s for s in self._stops.get(campaign_id, _NONE).values()}
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
        requested = frozenset(command["channels"]) or ALL_CHANNELS
        if not requested <= ALL_CHANNELS:
            self.apply_anomaly()
            requested &= ALL_CHANNELS
            if not requested:
                return None
        campaign_id = command["campaign_id"]
        with self.lock:
            per_channel = self._stops.setdefault(campaign_id, {})
            newly = requested - per_channel.keys()
            if newly:
                stop = Stop(
                    command_id=command["command_id"],
                    campaign_id=campaign_id,
                    channels=frozenset(newly),
                    requested_at=command["requested_at"],
                    requested_by=command["requested_by"],
                    reason=command["reason"],
                )
                for channel in newly:
                    per_channel[channel] = stop
            self.applied += 1
        return Applied(
            command_id=command["command_id"],
            campaign_id=campaign_id,
            requested_at=command["requested_at"],
            newly_halted=frozenset(newly),
        )
