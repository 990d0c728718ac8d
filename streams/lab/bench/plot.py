"""The table on stdout and the PNG beside the JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _cpu(figures: dict[str, Any]) -> str:
    return f"{figures['cpu_us_per_msg']:.1f} µs ({figures['cpu_ratio']:.2f})"


def print_table(results: dict[str, Any], console: Console) -> None:
    base = results["baseline"]
    table = Table(title="estop bench (ratios against the raw baseline measured in this run)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("CPU per message (ratio)", justify="right")
    evidence = results["design_evidence"]
    view = results["control_view"]
    rows = [
        ("baseline pass-through (raw confluent-kafka)",
         f"{base['passthrough_msgs_per_s']:,.0f} msg/s", "1.00", f"{base['cpu_us_per_msg']:.1f} µs"),
        ("raw produce-to-consume latency p50 / p99",
         f"{base['latency_p50_ms']:.1f} / {base['latency_p99_ms']:.1f} ms", "", ""),
        ("gate pass-through", f"{results['gate']['passthrough_msgs_per_s']:,.0f} msg/s",
         f"{results['gate']['ratio']:.2f}", _cpu(results["gate"])),
        (f"drain of a stopped backlog ({results['drain']['backlog']:,})",
         f"{results['drain']['msgs_per_s']:,.0f} msg/s", f"{results['drain']['ratio']:.2f}",
         _cpu(results["drain"])),
        (f"handoffs to a provider that takes them at once ({results['handoffs']['messages']:,})",
         f"{results['handoffs']['msgs_per_s']:,.0f} msg/s", f"{results['handoffs']['ratio']:.2f}",
         _cpu(results["handoffs"])),
        (f"ledger restore ({results['ledger_restore']['entries']:,} entries of a partition)",
         f"{results['ledger_restore']['seconds_per_100k_entries']:.2f} s per 100,000 entries", "", ""),
        (f"stop propagation p50 / p99 ({results['stop_propagation_ms']['samples']} samples)",
         f"{results['stop_propagation_ms']['p50']:.1f} / {results['stop_propagation_ms']['p99']:.1f} ms",
         "", ""),
        *((f"  of which {role} processes ({found['samples']} samples)",
           f"{found['p50']:.1f} / {found['p99']:.1f} ms", "", "")
          for role, found in sorted(results["stop_propagation_ms"].get("by_role", {}).items())),
        ("guardrail detection p50 / p99: crossing feedback -> stop confirmed "
         f"({results['guardrail_detection']['samples']} trips)",
         f"{results['guardrail_detection']['to_confirmed_p50']:.0f} / "
         f"{results['guardrail_detection']['to_confirmed_p99']:.0f} ms", "", ""),
        ("  of which crossing feedback -> stop command written p50 / p99",
         f"{results['guardrail_detection']['to_stop_command_p50']:.0f} / "
         f"{results['guardrail_detection']['to_stop_command_p99']:.0f} ms", "", ""),
        ("  messages handed to the provider meanwhile p50 / max "
         f"(at {results['guardrail_detection']['launch_rate']:,.0f} queued/s)",
         f"{results['guardrail_detection']['handed_between_p50']:,.0f} / "
         f"{results['guardrail_detection']['handed_between_max']:,}", "", ""),
        ("leak after confirmation / between ack and confirmation",
         f"{results['leak']['after_confirm']} / {results['leak']['between_ack_and_confirm']}", "", ""),
        (f"analytics complete after the stop ({results['reference']['halted']:,} halted)",
         f"{results['analytics_complete_s']:.1f} s", "", ""),
        (f"control view bootstrap ({view['commands']:,} commands)",
         f"{view['bootstrap_s']:.2f} s, {view['bytes_per_command']:.0f} B/campaign", "", ""),
        ("one gate / two gates", f"{results['scaling']['one_gate_msgs_per_s']:,.0f} / "
         f"{results['scaling']['two_gates_msgs_per_s']:,.0f} msg/s", f"{results['scaling']['ratio']:.2f}",
         ""),
        ("same forward job on aiokafka", f"{evidence['aiokafka_msgs_per_s']:,.0f} msg/s",
         f"{evidence['aiokafka_ratio']:.2f}", _cpu(evidence["aiokafka"])),
        ("same forward job as a Faust agent", f"{evidence['faust_agent_msgs_per_s']:,.0f} msg/s",
         f"{evidence['faust_ratio']:.2f}", _cpu(evidence["faust"])),
    ]
    memory = results["reference"]["worker_memory"]
    growth = memory["growth_bytes_per_100k_in_flight"]
    rows.append(("pipeline worker peak RSS (reference scenario) / growth per 100,000 in flight",
                 f"{memory['peak_rss_bytes'] / 2**20:,.0f} MiB / "
                 + ("n/a" if growth is None else f"{growth / 2**20:,.1f} MiB"), "", ""))
    for name, peer in results["peers"].items():
        rows.append((f"gate job: {name} (from joining its group)", f"{peer['msgs_per_s']:,.0f} msg/s",
                     f"{peer['ratio']:.2f}", _cpu(peer)))
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

    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 5.5))
    peers = results["peers"]
    labels = ["gate", "drain", "2 gates", "aiokafka forward", "Faust forward",
              *(f"{name} (from join)" for name in peers)]
    ratios = [results["gate"]["ratio"], results["drain"]["ratio"],
              results["scaling"]["two_gates_msgs_per_s"] / results["baseline"]["passthrough_msgs_per_s"],
              results["design_evidence"]["aiokafka_ratio"], results["design_evidence"]["faust_ratio"],
              *(peer["ratio"] for peer in peers.values())]
    colors = ["tab:blue", "tab:orange", "tab:blue", "tab:gray", "tab:gray",
              *("tab:blue" if name == "estop gate" else "tab:green" for name in peers)]
    left.bar(labels, ratios, color=colors)
    left.axvline(4.5, color="gray", linewidth=0.5)  # the same gate job on each framework follows
    left.tick_params(axis="x", labelsize=8, labelrotation=35)
    plt.setp(left.get_xticklabels(), ha="right", rotation_mode="anchor")
    left.axhline(1.0, color="black", linewidth=1, label="raw confluent-kafka baseline")
    left.axhline(0.6, color="red", linestyle="--", linewidth=1, label="gate target 0.6")
    left.axhline(0.5, color="orange", linestyle=":", linewidth=1, label="drain target 0.5")
    left.set_ylabel("throughput / baseline")
    left.set_title("Throughput ratios (same run, same broker)")
    left.legend()
    raw = results["stop_propagation_ms"]["raw_latency_samples_ms"]
    stops = results["stop_propagation_ms"]["samples_ms"]
    detection = results["guardrail_detection"]["to_confirmed_ms"]
    right.boxplot([raw, stops, detection], tick_labels=["raw produce->consume", "stop propagation",
                                                        "guardrail: feedback->stop confirmed"],
                  whis=(1, 99))
    right.set_ylabel("ms")
    right.set_yscale("log")
    right.set_title("Latency distributions (whiskers p1-p99)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
