"""The benchmark's targets, each a limit on a figure of the run: the limits are named here, in
one place, and scaled to the run's size where they are stated for a size."""

from __future__ import annotations

from typing import Any

from streams.lab.bench.peers import GUARANTEES

GATE_RATIO = 0.6  # the gate's pass-through, as a share of the raw consume-and-forward baseline
DRAIN_RATIO = 0.5  # the drain of a stopped backlog, likewise
LATENCY_FACTOR, LATENCY_SLACK_MS = 2, 20  # stop propagation p99 against the raw latency's p99
LEAK_AFTER_CONFIRM = 0  # handoffs after a stop was confirmed
ANALYTICS_S, ANALYTICS_HALTED = 10.0, 450_000  # analytics complete after a stop, for this many
BOOTSTRAP_S, BOOTSTRAP_COMMANDS = 10.0, 1_000_000  # control view bootstrap, for this many commands
VIEW_BYTES_PER_CAMPAIGN = 200  # control view memory per stopped campaign


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Each target with the figure measured and whether it is met."""
    base = results["baseline"]
    p99_limit = LATENCY_FACTOR * base["latency_p99_ms"] + LATENCY_SLACK_MS
    reference = results["reference"]
    analytics_limit = ANALYTICS_S * max(reference["halted"], 1) / ANALYTICS_HALTED
    view = results["control_view"]
    bootstrap_limit = BOOTSTRAP_S * view["commands"] / BOOTSTRAP_COMMANDS
    rows = [
        (f"gate pass-through >= {GATE_RATIO} x baseline", f"{results['gate']['ratio']:.2f}",
         results["gate"]["ratio"] >= GATE_RATIO),
        (f"drain >= {DRAIN_RATIO} x baseline", f"{results['drain']['ratio']:.2f}",
         results["drain"]["ratio"] >= DRAIN_RATIO),
        (f"stop propagation p99 <= {LATENCY_FACTOR} x raw p99 + {LATENCY_SLACK_MS} ms "
         f"({p99_limit:.1f} ms)",
         f"{results['stop_propagation_ms']['p99']:.1f} ms",
         results["stop_propagation_ms"]["p99"] <= p99_limit),
        (f"leak after confirmation == {LEAK_AFTER_CONFIRM}", str(results["leak"]["after_confirm"]),
         results["leak"]["after_confirm"] == LEAK_AFTER_CONFIRM),
        (f"analytics complete <= {analytics_limit:.1f} s for {reference['halted']:,} halted",
         f"{results['analytics_complete_s']:.1f} s", results["analytics_complete_s"] <= analytics_limit),
        (f"control view bootstrap <= {bootstrap_limit:.1f} s for {view['commands']:,} commands",
         f"{view['bootstrap_s']:.1f} s", view["bootstrap_s"] <= bootstrap_limit),
        (f"control view <= {VIEW_BYTES_PER_CAMPAIGN} bytes per stopped campaign",
         f"{view['bytes_per_command']:.0f} B", view["bytes_per_command"] <= VIEW_BYTES_PER_CAMPAIGN),
    ]
    peers = results["peers"]
    gate = peers["estop gate"]["msgs_per_s"]
    for guarantee in GUARANTEES:
        quix = peers[f"quixstreams {guarantee}"]["msgs_per_s"]
        rows.append((f"estop gate ahead of quixstreams {guarantee} (same job, same input)",
                     f"{gate:,.0f} vs {quix:,.0f} msg/s", gate > quix))
    return rows
