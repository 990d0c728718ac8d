"""Hostile input against the real broker and workers: ids that print alike but match
differently, records whose key or headers are larger than a send request has, a record Kafka
refuses what the gate made of, campaign-status records that would hide a campaign from the kill
switch, and a control record keyed by one campaign that stops another. Each attack fails with
the documented error, writes nothing it should not, the stop still works, and what the command
line refused is in the audit trail."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from typing import Any

import pytest
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from streams.campaigns.launcher import message_id, recipient_id
from streams.campaigns.lifecycle import publish_status
from streams.clock import now_ms
from streams.control.stop import issue_stop
from streams.kafka.clients import admin, headers_of, producer
from streams.models import (
    CHANNELS,
    HEADER_CAMPAIGN,
    HEADER_CHANNEL,
    HEADER_ERROR,
    HEADER_RECIPIENT,
    HEADER_TRUNCATED,
    STATE_SENDING,
    STATE_STOPPED,
)
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.store import open_store
from tests.pipeline.support import cli_env
from tests.reliability.support import (
    Fleet,
    campaign_events,
    read_all,
    wait_for,
    wait_joined,
    wait_outcomes,
)
from tests.support import metric, produce, produce_each, run_estop

pytestmark = pytest.mark.broker

SERDES = Serdes()
REASON = "wrong discount code"
ENV = {"ESTOP_PROVIDER_RATE": "5000", "ESTOP_PROVIDER_DELAY_S": "0.05"}


def announce(settings: Settings, campaign_id: str, state: str = STATE_SENDING,
             channels: tuple[str, ...] = ("email",)) -> None:
    out = producer(settings)
    publish_status(out, settings, SERDES, campaign_id, state, list(channels),
                   dict.fromkeys(channels, 10))
    assert out.flush(30) == 0


def ends(settings: Settings) -> dict[str, int]:
    """How many records each topic a launch, a stop or a relaunch writes holds now."""
    topics = settings.topics
    names = [topics.control, topics.status, *(topics.send_requests(c) for c in CHANNELS)]
    return {name: len(read_all(settings, name)) for name in names}


def audit_trail(settings: Settings) -> list[dict[str, Any]]:
    return [SERDES.audit.decode(m.value()) for m in read_all(settings, settings.topics.audit)]


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("estop: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def request(campaign_id: str, index: int, channel: str = "email", **changes: Any) -> bytes:
    return SERDES.send_request.encode({
        "message_id": message_id(campaign_id, channel, index), "campaign_id": campaign_id,
        "channel": channel, "recipient_id": recipient_id(index), "payload": "hello",
        "requested_at": now_ms(), **changes})


def routing(campaign_id: str, index: int) -> list[tuple[str, str | bytes | None]]:
    return [(HEADER_CAMPAIGN, campaign_id.encode()), (HEADER_CHANNEL, b"email"),
            (HEADER_RECIPIENT, recipient_id(index).encode())]


def set_topic_config(settings: Settings, topic: str, name: str, value: str) -> None:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)])
    with admin(settings) as client:
        for future in client.incremental_alter_configs([resource]).values():
            future.result(30)


def dead_letters(settings: Settings, topic: str) -> dict[str, Any]:
    """Dead letters of ``topic`` by the error they carry."""
    found = {}
    for message in read_all(settings, settings.topics.dead_letter(topic)):
        headers = {k: v for k, v in headers_of(message)}
        error = headers[HEADER_ERROR]
        assert isinstance(error, bytes)
        found[error.decode()] = message
    return found


def test_ids_that_print_alike_are_refused_and_never_rewritten(settings: Settings) -> None:
    """`" promo"` or `"promo\\u00a0"` is not `promo`: a launch, a stop and a relaunch under such
    an id are refused in one line naming the character, write nothing, and never touch promo;
    the refused stops are audited; promo's own stop works."""
    announce(settings, "promo")
    before = ends(settings)
    env = cli_env(settings)

    launched = run_estop("launch", "--campaign", "promo\u00a0", "--channel", "email",
                         "--recipients", "5", env=env)
    one_line_error(launched, 2, "invalid campaign id", "U+00A0 NO-BREAK SPACE")
    for look_alike, named in ((" promo", "U+0020 SPACE"), ("promo\u00a0", "U+00A0"),
                              ("promo\u3000", "U+3000 IDEOGRAPHIC SPACE"),
                              ("promo\u212a", "U+212A KELVIN SIGN"), ("x" * 129, "at most 128")):
        stopped = run_estop("stop", look_alike, "--reason", REASON, "--timeout", "5", env=env)
        one_line_error(stopped, 2, "invalid campaign id", named)
    relaunched = run_estop("relaunch", "promo", "--as", "again\u3000", env=env)
    one_line_error(relaunched, 2, "invalid new campaign id", "U+3000")
    assert ends(settings) == before, "a refused id wrote something"

    rejected = [e for e in audit_trail(settings) if e["outcome"] == "rejected"]
    assert [e["campaign_id"] for e in rejected] == [" promo", "promo\u00a0", "promo\u3000",
                                                    "promo\u212a", "x" * 129]
    assert all("invalid campaign id" in e["detail"] and e["action"] == "stop" for e in rejected)

    result = issue_stop(settings, SERDES, "promo", REASON, [], by="ops", timeout_s=10)
    assert result.confirmed and not result.already_stopped
    commands = [SERDES.control_command.decode(m.value())
                for m in read_all(settings, settings.topics.control)]
    assert [c["campaign_id"] for c in commands] == ["promo"]


def test_records_no_stop_could_name_or_too_large_to_dead_letter_are_dead_lettered(
        settings: Settings) -> None:
    """A request whose campaign id breaks the id rule never passes the gate (no stop could
    name it); a key or headers larger than a request has are dead-lettered, cut to fit: even
    where the dead-letter topic takes less than the input topic, the gate goes on and a stopped
    campaign's next request is halted."""
    topic = settings.topics.send_requests("email")
    # The dead letter of a record is the record plus the reason: a topic that takes a little
    # less than its input is where an uncut dead letter never fits.
    set_topic_config(settings, settings.topics.dead_letter(topic), "max.message.bytes", "100000")
    fleet = Fleet(settings, **ENV)
    try:
        worker = fleet.start("worker", "--role", "gate", "--role", "dispatcher", "--channel", "email")
        wait_joined(settings, worker.process_id, settings.topics.gate_group("email"))
        invisible = "promo\u00a0"
        huge_key = os.urandom(150_000)  # does not compress: its dead letter cannot fit uncut
        produce_each(settings, topic, [
            (b"promo-nbsp:email:0", request(invisible, 0), routing(invisible, 0)),
            (huge_key, b"not a send request", routing("fine", 1)),
            (message_id("fine", "email", 2).encode(), request("fine", 2),
             [*routing("fine", 2), *(("trace", b"t" * 6000) for _ in range(20))]),
            (message_id("fine", "email", 3).encode(), request("fine", 3), routing("fine", 3)),
        ])
        wait_outcomes(settings, "fine", 1, check=fleet.check)

        letters = dead_letters(settings, topic)
        (key_error,) = [error for error in letters if error.startswith("key: ")]
        assert sorted(letters) == sorted([
            "header invalid campaign id 'promo\\xa0': character 6 is U+00A0 NO-BREAK SPACE "
            "(an id is 1 to 128 of A-Z a-z 0-9 . _ : -)",
            key_error, "23 headers (at most 16 allowed)"])
        assert key_error.startswith("key: invalid message id ") and key_error.endswith(
            ": it is 150,000 characters long, at most 192 are allowed (an id is 1 to 192 of "
            "A-Z a-z 0-9 . _ : -)")
        cut = {error.split(" ")[0]: dict(headers_of(m)).get(HEADER_TRUNCATED)
               for error, m in letters.items()}
        assert cut == {"header": None, "key:": b"key", "23": b"headers"}
        assert letters[key_error].key() == huge_key[:256]
        passed = [SERDES.send_request.decode(m.value())["campaign_id"]
                  for m in read_all(settings, settings.topics.dispatch("email"))]
        assert passed == ["fine"], "a request no stop can name went past the gate"

        # The gate goes on: a stop applies to the next request.
        assert issue_stop(settings, SERDES, "fine", REASON, [], by="ops", timeout_s=60,
                          force=True).confirmed
        produce_each(settings, topic, [(message_id("fine", "email", 4).encode(), request("fine", 4),
                                        routing("fine", 4))])
        wait_outcomes(settings, "fine", 2, check=fleet.check)
        halted = campaign_events(settings, SERDES, "fine").not_sent
        assert [(e["message_id"], e["stage"]) for e in halted] == [
            (message_id("fine", "email", 4), "sending")]
        assert metric(worker.scrape(), "estop_dead_lettered_records_total", topic=topic) == 3
    finally:
        fleet.stop_all()


def test_a_record_kafka_refuses_what_the_gate_made_of_is_dead_lettered(settings: Settings) -> None:
    """A request the gate forwards but Kafka refuses on ``dispatch.email`` (larger than that
    topic takes) would fail its batch for ever: after a few attempts the gate settles the batch
    record by record, dead-letters that one request and passes the others."""
    set_topic_config(settings, settings.topics.dispatch("email"), "max.message.bytes", "4000")
    topic = settings.topics.send_requests("email")
    fleet = Fleet(settings, **ENV)
    try:
        worker = fleet.start("worker", "--role", "gate", "--role", "dispatcher", "--channel", "email")
        wait_joined(settings, worker.process_id, settings.topics.gate_group("email"))
        big = base64.b64encode(os.urandom(7500)).decode()  # 10 KiB that lz4 cannot shrink to 4 KB
        produce_each(settings, topic, [
            (message_id("wide", "email", i).encode(),
             request("wide", i, payload=big if i == 2 else "hello"), routing("wide", i))
            for i in range(5)], partition=0)
        wait_outcomes(settings, "wide", 4, check=fleet.check)

        letters = dead_letters(settings, topic)
        [(error, letter)] = letters.items()
        assert error.startswith("Kafka refused what this record made 3 times: MSG_SIZE_TOO_LARGE"), error
        assert letter.key() == message_id("wide", "email", 2).encode()
        passed = sorted(m.key() or b"" for m in read_all(settings, settings.topics.dispatch("email")))
        assert passed == sorted(message_id("wide", "email", i).encode() for i in (0, 1, 3, 4))
        assert "settling it one record at a time" in worker.output()
        assert metric(worker.scrape(), "estop_dead_lettered_records_total", topic=topic) == 1
    finally:
        fleet.stop_all()


def test_a_record_kafka_refuses_what_the_dispatcher_made_of_is_dead_lettered(
        settings: Settings) -> None:
    """A request of a stopped campaign written straight to ``dispatch.email`` whose notSent event
    Kafka refuses (its recipient header too large for ``notsent``) would fail the dispatcher's
    batch for ever: after a few attempts the dispatcher settles the batch record by record,
    dead-letters that one request, and the others get their notSent events."""
    set_topic_config(settings, settings.topics.notsent, "max.message.bytes", "4000")
    topic = settings.topics.dispatch("email")
    issue_stop(settings, SERDES, "narrow", "wrong code", [], by="ops", timeout_s=10, force=True)
    fleet = Fleet(settings, **ENV)
    try:
        worker = fleet.start("worker", "--role", "dispatcher", "--channel", "email")
        wait_joined(settings, worker.process_id, settings.topics.dispatcher_group("email"))
        big = base64.b64encode(os.urandom(7500))  # 10 KiB that lz4 cannot shrink to 4 KB
        produce_each(settings, topic, [
            (message_id("narrow", "email", i).encode(), request("narrow", i),
             [*routing("narrow", i)[:2], (HEADER_RECIPIENT, big if i == 2 else b"r")])
            for i in range(5)], partition=0)
        wait_outcomes(settings, "narrow", 4, check=fleet.check)

        [(error, letter)] = dead_letters(settings, topic).items()
        assert error.startswith("Kafka refused what this record made 3 times: MSG_SIZE_TOO_LARGE"), error
        assert letter.key() == message_id("narrow", "email", 2).encode()
        halted = sorted(m.key() or b"" for m in read_all(settings, settings.topics.notsent))
        assert halted == sorted(message_id("narrow", "email", i).encode() for i in (0, 1, 3, 4))
        assert "settling it one record at a time" in worker.output()
        assert metric(worker.scrape(), "estop_dead_lettered_records_total", topic=topic) == 1
    finally:
        fleet.stop_all()


def test_the_kill_switch_stops_every_campaign_no_command_stopped(settings: Settings) -> None:
    """"Stopped" comes from campaign-control alone: a forged Stopped status, a tombstone, a
    status keyed by one campaign naming another, a stop of one channel: the kill switch stops
    every such campaign on every channel; a campaign whose id no stop can name is reported, and
    the others are stopped all the same (the issue's reproduction: stop-all raised and stopped
    neither)."""
    for campaign in ("sending", "forged", "hidden", "swapped", "partial", "promo\u00a0"):
        announce(settings, campaign, channels=CHANNELS)
    announce(settings, "forged", STATE_STOPPED)  # the engine may write campaign-status
    produce(settings, settings.topics.status, [(b"hidden", None)])  # a tombstone
    out = producer(settings)  # keyed "swapped", naming another campaign
    out.produce(settings.topics.status, key=b"swapped", value=SERDES.campaign_status.encode({
        "campaign_id": "elsewhere", "state": STATE_STOPPED, "channels": ["email"],
        "planned": {"email": 1}, "queued": {}, "updated_at": now_ms(), "stop": None}))
    assert out.flush(30) == 0
    partial = issue_stop(settings, SERDES, "partial", "sms text wrong", ["sms"], by="ops", timeout_s=10)
    done = issue_stop(settings, SERDES, "done", "all wrong", [], by="ops", timeout_s=10, force=True)

    killed = run_estop("stop", "--all", "--reason", REASON, "--json", env=cli_env(settings))

    one_line_error(killed, 1, "1 campaign(s) could not be stopped", "'promo\\xa0'", "U+00A0")
    results = {r["campaign_id"]: r for r in json.loads(killed.stdout)["stopped"]}
    assert sorted(results) == ["forged", "hidden", "partial", "promo\u00a0", "sending", "swapped"]
    assert "invalid campaign id" in results["promo\u00a0"]["error"]
    assert results["promo\u00a0"]["command_id"] is None
    for campaign in ("forged", "hidden", "partial", "sending", "swapped"):
        assert results[campaign]["error"] is None and results[campaign]["confirmed"], campaign
        assert results[campaign]["channels"] == sorted(CHANNELS), campaign
    commands = [SERDES.control_command.decode(m.value())
                for m in read_all(settings, settings.topics.control)]
    written = {c["campaign_id"]: c for c in commands
               if c["command_id"] not in (partial.command_id, done.command_id)}
    assert sorted(written) == ["forged", "hidden", "partial", "sending", "swapped"]
    assert all(c["channels"] == [] and c["reason"] == REASON for c in written.values())
    trail = [(e["campaign_id"], e["outcome"]) for e in audit_trail(settings)
             if e["action"] == "kill_switch"]
    assert sorted(trail) == sorted([("forged", "accepted"), ("hidden", "accepted"),
                                    ("partial", "accepted"), ("sending", "accepted"),
                                    ("swapped", "accepted"), ("promo\u00a0", "failed")])

    again = run_estop("stop", "--all", "--reason", REASON, env=cli_env(settings))
    one_line_error(again, 1, "'promo\\xa0'")
    assert len(read_all(settings, settings.topics.control)) == len(commands), "stopped twice"


def test_a_control_record_keyed_by_another_campaign_is_refused_by_every_worker(
        settings: Settings) -> None:
    """A record keyed ``kept`` whose body stops ``elsewhere`` would, once compacted, replace
    kept's stop as kept's only record; records whose ids break the id rule name campaigns no
    request can carry. Every worker refuses them (not applied, counted, logged), and the analytics
    sink dead-letters them: kept stays stopped, elsewhere is not stopped, nor reported stopped, by
    a record that is not its own."""
    fleet = Fleet(settings, **ENV)
    try:
        worker = fleet.start("worker", "--role", "gate", "--role", "dispatcher", "--role", "sink")
        wait_joined(settings, worker.process_id, settings.topics.gate_group("email"))
        kept = issue_stop(settings, SERDES, "kept", REASON, [], by="ops", timeout_s=60, force=True)
        assert kept.confirmed

        def command(command_id: str, campaign: str) -> bytes:
            return SERDES.control_command.encode({
                "command_id": command_id, "campaign_id": campaign, "action": "stop",
                "channels": [], "reason": "swap", "requested_by": "someone",
                "requested_at": int(time.time() * 1000)})

        produce(settings, settings.topics.control, [
            (b"kept", command("swap-1", "elsewhere")),
            (b"kept ", command("space-1", "kept ")),
            (b"kept", command("bad-id\u00a0", "kept")),
        ])
        wait_for(lambda: metric(worker.scrape(), "estop_control_anomalies_total") == 3,
                 "three control records refused")
        output = worker.output()
        assert "refused control record" in output and "is not its campaign id 'elsewhere'" in output
        assert "U+00A0" in output

        produce_each(settings, settings.topics.send_requests("email"), [
            (message_id(c, "email", 0).encode(), request(c, 0), routing(c, 0))
            for c in ("kept", "elsewhere")])
        wait_outcomes(settings, "kept", 1, check=fleet.check)
        wait_outcomes(settings, "elsewhere", 1, check=fleet.check)
        assert [e["stage"] for e in campaign_events(settings, SERDES, "kept").not_sent] == ["sending"]
        assert campaign_events(settings, SERDES, "elsewhere").not_sent == []
        passed = [m.key() for m in read_all(settings, settings.topics.dispatch("email"))]
        assert passed == [message_id("elsewhere", "email", 0).encode()]
        wait_for(lambda: len(dead_letters(settings, settings.topics.control)) == 3,
                 "the sink to dead-letter the three refused control records")
        store = open_store(settings)
        try:
            assert store.stops("elsewhere") == [] and len(store.stops("kept")) == 1
        finally:
            store.close()
    finally:
        fleet.stop_all()
