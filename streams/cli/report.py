"""`estop report` and `estop export`: a campaign's outcomes from the analytics store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from streams.cli.common import CHANNEL_OPTION, audited_cli, handles_errors, when
from streams.settings import Settings


@click.command()
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--watch", is_flag=True, help="Refresh every second until interrupted.")
@click.pass_obj
@handles_errors
def report(settings: Settings, campaign_id: str, as_json: bool, watch: bool) -> None:
    """Exact sent/notSent split of a campaign from the analytics store."""
    import time

    from rich.console import Console
    from rich.live import Live

    from streams.sink.report import campaign_report
    from streams.sink.store import open_store

    store = open_store(settings)
    try:
        data = campaign_report(store, campaign_id)
        if as_json and not watch:
            click.echo(json.dumps(data))
            return
        if not watch:
            Console().print(_report_table(data))
            return
        with Live(_report_table(data), refresh_per_second=2) as live:
            try:
                while True:
                    time.sleep(1)
                    live.update(_report_table(campaign_report(store, campaign_id)))
            except KeyboardInterrupt:
                pass
    finally:
        store.close()


def _report_table(data: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    stopped_by = f" by {data['stopped_by']}" if data.get("stopped_by") else ""
    table = Table(title=f"{data['campaign_id']}: {data['state'] or 'unknown state'}{stopped_by}")
    for column in ("channel", "planned", "sent", "notSent", "@sending", "@provider", "failed",
                   "pending"):
        table.add_column(column, justify="left" if column == "channel" else "right")
    for channel, c in data["by_channel"].items():
        stages = c["not_sent_by_stage"]
        table.add_row(channel, f"{c['planned']:,}", f"{c['sent']:,}", f"{c['not_sent']:,}",
                      f"{stages.get('sending', 0):,}", f"{stages.get('provider', 0):,}",
                      f"{c.get('failed', 0):,}", f"{c['pending']:,}")
    stages = data["not_sent_by_stage"]
    table.add_row("total", f"{data['total']:,}", f"{data['sent']:,}", f"{data['not_sent']:,}",
                  f"{stages.get('sending', 0):,}", f"{stages.get('provider', 0):,}",
                  f"{data.get('failed', 0):,}", f"{data['pending']:,}", style="bold")
    lines = []
    for stop in data["stops"]:
        channels = ", ".join(stop["channels"]) or "all channels"
        lines.append(f"stopped {channels} at {when(stop['requested_at'])} by {stop['requested_by']}: "
                     f"{stop['reason']} ({stop['acks']} acknowledgements)")
    if data["cancelled_at_provider"]:
        lines.append(f"{data['cancelled_at_provider']:,} cancelled at the provider (accepted by it, "
                     "removed from its queue by the stop)")
    if data.get("cancel_unconfirmed"):
        per_channel = ", ".join(f"{channel} {c['cancel_unconfirmed']:,}"
                                for channel, c in data["by_channel"].items() if c["cancel_unconfirmed"])
        lines.append(f"{data['cancel_unconfirmed']:,} cancel requested at the provider, not confirmed "
                     f"({per_channel}): counted notSent, though the provider did not prove they will "
                     "not be delivered; a delivery receipt that comes later counts one sent")
    if data["stop_to_last_halted_accounted_s"] is not None:
        lines.append(f"last halted message accounted {data['stop_to_last_halted_accounted_s']:.1f}s "
                     "after the stop")
    if data.get("audit"):
        lines.append("audit:")
    for entry in data.get("audit", []):
        lines.append("  " + _audit_line(entry))
    return Group(table, *(Text(line) for line in lines))


def _audit_line(entry: dict[str, Any]) -> str:
    """One audit event: when, what, outcome, who (role), via, from where, why."""
    role = f" ({entry['role']})" if entry.get("role") else ""
    detail = f": {entry['detail']}" if entry.get("detail") else ""
    command = f" command {entry['command_id']}" if entry.get("command_id") else ""
    return (f"{when(entry['at'])} {entry['action']} {entry['outcome']} by {entry['actor']}{role} "
            f"via {entry['via']} from {entry['source']}{command}{detail}")


@click.command()
@click.argument("campaign_id")
@click.option("--status", "outcome", type=click.Choice(["not_sent", "sent", "failed"]), required=True,
              help="Which recipients: those never sent (to re-target), those sent, or those the "
                   "provider never accepted.")
@click.option("--channel", type=CHANNEL_OPTION, default=None)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CSV file to write (replaced atomically).")
@click.pass_obj
@handles_errors
def export(settings: Settings, campaign_id: str, outcome: str, channel: str | None, out: Path) -> None:
    """One CSV row per recipient of a campaign with the given outcome."""
    from streams.models.ids import check_id
    from streams.security import audit
    from streams.sink.report import export_recipients
    from streams.sink.store import open_store

    check_id(campaign_id)
    store = open_store(settings)
    try:
        rows = export_recipients(store, campaign_id, outcome, channel, out)
    finally:
        store.close()
    audited_cli(settings, audit.EXPORT, audit.ACCEPTED, campaign_id, [channel] if channel else [],
                 f"{rows:,} {outcome} row(s) to {out}")
    click.echo(f"wrote {rows:,} {outcome} rows of {campaign_id} to {out}")
