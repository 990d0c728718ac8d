"""Campaign lifecycle on the compacted ``campaign-status`` topic: Sending (planned counts),
Finished (every request queued), Stopped (when, by whom, why, which channels).

The stop itself lives on ``campaign-control``; readers combine both, so a campaign stopped by
any producer of the control topic shows Stopped even if nobody wrote its status."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Message, Producer

from streams.clock import now_ms
from streams.control.feed import ControlFeed
from streams.control.view import ControlView, Stop
from streams.models import STATE_STOPPED
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


def read_campaigns(settings: Settings, serdes: Serdes) -> dict[str, Status]:
    """The latest status of every campaign (unreadable records are skipped)."""
    from streams.kafka.reader import read_topic

    table: dict[str, Status] = {}

    def handle(message: Message) -> None:
        key = message.key()
        if key is None:
            return
        if message.value() is None:
            table.pop(key.decode(errors="replace"), None)
            return
        try:
            record = serdes.campaign_status.decode(message.value())
        except SerdeError:
            return
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
    if view.channels_stopped(campaign_id):
        return STATE_STOPPED
    return status["state"] if status else None
