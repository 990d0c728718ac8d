"""``estop bench``: the benchmark's scenarios, each measured on the same broker, with the same
partitions and message size, next to a raw confluent-kafka baseline from the same run.

Processes under test run as subprocesses (``estop worker`` roles, the forwarders), started by the
rig (rig.py); the scenarios (scenarios.py) measure them from the outside with the instruments
(instruments.py: committed offsets of their group, or end offsets of their output topic), so every
figure includes what a user would see: consume, process, produce, commit. The targets
(targets.py) judge the figures."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import confluent_kafka

from streams.lab.bench import peers
from streams.lab.bench.instruments import percentile, spread
from streams.lab.bench.rig import Rig, Say
from streams.lab.bench.scenarios import (
    control_view,
    detection_figures,
    drain_rate,
    forward_rate,
    gate_rate,
    guardrail_detection,
    handoff_rate,
    ledger_restore,
    peer_rates,
    raw_latency,
    reference_scenario,
    stop_propagation,
)
from streams.lab.bench.targets import targets
from streams.lab.broker import acquire_broker
from streams.settings import Settings


def run(rig: Rig) -> dict[str, Any]:
    """Every scenario in turn, each figure next to the baseline measured first."""
    sizes = rig.sizes
    results: dict[str, Any] = {}
    say = rig.say
    # Prepared first: a peer that cannot be installed or built fails the run before it starts.
    quix = peers.quixstreams_python(rig.base.cache_dir, say)
    kstreams = peers.kstreams_java(rig.base.cache_dir, rig.base.kafka_version, say)
    say("baseline: raw confluent-kafka consume-and-forward")
    base = forward_rate(rig, "confluent", sizes.passthrough)
    base_rate = base.msgs_per_s
    say("baseline: raw produce-to-consume latency")
    latency = raw_latency(rig)
    results["baseline"] = {"passthrough_msgs_per_s": base_rate,
                           "cpu_us_per_msg": base.cpu_us_per_msg,
                           "latency_p50_ms": percentile(latency, 50),
                           "latency_p99_ms": percentile(latency, 99)}
    say("gate pass-through (one gate process)")
    gate = gate_rate(rig, 1, sizes.passthrough, "gate1")
    results["gate"] = {"passthrough_msgs_per_s": gate.msgs_per_s, **gate.figures(base)}
    say("drain of a stopped backlog at the provider stage")
    drain = drain_rate(rig, sizes.drain)
    results["drain"] = {**drain.figures(base), "backlog": sizes.drain}
    say("handoffs to a provider that takes them at once (the ledger's cost)")
    handoffs = handoff_rate(rig, sizes.handoffs)
    results["handoffs"] = {**handoffs.figures(base), "messages": sizes.handoffs}
    say(f"ledger restore: a partition of {sizes.ledger_entries:,} entries")
    results["ledger_restore"] = ledger_restore(rig, sizes.ledger_entries)
    say(f"stop propagation: {sizes.stops} stops under load")
    propagation = stop_propagation(rig)
    samples = propagation["samples"]
    results["stop_propagation_ms"] = {**spread(samples),
                                      "mean": statistics.fmean(samples) if samples else None,
                                      "by_role": {role: spread(found)
                                                  for role, found in propagation["by_role"].items()}}
    say(f"guardrail detection: {sizes.guardrail_trips} trips on complaints")
    results["guardrail_detection"] = detection_figures(guardrail_detection(rig))
    say(f"reference scenario: {sizes.reference_recipients:,} recipients stopped after a tenth")
    reference = reference_scenario(rig)
    results["leak"] = {"after_confirm": propagation["leak_after"] + reference["leak_after"],
                       "between_ack_and_confirm":
                           propagation["leak_between"] + reference["leak_between"]}
    results["analytics_complete_s"] = reference["analytics_complete_s"]
    results["reference"] = reference
    say(f"control view: {sizes.control_commands:,} commands")
    results["control_view"] = control_view(rig)
    say("scaling: two gate processes")
    two = gate_rate(rig, 2, sizes.passthrough, "gate2")
    results["scaling"] = {"one_gate_msgs_per_s": gate.msgs_per_s,
                          "two_gates_msgs_per_s": two.msgs_per_s,
                          "ratio": two.msgs_per_s / gate.msgs_per_s}
    say("design evidence: the same forward job on aiokafka and as a Faust agent")
    aio = forward_rate(rig, "aiokafka", sizes.evidence)
    faust_rate = forward_rate(rig, "faust", sizes.evidence)
    results["design_evidence"] = {
        "aiokafka_msgs_per_s": aio.msgs_per_s, "faust_agent_msgs_per_s": faust_rate.msgs_per_s,
        "aiokafka_ratio": aio.msgs_per_s / base_rate,
        "faust_ratio": faust_rate.msgs_per_s / base_rate,
        "aiokafka": aio.figures(base), "faust": faust_rate.figures(base)}
    say("peers: the gate job on quixstreams and on Kafka Streams")
    results["peers"] = peer_rates(rig, base, quix, kstreams)
    results["stop_propagation_ms"]["raw_latency_samples_ms"] = latency
    results["stop_propagation_ms"]["samples_ms"] = samples
    results["env"] = env(rig)
    return results


def env(rig: Rig) -> dict[str, Any]:
    """The machine, the versions and the sizes the figures were measured with."""
    return {
        "cpus": os.cpu_count(),
        "kafka_version": rig.base.kafka_version,
        "bootstrap_servers": rig.base.bootstrap_servers,
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "message_bytes": rig.message_bytes,
        "partitions": rig.base.partitions,
        "batch_size": rig.base.batch_size,
        "quick": rig.quick,
        "sizes": rig.sizes.__dict__,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run_bench(settings: Settings, quick: bool, out: Path, say: Say) -> dict[str, Any]:
    handle = acquire_broker(settings, say)
    settings = settings.model_copy(update={"bootstrap_servers": handle.bootstrap_servers})
    rig = Rig(settings, quick, say)
    try:
        results = run(rig)
    finally:
        rig.cleanup()
    results["targets"] = [{"target": t, "measured": m, "met": ok} for t, m, ok in targets(results)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results
