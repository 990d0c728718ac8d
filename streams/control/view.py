"""What every gate and dispatcher knows about stops: the whole ``campaign-control`` topic, in
memory. Pure state and semantics here; reading Kafka is the feed's job."""

from __future__ import annotations

import struct
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from streams.models import ACTION_STOP, CHANNELS

ALL_CHANNELS = frozenset(CHANNELS)


@dataclass(frozen=True, slots=True)
class Stop:
    """A campaign's stop in force, as the view's readers see it."""

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


# A campaign one command stopped is kept as one bytes value: requested_at, a flags byte (which
# channels, how the command id is stored) and the index of its (requested_by, reason) pair, then
# the command id. Command ids estop writes are UUIDs: 16 raw bytes instead of a 32-character str.
_PACKED = struct.Struct("<qBI")
_HEAD = _PACKED.size
_CHANNEL_BITS = {channel: 1 << index for index, channel in enumerate(CHANNELS)}
_SETS_BY_MASK = [_shared(frozenset(c for c, bit in _CHANNEL_BITS.items() if mask & bit))
                 for mask in range(1 << len(CHANNELS))]
_TEXT_ID, _HEX_ID, _UUID_ID = 0, 1, 2  # command id as UTF-8, 32 hex digits, canonical UUID
_ID_SHIFT = len(CHANNELS)
_CHANNEL_MASK = (1 << _ID_SHIFT) - 1
_MASKS = {channels: mask for mask, channels in enumerate(_SETS_BY_MASK)}
_FLAGS = 8  # where the flags byte is in a packed value
_HOT = 4096  # Stops kept built for the campaigns being looked up (their messages are flowing)


def _pack_id(command_id: str) -> tuple[int, bytes]:
    """The command id in its shortest form that gives it back exactly."""
    if len(command_id) == 32:
        try:
            raw = bytes.fromhex(command_id)
        except ValueError:
            pass
        else:
            if raw.hex() == command_id:  # lowercase, no spaces: it reads back the same
                return _HEX_ID, raw
    elif len(command_id) == 36 and command_id[8:9] == "-":
        try:
            parsed = uuid.UUID(command_id)
        except ValueError:
            pass
        else:
            if str(parsed) == command_id:
                return _UUID_ID, parsed.bytes
    return _TEXT_ID, command_id.encode("utf-8", "surrogatepass")


def _unpack_id(form: int, raw: bytes) -> str:
    if form == _HEX_ID:
        return raw.hex()
    if form == _UUID_ID:
        return str(uuid.UUID(bytes=raw))
    return raw.decode("utf-8", "surrogatepass")


class ControlView:
    """Stops per campaign and channel. A stop is final: a later command may widen its channels,
    never lift it; tombstones and unknown actions for a stopped campaign are counted and ignored.
    Each channel keeps the command that first halted it, so events name the right command.

    A campaign one command stopped (the usual case) is kept as one packed bytes value (see
    ``_PACKED``): no object per campaign besides its key and that value, about 140 bytes in all
    (``estop bench``). Readers get a ``Stop``, built from it when asked and kept for the few
    campaigns being looked up. Only a campaign stopped channel by channel by several commands
    gets a dict of Stops per channel."""

    def __init__(self) -> None:
        self._stops: dict[str, bytes | dict[str, Stop]] = {}
        # Each distinct (requested_by, reason) once: a million stops share a few.
        self._origins: list[tuple[str, str]] = []
        self._origin_index: dict[tuple[str, str], int] = {}
        self._hot: dict[str, Stop] = {}  # built from a packed value: only ever that value's Stop
        # Held while applying a command, and by a dispatcher while it checks a slice of handoffs
        # and marks its campaigns in flight (streams.dispatch.dispatcher): a handoff either saw
        # the stop or is known to the stop hook, which waits for it.
        self.lock = threading.Lock()
        self.applied = 0
        self.anomalies = 0

    def __len__(self) -> int:
        return len(self._stops)

    def stopped(self, campaign_id: str, channel: str) -> Stop | None:
        found = self._stops.get(campaign_id)
        if found is None:
            return None
        if type(found) is bytes:
            if not found[_FLAGS] & _CHANNEL_BITS.get(channel, 0):
                return None
            stop = self._hot.get(campaign_id)
            return stop if stop is not None else self._built(campaign_id, found)
        return found.get(channel)  # type: ignore[union-attr]

    def _built(self, campaign_id: str, packed: bytes) -> Stop:
        requested_at, flags, origin = _PACKED.unpack_from(packed)
        requested_by, reason = self._origins[origin]
        stop = Stop(_unpack_id(flags >> _ID_SHIFT, packed[_HEAD:]), campaign_id,
                    _SETS_BY_MASK[flags & _CHANNEL_MASK], requested_at, requested_by, reason)
        if len(self._hot) >= _HOT:
            self._hot.clear()
        self._hot[campaign_id] = stop
        return stop

    def _pack(self, command: dict[str, Any], channels: frozenset[str]) -> bytes:
        origin_key = (command["requested_by"], command["reason"])
        origin = self._origin_index.get(origin_key)
        if origin is None:
            origin = self._origin_index[origin_key] = len(self._origins)
            self._origins.append(origin_key)
        form, raw = _pack_id(command["command_id"])
        return _PACKED.pack(command["requested_at"], _MASKS[channels] | form << _ID_SHIFT, origin) + raw

    def _per_channel(self, campaign_id: str) -> dict[str, Stop]:
        found = self._stops.get(campaign_id)
        if found is None:
            return _NONE
        if type(found) is bytes:
            stop = self._built(campaign_id, found)
            return dict.fromkeys(stop.channels, stop)
        return found  # type: ignore[return-value]

    def campaigns(self) -> set[str]:
        """Every campaign with a stop in force."""
        return set(self._stops)

    def channels_stopped(self, campaign_id: str) -> frozenset[str]:
        found = self._stops.get(campaign_id)
        if found is None:
            return frozenset()
        if isinstance(found, bytes):
            return _SETS_BY_MASK[found[_FLAGS] & _CHANNEL_MASK]
        return frozenset(found)

    def stops(self, campaign_id: str) -> list[Stop]:
        """The distinct commands in force for a campaign, oldest first."""
        unique = {id(s): s for s in self._per_channel(campaign_id).values()}
        return sorted(unique.values(), key=lambda s: s.requested_at)

    def in_force(self, campaign_id: str, command_id: str) -> bool:
        """Whether this command already stopped a channel of this campaign (a re-published
        stop is not new)."""
        found = self._stops.get(campaign_id)
        if found is None:
            return False
        if type(found) is bytes:  # compared packed: no Stop built for a command read at start-up
            form, raw = _pack_id(command_id)
            return found[_FLAGS] >> _ID_SHIFT == form and found[_HEAD:] == raw
        return any(s.command_id == command_id for s in found.values())  # type: ignore[union-attr]

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
            if campaign_id not in self._stops:
                newly = requested
                self._stops[campaign_id] = self._pack(command, requested)
            else:
                newly = _shared(requested - self.channels_stopped(campaign_id))
                if newly:
                    stop = Stop(
                        command_id=command["command_id"],
                        campaign_id=campaign_id,
                        channels=newly,
                        requested_at=command["requested_at"],
                        requested_by=command["requested_by"],
                        reason=command["reason"],
                    )
                    per_channel = dict(self._per_channel(campaign_id))
                    per_channel.update(dict.fromkeys(newly, stop))
                    self._stops[campaign_id] = per_channel
            self.applied += 1
        return Applied(
            command_id=command["command_id"],
            campaign_id=campaign_id,
            requested_at=command["requested_at"],
            newly_halted=newly,
        )
