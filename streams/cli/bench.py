"""`estop bench`: the benchmark against raw Kafka."""

from __future__ import annotations

from pathlib import Path

import click

from streams.cli.common import handles_errors
from streams.settings import Settings


@click.command()
@click.option("--quick", is_flag=True,
              help="Small sizes: the whole run ends within about 5 minutes (the first run also "
                   "prepares the peers: a quixstreams virtualenv and a Maven build).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("bench/results/latest.json"), show_default=True)
@click.pass_obj
@handles_errors
def bench(settings: Settings, quick: bool, out: Path) -> None:
    """Measure throughput, stop latency, leaks and analytics completion against raw Kafka."""
    from rich.console import Console

    from streams.lab.bench.plot import plot, print_table
    from streams.lab.bench.run import run_bench

    console = Console()
    started = __import__("time").monotonic()
    results = run_bench(settings, quick, out, lambda line: console.print(f"[dim]{line}[/dim]"))
    plot(results, out.with_suffix(".png"))
    print_table(results, console)
    console.print(f"wrote {out} and {out.with_suffix('.png')} "
                  f"in {__import__('time').monotonic() - started:.0f}s")
