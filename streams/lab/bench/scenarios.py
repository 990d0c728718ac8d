"""The benchmark's scenarios, each on its own topics on the same broker, with the
same partitions and message size: raw confluent-kafka baselines, the gate, the drain of a stopped
backlog, handoffs, the ledger's restore, stop propagation under load, the guardrail's detection
latency, the reference scenario, the control view, and the same gate job on other frameworks."""

from __future__ import annotations

import re
import sys
import threading
import time
import tracemalloc
import uuid
from dataclasses import replace
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, Message, TopicPartition
from confluent_kafka.admin import NewTopic

from streams.campaigns.launcher import launch, message_id
from streams.clock import now_ms
from streams.control.feed import ControlFeed
from streams.control.stop import StopResult, await_confirmation, issue_stop
from streams.control.view import ControlView
from streams.dispatch.changelog import LedgerStats, restore
from streams.dispatch.ledger import ACCEPTED, DELIVERED, REPORTED, SUBMITTING, Entry
from streams.exceptions import EstopError
from streams.guardrails import feedback
from streams.guardrails.processor import read_windows
from streams.guardrails.rules import set_rule
from streams.kafka.clients import admin, consumer, producer, take
from streams.kafka.topics import replication
from streams.lab.bench import peers
from streams.lab.bench.instruments import (
    Measured,
    RssSampler,
    committed,
    end_offsets,
    percentile,
    rate_from_join,
    rate_until,
)
from streams.lab.bench.rig import Rig
from streams.models import ACTION_STOP, CHANNELS
from streams.security import audit
from streams.serde import Serdes
from streams.serde.fastevents import FlatDecoder
from streams.settings import Settings
from streams.sink.report import campaign_report
from streams.sink.store import open_store


def forward_rate(rig: Rig, impl: str, count: int) -> Measured:
    settings = rig.scenario_settings(f"fwd-{impl}")
    source, target = f"{settings.topic_prefix}src", f"{settings.topic_prefix}dst"
    with admin(settings) as client:
        for future in client.create_topics(
                [NewTopic(t, settings.partitions, replication(settings).factor)
                 for t in (source, target)]).values():
            future.result()
    rig.preload(settings, source, count, f"fwd-{impl}")
    module = "streams.lab.bench.faust_forward" if impl == "faust" else "streams.lab.bench.forward"
    args = ["-m", module]
    if impl != "faust":
        args.append(impl)
    args += [settings.bootstrap_servers, source, target, f"{settings.topic_prefix}{impl}"]
    if impl == "faust":
        args.append(str(settings.partitions))
    with rig.process([sys.executable, *args], f"forward-{impl}") as proc:

        def alive() -> None:
            if proc.poll() is not None:
                raise EstopError(f"the {impl} forwarder exited; see {rig.workdir}")

        return rate_until(lambda: end_offsets(settings, target), count, 600, alive,
                               [proc.pid])


def peer_rate(rig: Rig, name: str, command: list[str], count: int) -> Measured:
    """The gate job as another framework writes it, on the same input as the gate's: its rate
    is read from the end offsets of the dispatch topic it forwards to."""
    settings = rig.scenario_settings(f"peer-{name}")
    topics = settings.topics
    source, dispatch = topics.send_requests("email"), topics.dispatch("email")
    rig.preload(settings, source, count, f"peer-{name}")
    group = f"{settings.topic_prefix}{name}"
    if name.startswith("kstreams"):
        args = [settings.bootstrap_servers, group, source, topics.control, dispatch,
                topics.notsent, topics.dead_letter(source), str(rig.workdir / name)]
    else:
        guarantee = name.removeprefix("quixstreams-")
        args = [settings.bootstrap_servers, group, guarantee, source, topics.control, dispatch,
                topics.notsent, topics.dead_letter(source)]
    with rig.process([*command, *args], name) as proc:

        def alive() -> None:
            if proc.poll() is not None:
                raise EstopError(f"the {name} peer exited; see {rig.workdir / name}.log")

        return rate_from_join(settings, group, dispatch, count, alive, [proc.pid])


def raw_latency(rig: Rig) -> list[float]:
    settings = rig.scenario_settings("latency")
    topic = f"{settings.topic_prefix}latency"
    with admin(settings) as client:
        for future in client.create_topics([NewTopic(topic, 1, 1)]).values():
            future.result()
    reader = consumer(settings, **{"fetch.wait.max.ms": 10})
    reader.assign([TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
    out = producer(settings, **{"linger.ms": 0})
    out.produce(topic, value=b"warm-up")  # the producer id and the fetch are set up first
    out.flush(10)
    while not [m for m in take(reader, 10, 1.0) if not m.error()]:
        pass
    samples: list[float] = []
    padding = b"x" * max(rig.message_bytes - 8, 0)
    deadline = time.monotonic() + 120
    for index in range(rig.sizes.latency_samples):
        tag = index.to_bytes(8, "big")
        sent = time.monotonic()
        out.produce(topic, value=tag + padding)
        out.poll(0)
        while time.monotonic() < deadline:
            got = [m for m in take(reader, 10, 0.5) if not m.error()]
            if any((m.value() or b"")[:8] == tag for m in got):
                samples.append((time.monotonic() - sent) * 1000)
                break
        time.sleep(0.005)
    out.flush(10)
    reader.close()
    return samples


def gate_rate(rig: Rig, processes: int, count: int, name: str) -> Measured:
    settings = rig.scenario_settings(name)
    topic = settings.topics.send_requests("email")
    rig.preload(settings, topic, count, f"{name}-campaign")
    gate_args = ["--role", "gate", "--channel", "email"]
    with rig.workers(settings, *[gate_args] * processes) as started:

        def alive() -> None:
            for worker in started:
                worker.check()

        return rate_until(
            lambda: committed(settings, settings.topics.gate_group("email"), topic), count,
            600, alive, [w.process.pid for w in started])


def drain_rate(rig: Rig, count: int) -> Measured:
    settings = rig.scenario_settings("drain")
    campaign = "drain-campaign"
    issue_stop(settings, rig.serdes, campaign, "benchmark drain", [], "bench", 5, force=True)
    rig.preload(settings, settings.topics.dispatch("email"), count, campaign)
    with rig.workers(settings, ["--role", "dispatcher", "--channel", "email"]) as started:
        return rate_until(lambda: end_offsets(settings, settings.topics.notsent),
                               count, 900, started[0].check, [started[0].process.pid])


def handoff_rate(rig: Rig, count: int) -> Measured:
    """Messages handed over per second by one dispatcher to a provider that takes them as
    fast as it is given them: the ledger's cost (a reservation committed before each 100 ms
    of handoffs, their acceptances after) with nothing else holding it back."""
    settings = rig.scenario_settings("handoff", provider_rate=1_000_000.0,
                                      provider_delay_s=3600.0)
    topic = settings.topics.dispatch("email")
    rig.preload(settings, topic, count, "handoff-campaign")
    with rig.workers(settings, ["--role", "dispatcher", "--channel", "email"]) as started:
        return rate_until(
            lambda: committed(settings, settings.topics.dispatcher_group("email"), topic),
            count, 900, started[0].check, [started[0].process.pid])


def ledger_restore(rig: Rig, entries: int) -> dict[str, Any]:
    """Time to restore one partition's ledger of ``entries`` entries from its changelog (what
    a dispatcher does before its first handoff from a partition assigned to it), each entry
    written three times as a handoff writes it (reserved, accepted, reported)."""
    settings = rig.scenario_settings("restore")
    topic = settings.topics.ledger("email")
    out = producer(settings)
    encode = rig.serdes.ledger_entry.encode
    at = now_ms()
    for index in range(entries):
        message_id = f"restore-campaign:email:{index}"
        entry = Entry(message_id, "restore-campaign", f"r{index:08d}", index, SUBMITTING,
                      submitted_at=at)
        for step in (entry, replace(entry, state=ACCEPTED, provider_id=f"q{index}", handed_at=at),
                     replace(entry, state=REPORTED, provider_id=f"q{index}", handed_at=at,
                             outcome=DELIVERED, occurred_at=at)):
            while True:
                try:
                    out.produce(topic, key=message_id.encode(), value=encode(step.record()),
                                partition=0)
                    break
                except BufferError:
                    out.poll(0.05)
    out.flush(120)
    # Half of them still to be read again (their requests not committed): in memory whole.
    restored = restore(settings, rig.serdes, "email", {0: entries // 2})
    (ledger,) = restored.ledgers
    return {"entries": entries, "records": restored.records, "seconds": restored.seconds,
            "seconds_per_100k_entries": restored.seconds * 100_000 / entries,
            "in_memory": len(ledger.entries), "settled": len(ledger.settled)}


def stop_propagation(rig: Rig) -> dict[str, Any]:
    """Stops issued one after another while a campaign keeps the workers busy; each sample is
    one process's propagation (broker ack of the stop -> that process applied it)."""
    settings = rig.scenario_settings("propagation", provider_rate=20000.0,
                                      provider_delay_s=0.5)
    by_role: dict[str, list[float]] = {}  # "dispatcher.email" -> its processes' samples
    leak_after = leak_between = 0
    gate = ["--role", "gate", "--channel", "email"]
    dispatcher = ["--role", "dispatcher", "--channel", "email"]
    with rig.workers(settings, gate, gate, dispatcher) as started:
        load = threading.Thread(target=launch, daemon=True, kwargs={
            "settings": settings, "serdes": rig.serdes, "campaign_id": "load",
            "channels": ["email"], "recipients": 4000 * (rig.sizes.stops + 10),
            "rate": 4000.0})
        load.start()
        time.sleep(2)
        for index in range(rig.sizes.stops):
            for worker in started:
                worker.check()
            result = issue_stop(settings, rig.serdes, f"probe-{index}", "benchmark", [],
                                "bench", 30, force=True)
            if not result.confirmed:
                raise EstopError(f"stop {index} was not confirmed")
            for ack in result.acks:
                by_role.setdefault("+".join(sorted(ack.roles)), []).append(float(ack.propagation_ms))
        result = issue_stop(settings, rig.serdes, "load", "benchmark leak check", [], "bench",
                            30, force=True)
        load.join(300)
        time.sleep(1)
        outbox = LedgerStats(settings, "email")
        if result.confirmed_at_ms is not None and result.broker_ack_ms is not None:
            leak_after = outbox.handed_after("load", result.confirmed_at_ms)
            leak_between = outbox.handed_after("load", result.broker_ack_ms) - leak_after
    return {"samples": [sample for found in by_role.values() for sample in found],
            "by_role": by_role, "leak_after": leak_after, "leak_between": leak_between}


def reference_scenario(rig: Rig) -> dict[str, Any]:
    """The reference scenario: a campaign stopped after about a tenth was sent, the gate and
    the dispatcher in one worker, the sink in another; how long until analytics show every
    halted message, leaks, and the pipeline worker's memory."""
    recipients = rig.sizes.reference_recipients
    settings = rig.scenario_settings("reference", provider_rate=10000.0, provider_delay_s=1.0)
    campaign = "reference"
    # The analytics sink in a process of its own, as a deployment with the load of the
    # reference scenario runs it: in the worker it would share one GIL with the drain.
    pipeline = ["--role", "gate", "--role", "dispatcher"]
    with rig.workers(settings, pipeline, ["--role", "sink"]) as started, \
            RssSampler(started[0].process.pid) as rss:
        # The idle worker first: without it the slope compares only samples taken while
        # the backlog stays near its peak, and time (buffers filling) dominates it.
        rss.sample(in_flight(settings))
        launch(settings, rig.serdes, campaign, ["email"], recipients)
        topic = settings.topics.sent
        stop_after = recipients // 10
        while end_offsets(settings, topic) < stop_after:
            started[0].check()
            if rss.due():
                rss.sample(in_flight(settings))
            time.sleep(0.05)
        result = issue_stop(settings, rig.serdes, campaign, "benchmark: reference scenario",
                            [], "bench", 30)
        stopped = time.monotonic()
        store = open_store(settings)
        try:
            # Waiting, a count of the campaign's outcomes (what the report calls accounted);
            # the report itself reads the campaign's rows several times over, and asked ten
            # times a second it took most of a core from the processes under test.
            while store.outcomes(campaign) < recipients:
                started[0].check()
                if time.monotonic() - stopped > 900:
                    raise EstopError("analytics did not complete")
                time.sleep(0.1)
            complete_s = time.monotonic() - stopped
            report = campaign_report(store, campaign)
        finally:
            store.close()
        memory = rss.summary()
        outbox = LedgerStats(settings, "email")
        after = outbox.handed_after(campaign, result.confirmed_at_ms or 0)
        between = outbox.handed_after(campaign, result.broker_ack_ms or 0) - after
    return {"analytics_complete_s": complete_s, "halted": report["not_sent"],
            "sent": report["sent"], "leak_after": after, "leak_between": between,
            "confirm_s": result.confirm_s, "worker_memory": memory}


def in_flight(settings: Settings) -> int:
    """Requests queued for the gate or the dispatcher and not yet processed by them."""
    topics = settings.topics
    return sum(end_offsets(settings, topic) - committed(settings, group, topic)
               for topic, group in ((topics.send_requests("email"), topics.gate_group("email")),
                                    (topics.dispatch("email"), topics.dispatcher_group("email"))))


def control_view(rig: Rig) -> dict[str, Any]:
    count = rig.sizes.control_commands
    settings = rig.scenario_settings("control")
    out = producer(settings)
    encode = rig.serdes.control_command.encode
    now = now_ms() - 3_600_000  # old: a bootstrapping process applies but does not ack them
    commands = []
    for index in range(count):
        command = {"command_id": uuid.uuid4().hex, "campaign_id": f"c{index}",
                   "action": ACTION_STOP, "channels": [], "reason": "benchmark",
                   "requested_by": "bench", "requested_at": now}
        value = encode(command)
        if index < 20000:
            commands.append(value)
        while True:
            try:
                out.produce(settings.topics.control, key=f"c{index}".encode(), value=value)
                break
            except BufferError:
                out.poll(0.05)
    out.flush(120)
    view = ControlView()
    feed = ControlFeed(settings, view, rig.serdes, "bench", [], acknowledge=False)
    started = time.monotonic()
    feed.bootstrap()
    bootstrap_s = time.monotonic() - started
    feed.close()
    if len(view) != count:
        raise EstopError(f"the control view holds {len(view)} of {count} stopped campaigns")
    # Memory per stopped campaign: a sample decoded and applied to a fresh view under
    # tracemalloc, so what the view keeps of each record (ids, times) counts too.
    decoder = FlatDecoder(rig.serdes.control_command)
    tracemalloc.start()
    sample = ControlView()
    before = tracemalloc.take_snapshot()
    for value in commands:
        sample.apply(decoder.decode(value))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return {"commands": count, "bootstrap_s": bootstrap_s,
            "bytes_per_command": grown / len(commands)}


def gate_from_join(rig: Rig, count: int) -> Measured:
    """The gate measured as the peers are (``rate_from_join``), on the same input."""
    settings = rig.scenario_settings("peer-estop")
    topic = settings.topics.send_requests("email")
    rig.preload(settings, topic, count, "peer-estop")
    with rig.workers(settings, ["--role", "gate", "--channel", "email"]) as started:
        return rate_from_join(settings, settings.topics.gate_group("email"),
                                   settings.topics.dispatch("email"), count,
                                   started[0].check, [started[0].process.pid])


def peer_rates(rig: Rig, base: Measured, quix: list[str], kstreams: list[str]) -> dict[str, dict[str, float]]:
    """Throughput and CPU cost of estop's gate and of the same job on each peer (the commands
    that run them), each next to the baseline's."""
    rates = {"estop gate": gate_from_join(rig, rig.sizes.peers)}
    for guarantee in peers.GUARANTEES:
        rates[f"quixstreams {guarantee}"] = peer_rate(rig,
            f"quixstreams-{guarantee}", quix, rig.sizes.peers)
    rates["Kafka Streams exactly_once_v2"] = peer_rate(rig,
        "kstreams-eos", kstreams, rig.sizes.peers)
    return {name: rate.figures(base) for name, rate in rates.items()}


# -- the guardrail ---------------------------------------------------------------------------

GUARD_WINDOW = 500  # the rule watches the first 500 outcomes of the campaign's channel...
GUARD_THRESHOLD = 0.01  # ...and trips at 1% complaints: the 5th complaint over a full window
GUARD_RECIPIENTS = 4000
GUARD_RATE = 2000.0  # recipients queued per second: handoffs keep going while the guardrail detects
GUARD_SPACING_S = 0.02  # between two complaints
GUARD_REASON = re.compile(r"\((\d+) of (\d+) outcomes")


def guardrail_detection(rig: Rig) -> dict[str, Any]:
    """The guardrail's detection latency: from the feedback record that crosses a rule's
    threshold to the stop it writes confirmed on every partition, and the messages handed to the
    provider in between. Each sample is one campaign through a gate and a dispatcher (email, a
    provider that answers at once) with the guardrail processor beside them; the complaint rule
    watches the first ``GUARD_WINDOW`` outcomes and trips at ``GUARD_THRESHOLD``. Once the window
    is full, complaints are produced one at a time, each acknowledged before the next: the one
    that crosses is the ``k``-th, ``k`` the hits the trip's reason names. The stop is followed as
    `estop stop` follows its own (``await_confirmation``)."""
    settings = rig.scenario_settings("guardrail", provider_rate=20000.0, provider_delay_s=0.0)
    serdes = rig.serdes
    actor = audit.Actor("bench", "cli", "bench")
    for name in ("bounce", "provider-failure", "unsubscribe"):
        set_rule(settings, serdes, actor, {"name": name, "enabled": False})
    set_rule(settings, serdes, actor, {"name": "complaint", "threshold": GUARD_THRESHOLD,
                                       "min_sample": GUARD_WINDOW, "window": "first",
                                       "window_size": GUARD_WINDOW})
    to_command: list[float] = []
    to_confirmed: list[float] = []
    handed: list[int] = []
    pipeline = ["--role", "gate", "--role", "dispatcher", "--channel", "email"]
    with rig.workers(settings, pipeline, ["--role", "guardrail"]) as started:
        out = producer(settings, **{"linger.ms": 0})
        control = consumer(settings)
        control.assign([TopicPartition(settings.topics.control, 0, 0)])
        try:
            for index in range(rig.sizes.guardrail_trips):
                campaign = f"trip-{index}"
                sent_before = end_offsets(settings, settings.topics.sent)
                load = threading.Thread(target=launch, daemon=True, kwargs={
                    "settings": settings, "serdes": serdes, "campaign_id": campaign,
                    "channels": ["email"], "recipients": GUARD_RECIPIENTS, "rate": GUARD_RATE})
                load.start()
                # The window fills first, so the feedback alone makes the trip.
                while end_offsets(settings, settings.topics.sent) - sent_before < GUARD_WINDOW + 50:
                    for worker in started:
                        worker.check()
                    time.sleep(0.01)
                acked: list[int] = []
                command: dict[str, Any] | None = None
                position = (0, -1)
                while command is None:
                    if len(acked) > 20 * GUARD_THRESHOLD * GUARD_RECIPIENTS:
                        raise EstopError(f"the guardrail did not stop {campaign}")
                    acked.append(_complaint(out, settings, serdes, campaign, len(acked)))
                    deadline = time.monotonic() + GUARD_SPACING_S
                    while command is None and time.monotonic() < deadline:
                        for message in take(control, 100, 0.005):
                            found = _guardrail_command(serdes, message, campaign)
                            if found is not None:
                                command, position = found, (message.partition() or 0,
                                                            message.offset() or 0)
                result = StopResult(campaign, command["command_id"], list(CHANNELS),
                                    already_stopped=False, confirmed=False,
                                    broker_ack_ms=command["requested_at"],
                                    control_partition=position[0], control_offset=position[1])
                await_confirmation(settings, serdes, result, 60)
                if not result.confirmed or result.confirmed_at_ms is None:
                    raise EstopError(f"the guardrail's stop of {campaign} was not confirmed")
                crossed = acked[_trip_hits(settings, serdes, campaign) - 1]
                to_command.append(command["requested_at"] - crossed)
                to_confirmed.append(result.confirmed_at_ms - crossed)
                ledger = LedgerStats(settings, "email", serdes)
                handed.append(ledger.handed_after(campaign, crossed)
                              - ledger.handed_after(campaign, result.confirmed_at_ms))
                load.join(120)
        finally:
            control.close()
    return {"to_stop_command_ms": to_command, "to_confirmed_ms": to_confirmed,
            "handed_between": handed,
            "rule": {"metric": "complaint", "threshold": GUARD_THRESHOLD,
                     "window": f"first {GUARD_WINDOW}"},
            "launch_rate": GUARD_RATE}


def _complaint(out: confluent_kafka.Producer, settings: Settings, serdes: Serdes, campaign: str,
               index: int) -> int:
    """One complaint, acknowledged by the broker; returns when (ms)."""
    acked: dict[str, Any] = {}

    def delivered(error: KafkaError | None, _message: Message) -> None:
        acked["error"], acked["at"] = error, now_ms()

    report = feedback.check({"kind": "complaint", "message_id": message_id(campaign, "email", index),
                             "campaign_id": campaign, "channel": "email"}, "bench")
    out.produce(settings.topics.feedback, key=report["message_id"].encode(),
                value=serdes.feedback.encode(report), on_delivery=delivered)
    out.flush(10)
    if acked.get("error") is not None or "at" not in acked:
        raise EstopError(f"a complaint was not acknowledged: {acked.get('error')}")
    return int(acked["at"])


def _guardrail_command(serdes: Serdes, message: Message, campaign: str) -> dict[str, Any] | None:
    if message.error() or message.key() != campaign.encode() or message.value() is None:
        return None
    command: dict[str, Any] = serdes.control_command.decode(message.value())
    return command if command["requested_by"].startswith("guardrail:") else None


def _trip_hits(settings: Settings, serdes: Serdes, campaign: str) -> int:
    """The complaints the trip counted (its reason says "(k of n outcomes ...)")."""
    for window in read_windows(settings, serdes, campaign):
        if window.trip_reason and (match := GUARD_REASON.search(window.trip_reason)):
            return int(match.group(1))
    raise EstopError(f"no trip recorded for {campaign}")


def detection_figures(measured: dict[str, Any]) -> dict[str, Any]:
    """p50 and p99 of each latency and the handoffs in between, with the samples (the plot)."""
    handed = measured["handed_between"]
    spans = ("to_stop_command", "to_confirmed")
    return {
        **{f"{name}_p{q}": percentile(measured[f"{name}_ms"], q) for name in spans for q in (50, 99)},
        "handed_between_p50": percentile([float(h) for h in handed], 50),
        "handed_between_max": max(handed, default=0),
        "samples": len(handed), **measured}
