"""`estop report` and `estop export`: a campaign's outcomes (from the analytics store)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from streams.cli.common import CHANNEL_OPTION, audited_cli, handles_errors
from streams.settings import Settings


@click.command()
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--watch", is_flag=True, help="Refresh every second until interrupted.")
@click.pass_obj
@handles_errors
def report(settings: Settings, campaign_id: str, as_json: bool, watch: bool) -> None:
    """Exact sent/notSent split of a campaign: its outcomes from the analytics store, its state
    and who stopped it from campaign-control (what `estop status` and the console show)."""
    import time

    from rich.console import Console
    from rich.live import Live

    from streams.campaigns.status import campaign_report_now
    from streams.kafka.clients import wait_for_broker
    from streams.serde import serdes_for

    wait_for_broker(settings)
    serdes = serdes_for(settings)
    found = campaign_report_now(settings, serdes, campaign_id)
    if as_json and not watch:
        click.echo(json.dumps(found.as_dict()))
        return
    if not watch:
        Console().print(found.table())
        return
    with Live(found.table(), refresh_per_second=2) as live:
        try:
            while True:
                time.sleep(1)
                live.update(campaign_report_now(settings, serdes, campaign_id).table())
        except KeyboardInterrupt:
            pass


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
