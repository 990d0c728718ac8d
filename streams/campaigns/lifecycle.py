"""Campaign lifecycle on the compacted ``campaign-status`` topic: Sending (planned counts),
Finished (every request queued), Stopped (when, by whom, why, which channels).

The stop itself lives on ``campaign-control``, and "Stopped" comes from there alone: the campaign
engine may write ``campaign-status``, so nothing on it can take a campaign off the kill switch's
list or hide its stop button. A Stopped status that no stop command backs counts as Sending, and
a tombstone, an unreadable record or a record whose key is not its campaign's id never replaces
a campaign's last status."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Message, Producer

from streams.clock import now_ms
from streams.control.feed import ControlFeed
from streams.control.view import ControlView, Stop
from streams.kafka.deadletter import skip_unreadable_message
from streams.models import STATE_SENDING, STATE_STOPPED
from streams.serde import SerdeError, Serdes
from streams.settings import Settings

Status = dict[str, Any]


def publish_status(producer: Producer, settings: Settings, serdes: Serdes, campaign_id: str,
                   state: str, channels: list[str], planned: dict[str, int],
                   queued: dict[str, int] | None = None, stop: Stop | None = None) -> None:
    record = {
        "campaign_id": campaign_id,
        "state": state,
        "channels": channels,
        "planned": planned,
        "queued": queued or {},
        "updated_at": now_ms(),
        "stop": stop_info(stop) if stop else None,
    }
    producer.produce(settings.topics.status, key=campaign_id.encode(),
                     value=serdes.campaign_status.encode(record))


def stop_info(stop: Stop) -> dict[str, Any]:
    return {
        "command_id": stop.command_id,
        "requested_at": stop.requested_at,
        "requested_by": stop.requested_by,
        "reason": stop.reason,
        "channels": sorted(stop.channels),
    }


def status_record(serdes: Serdes, key: bytes | None, value: bytes | None) -> Status | None:
    """The status a ``campaign-status`` record gives its campaign, or None for a tombstone
    (which never replaces a campaign's last status). SerdeError when the value is unreadable,
    has no key, or names another campaign than its key (compaction would keep it as the key's
    only record)."""
    if value is None:
        return None
    if key is None:
        raise SerdeError("campaign status without a key")
    record: Status = serdes.campaign_status.decode(value)
    if record["campaign_id"].encode("utf-8", "surrogatepass") != key:
        raise SerdeError(f"campaign status of {record['campaign_id']!r} under the key "
                         f"{key.decode(errors='replace')!r}")
    return record


def read_campaigns(settings: Settings, serdes: Serdes) -> dict[str, Status]:
    """The last status of every campaign; an unreadable record is counted and logged, never
    replaces a status (``status_record``)."""
    from streams.kafka.reader import read_topic

    table: dict[str, Status] = {}

    def handle(message: Message) -> None:
        try:
            record = status_record(serdes, message.key(), message.value())
        except SerdeError as exc:
            skip_unreadable_message(message, exc.reason)
            return
        if record is not None:
            table[record["campaign_id"]] = record

    read_topic(settings, settings.topics.status, handle)
    return table


def read_control(settings: Settings, serdes: Serdes) -> ControlView:
    """A one-shot control view: every command present now, without acknowledging any."""
    view = ControlView()
    feed = ControlFeed(settings, view, serdes, process_id="reader", roles=[], acknowledge=False)
    feed.bootstrap()
    feed.close()
    return view


def effective_state(status: Status | None, view: ControlView, campaign_id: str) -> str | None:
    """Stopped when a command stopped the campaign; else its status, where a Stopped that no
    command backs is Sending (its messages may still flow: nothing stopped them)."""
    return resolved_state(status["state"] if status else None,
                          bool(view.channels_stopped(campaign_id)))


def resolved_state(recorded: str | None, stopped: bool) -> str | None:
    """The rule ``effective_state`` applies, given the recorded lifecycle state (None: no status)
    and whether a stop command is in force: the analytics store's report applies it to its
    copy of the stops."""
    if stopped:
        return STATE_STOPPED
    if recorded is None:
        return None
    return STATE_SENDING if recorded == STATE_STOPPED else str(recorded)
