"""Abuse of the control topic after a stop: a command with an unknown action, a malformed record,
a tombstone, a stop of an unknown channel and a stop of another campaign, all keyed by the
stopped campaign. The stop stays in force, in the running worker and in one started afterwards,
also once Kafka has compacted the topic (which keeps only a key's latest record): the control
plane restates the stop over them and audits what it refused and restated; every anomaly is
logged and counted in ``estop_control_anomalies_total`` by the worker; requests of the campaign
still become notSent, 0 handoffs."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from streams.campaigns.launcher import message_id
from streams.dispatch.changelog import LedgerStats
from streams.kafka.clients import admin
from streams.models import CHANNELS, STAGE_PROVIDER, STAGE_SENDING
from streams.serde import Serdes
from streams.settings import Settings
from tests.controlplane.conftest import processes
from tests.controlplane.support import ControlProcess, Processes
from tests.reliability.support import (
    Fleet,
    campaign_events,
    produce_requests,
    read_all,
    stop,
    wait_for,
    wait_joined,
    wait_outcomes,
)
from tests.support import metric, produce

pytestmark = pytest.mark.broker

CAMPAIGN = "abused"
ENV = {"ESTOP_PROVIDER_RATE": "5000", "ESTOP_PROVIDER_DELAY_S": "0.05"}
ANOMALIES = 5
LOGGED = [
    "ignored control command lift-1 for 'abused': action 'resume'",
    "ignored an unreadable control record for 'abused'",
    "ignored a tombstone for stopped campaign 'abused'",
    "ignored control command fax-1 for 'abused': action 'stop', channels ['fax']",
    "refused control record",
]


def abuse(settings: Settings, serdes: Serdes) -> None:
    def command(command_id: str, action: str, channels: list[str], campaign: str = CAMPAIGN) -> bytes:
        return serdes.control_command.encode({
            "command_id": command_id, "campaign_id": campaign, "action": action,
            "channels": channels, "reason": "undo", "requested_by": "someone",
            "requested_at": int(time.time() * 1000)})

    key = CAMPAIGN.encode()
    produce(settings, settings.topics.control, [
        (key, command("lift-1", "resume", [])),  # an unknown action
        (key, b"\x00 not a control command"),  # a malformed record
        (key, None),  # a tombstone: "delete" the stop
        (key, command("fax-1", "stop", ["fax"])),  # a stop of no known channel
        (key, command("swap-1", "stop", [], "other")),  # keyed here, stopping another campaign
    ])


def requests(settings: Settings, serdes: Serdes, first: int, count: int) -> list[str]:
    """Requests of the stopped campaign at both stages, on every channel."""
    ids = []
    for channel in CHANNELS:
        ids += produce_requests(settings, serdes, settings.topics.send_requests(channel), CAMPAIGN,
                                channel, range(first, first + count))
        ids += produce_requests(settings, serdes, settings.topics.dispatch(channel), CAMPAIGN,
                                channel, range(first + count, first + 2 * count))
    return ids


def compact(settings: Settings) -> None:
    """Make Kafka compact the control topic now: small segments, and records that roll the
    active one; the log cleaner then keeps only the latest record of each key."""
    topic = settings.topics.control
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("segment.ms", "200", incremental_operation=AlterConfigOpType.SET),
        # The plan keeps every record uncompacted for a week (the control plane's time to restate
        # a stop): here compaction is wanted now.
        ConfigEntry("min.compaction.lag.ms", "0", incremental_operation=AlterConfigOpType.SET)])
    with admin(settings) as client:
        for future in client.incremental_alter_configs([resource]).values():
            future.result(30)

    def compacted() -> bool:
        time.sleep(1)  # past segment.ms: the next record starts a new segment
        produce(settings, topic, [(b"zz-roll", None)])
        return len([m for m in read_all(settings, topic) if m.key() == CAMPAIGN.encode()]) == 1

    wait_for(compacted, "the log cleaner to keep only the latest record of the campaign",
             timeout_s=180, every_s=1)


def test_control_topic_abuse_leaves_the_stop_in_force(settings: Settings,
                                                      processes: Processes) -> None:
    serdes = Serdes()
    fleet = Fleet(settings, **ENV)
    try:
        first = fleet.start("first")  # every gate, dispatcher and the sink
        for channel in CHANNELS:
            wait_joined(settings, first.process_id, settings.topics.gate_group(channel))
        control = processes.add(ControlProcess(settings))
        assert isinstance(control, ControlProcess)
        control.start()
        result = stop(settings, serdes, CAMPAIGN, force=True)
        assert first.process_id in {a.process_id for a in result.acks}

        abuse(settings, serdes)
        wait_for(lambda: metric(first.scrape(), "estop_control_anomalies_total") == ANOMALIES,
                 f"{ANOMALIES} control anomalies counted by the running worker")
        wait_for(lambda: all(line in first.output() for line in LOGGED), "the anomalies logged")

        # The control plane restates the stop: the latest record of the campaign is its stop
        # again, what compaction keeps alone. (The workers may not write campaign-control on a
        # secured cluster; the control plane may.)
        def latest() -> dict[str, Any] | None:
            records = [m for m in read_all(settings, settings.topics.control)
                       if m.key() == CAMPAIGN.encode()]
            value = records[-1].value()
            return serdes.control_command.decode(value) if value is not None else None

        def restated() -> bool:
            found = latest()
            return found is not None and (found["command_id"], found["action"], found["channels"]) \
                == (result.command_id, "stop", [])

        wait_for(restated, "the control plane to restate the stop")
        # It logs the restatement once the write is acknowledged, a moment after readers see it.
        wait_for(lambda: "restated the stop of" in "".join(control.lines), "the restatement logged")
        assert f"restated the stop of '{CAMPAIGN}'" in "".join(control.lines)
        # Audited: the records it refused (each once, however often it reads them), what it did.
        trail = [serdes.audit.decode(m.value()) for m in read_all(settings, settings.topics.audit)]
        refused = sorted(e["detail"].split(": ", 1)[1] for e in trail if e["outcome"] == "refused")
        assert len(refused) == 2 and refused[0].startswith("its key (b'abused') is not its campaign id "
                                                           "'other'") and "unreadable" in refused[1]
        assert all(e["action"] == "control_record" and e["via"] == "kafka" for e in trail)
        repaired = [e for e in trail if e["outcome"] == "repaired"]
        assert repaired and all(e["command_id"] == result.command_id for e in repaired)

        # The running worker halts the campaign's requests at both stages.
        ids = requests(settings, serdes, 0, 25)
        wait_outcomes(settings, CAMPAIGN, len(ids), check=fleet.check)

        # A worker started after the abuse, and after compaction dropped every record of the
        # campaign but the latest: the stop is in force there too.
        compact(settings)
        fleet.kill("first")
        second = fleet.start("second")
        assert "stopped_campaigns=1" in second.output()  # not "other": that record was refused
        assert metric(second.scrape(), "estop_control_anomalies_total") == 0, (
            "compaction should have removed the anomalous records")
        ids += requests(settings, serdes, 100, 25)
        wait_outcomes(settings, CAMPAIGN, len(ids), check=fleet.check)

        events = campaign_events(settings, serdes, CAMPAIGN)
        assert events.duplicates() == {}
        assert not events.sent and not events.failed
        assert {e["message_id"] for e in events.not_sent} == set(ids)
        stages = {e["message_id"]: e["stage"] for e in events.not_sent}
        for channel in CHANNELS:
            for index in (*range(0, 25), *range(100, 125)):
                assert stages[message_id(CAMPAIGN, channel, index)] == STAGE_SENDING
                assert stages[message_id(CAMPAIGN, channel, index + 25)] == STAGE_PROVIDER
        assert all(e["stop_command_id"] == result.command_id for e in events.not_sent)
        assert {c: LedgerStats(settings, c).handed(CAMPAIGN) for c in CHANNELS} == \
            dict.fromkeys(CHANNELS, 0)
    finally:
        fleet.stop_all()


__all__ = ["processes"]  # the control plane's subprocess fixture, stopped at teardown
