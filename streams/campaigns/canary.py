"""Canary launches (`estop launch --canary 2%`, a console relaunch with a canary): the launcher
queues a first cohort of each channel's audience, then holds the rest until the campaign went
``ESTOP_CANARY_HOLD_S`` without a stop (a guardrail's or a person's) or an operator released it
(`estop release`, ``POST /campaigns/{id}/release``). A stop during the hold keeps the rest of
the stopped channels from ever being queued: the launcher reports them notSent, stage sending,
so the campaign still has one outcome per planned message with almost everything unsent.

The canary's state lives on the compacted topic ``campaign-canary`` (``CanaryState``, keyed by
campaign id), never in a local file: a launcher restarted with the same command finds the cohort
queued and the hold's end there, and an operator's release reaches it there."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import Message, Producer, TopicPartition

from streams.campaigns.exceptions import CanaryError, CanaryNotHoldingError
from streams.clock import now_ms
from streams.control.view import ControlView
from streams.kafka.clients import consumer, producer, take
from streams.kafka.exceptions import KafkaUnavailableError
from streams.kafka.reader import read_topic
from streams.serde import SerdeError, Serdes
from streams.settings import Settings

HOLDING, RELEASED, DONE = "holding", "released", "done"
RELEASED_BY_HOLD = "hold"  # who released the rest when nobody did before the hold passed
Canary = dict[str, Any]  # a CanaryState record


def parse_share(text: str) -> float:
    """``2%`` (or ``2``) -> 0.02: the share of each channel's audience in the first cohort."""
    raw = text.strip().removesuffix("%").strip()
    try:
        percent = float(raw)
    except ValueError as exc:
        raise CanaryError(f"a canary is a percentage of the audience such as 2%, not {text!r}") from exc
    if not 0 < percent < 100 or not math.isfinite(percent):
        raise CanaryError(f"a canary must be more than 0% and less than 100% of the audience, "
                          f"not {text!r}")
    return percent / 100


def cohorts(audience: Mapping[str, Sequence[str]], channels: Iterable[str],
            share: float) -> dict[str, int]:
    """Requests of the first cohort per channel: the share of its audience, at least one."""
    return {c: min(len(audience[c]), max(1, math.ceil(len(audience[c]) * share)))
            for c in channels}


def read_state(settings: Settings, serdes: Serdes, campaign_id: str) -> Canary | None:
    """The campaign's last canary state, or None when it was not launched as a canary."""
    found: list[Canary] = []

    def keep(message: Message) -> None:
        state = _decode(serdes, message, campaign_id)
        if state is not None:
            found.append(state)

    read_topic(settings, settings.topics.canary, keep)
    return found[-1] if found else None


def publish(out: Producer, settings: Settings, serdes: Serdes, state: Canary) -> None:
    state = {**state, "updated_at": now_ms()}
    out.produce(settings.topics.canary, key=state["campaign_id"].encode(),
                value=serdes.canary.encode(state))


def holding(campaign_id: str, share: float, cohort: Mapping[str, int], planned: Mapping[str, int],
            hold_s: float) -> Canary:
    return {"campaign_id": campaign_id, "state": HOLDING, "share": share, "cohort": dict(cohort),
            "planned": dict(planned), "hold_until": now_ms() + int(hold_s * 1000),
            "released_by": None, "updated_at": now_ms()}


def hold(settings: Settings, serdes: Serdes, view: ControlView, state: Canary,
         channels: Sequence[str]) -> str | None:
    """Wait until the hold passes (returns ``RELEASED_BY_HOLD``), an operator releases the rest
    (returns who), or every channel is stopped (returns None). ``view`` follows the control
    topic (the launcher's feed)."""
    campaign_id = state["campaign_id"]
    if state["state"] == RELEASED:
        return str(state["released_by"] or RELEASED_BY_HOLD)
    reader = consumer(settings)
    topic = settings.topics.canary
    try:
        partitions = reader.list_topics(topic, timeout=settings.admin_timeout_s).topics[topic].partitions
        reader.assign([TopicPartition(topic, p, 0) for p in partitions])
        while True:
            if all(view.stopped(campaign_id, c) is not None for c in channels):
                return None
            for message in take(reader, 500, 0.1):
                found = _decode(serdes, message, campaign_id)
                if found is not None and found["state"] == RELEASED and found["released_by"]:
                    return str(found["released_by"])
            if now_ms() >= state["hold_until"]:
                return RELEASED_BY_HOLD
            time.sleep(0.05)
    finally:
        reader.close()


def release(settings: Settings, serdes: Serdes, campaign_id: str, by: str) -> Canary:
    """Release the rest of a canary launch that is holding, as ``by``; raises CanaryError when
    the campaign has no canary holding (nothing written)."""
    state = read_state(settings, serdes, campaign_id)
    if state is None:
        raise CanaryNotHoldingError(f"campaign {campaign_id!r} was not launched with a canary")
    if state["state"] != HOLDING:
        raise CanaryNotHoldingError(f"the canary of {campaign_id!r} is not holding (it is {state['state']}"
                          + (f", released by {state['released_by']}" if state["released_by"] else "")
                          + "); nothing to release")
    out = producer(settings)
    released = {**state, "state": RELEASED, "released_by": by}
    publish(out, settings, serdes, released)
    if out.flush(settings.admin_timeout_s):
        raise KafkaUnavailableError(f"Kafka did not acknowledge the release of {campaign_id!r}")
    return released


def _decode(serdes: Serdes, message: Message, campaign_id: str) -> Canary | None:
    if message.error() or message.key() != campaign_id.encode() or message.value() is None:
        return None
    try:
        state: Canary = serdes.canary.decode(message.value())
    except SerdeError:
        return None
    return state if state["campaign_id"] == campaign_id else None
