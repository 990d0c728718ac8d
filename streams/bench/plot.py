"""The table on stdout and the PNG beside the JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def print_table(results: dict[str, Any], console: Console) -> None:
    base = results["baseline"]
    table = Table(title="estop bench (ratios against the raw baseline measured in this run)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("ratio", justify="right")
    rows = [
        ("baseline pass-through (raw confluent-kafka)",
         f"{base['passthrough_msgs_per_s']:,.0f} msg/s", "1.00"),
        ("raw produce-to-consume latency p50 / p99",
         f"{base['latency_p50_ms']:.1f} / {base['latency_p99_ms']:.1f} ms", ""),
        ("gate pass-through", f"{results['gate']['passthrough_msgs_per_s']:,.0f} msg/s",
         f"{results['gate']['ratio']:.2f}"),
        (f"drain of a stopped backlog ({results['drain']['backlog']:,})",
         f"{results['drain']['msgs_per_s']:,.0f} msg/s", f"{results['drain']['ratio']:.2f}"),
        (f"stop propagation p50 / p99 ({results['stop_propagation_ms']['samples']} samples)",
         f"{results['stop_propagation_ms']['p50']:.1f} / {results['stop_propagation_ms']['p99']:.1f} ms", ""),
        ("leak after confirmation / between ack and confirmation",
         f"{results['leak']['after_confirm']} / {results['leak']['between_ack_and_confirm']}", ""),
        (f"analytics complete after the stop ({results['reference']['halted']:,} halted)",
         f"{results['analytics_complete_s']:.1f} s", ""),
        (f"control view bootstrap ({results['control_view']['commands']:,} commands)",
         f"{results['control_view']['bootstrap_s']:.2f} s, "
         f"{results['control_view']['bytes_per_command']:.0f} B/command", ""),
        ("one gate / two gates", f"{results['scaling']['one_gate_msgs_per_s']:,.0f} / "
         f"{results['scaling']['two_gates_msgs_per_s']:,.0f} msg/s", f"{results['scaling']['ratio']:.2f}"),
        ("same forward job on aiokafka", f"{results['design_evidence']['aiokafka_msgs_per_s']:,.0f} msg/s",
         f"{results['design_evidence']['aiokafka_ratio']:.2f}"),
        ("same forward job as a Faust agent",
         f"{results['design_evidence']['faust_agent_msgs_per_s']:,.0f} msg/s",
         f"{results['design_evidence']['faust_ratio']:.2f}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    targets = Table(title="targets")
    targets.add_column("target")
    targets.add_column("measured", justify="right")
    targets.add_column("met")
    for target in results["targets"]:
        targets.add_row(target["target"], target["measured"], "yes" if target["met"] else "NO")
    console.print(targets)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    labels = ["gate", "drain", "2 gates", "aiokafka", "faust"]
    ratios = [results["gate"]["ratio"], results["drain"]["ratio"],
              results["scaling"]["two_gates_msgs_per_s"] / results["baseline"]["passthrough_msgs_per_s"],
              results["design_evidence"]["aiokafka_ratio"], results["design_evidence"]["faust_ratio"]]
    left.bar(labels, ratios, color=["tab:blue", "tab:orange", "tab:blue", "tab:gray", "tab:gray"])
    left.axhline(1.0, color="black", linewidth=1, label="raw confluent-kafka baseline")
    left.axhline(0.5, color="red", linestyle="--", linewidth=1, label="target 0.5")
    left.set_ylabel("throughput / baseline")
    left.set_title("Throughput ratios (same run, same broker)")
    left.legend()
    raw = results["stop_propagation_ms"]["raw_latency_samples_ms"]
    stops = results["stop_propagation_ms"]["samples_ms"]
    right.boxplot([raw, stops], tick_labels=["raw produce->consume", "stop propagation"], whis=(1, 99))
    right.set_ylabel("ms")
    right.set_yscale("log")
    right.set_title("Latency distributions (whiskers p1-p99)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
