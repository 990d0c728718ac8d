"""`estop launch`, `estop relaunch` and `estop status`: a campaign's requests and lifecycle."""

from __future__ import annotations

import json

import click

from streams.cli.common import CHANNEL_OPTION, audited_cli, handles_errors, say
from streams.exceptions import EstopError, UsageError
from streams.settings import Settings


@click.command()
@click.option("--campaign", "campaign_id", required=True, help="Campaign id.")
@click.option("--channel", "channels", multiple=True, type=CHANNEL_OPTION, required=True)
@click.option("--recipients", type=click.IntRange(min=1), required=True)
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Recipients queued per second (default: as fast as Kafka takes them).")
@click.option("--canary", "canary_text", default=None, metavar="PERCENT",
              help="Queue this share of each channel's audience first (e.g. 2%) and the rest only "
                   "once the campaign went --hold seconds without a stop, or `estop release` "
                   "releases it; run the same command again after a crash to resume it.")
@click.option("--hold", "hold_s", type=click.FloatRange(min=0), default=None,
              help="Seconds a canary holds the rest (default ESTOP_CANARY_HOLD_S, 600).")
@click.pass_obj
@handles_errors
def launch(settings: Settings, campaign_id: str, channels: tuple[str, ...], recipients: int,
           rate: float | None, canary_text: str | None, hold_s: float | None) -> None:
    """Queue a campaign the way the campaign engine would (Sending, requests, Finished)."""
    from rich.progress import Progress

    from streams.campaigns.canary import parse_share
    from streams.campaigns.launcher import launch as run_launch
    from streams.kafka.clients import wait_for_broker
    from streams.models.ids import check_id
    from streams.serde import serdes_for

    check_id(campaign_id)
    share = parse_share(canary_text) if canary_text is not None else None
    if hold_s is not None and share is None:
        raise UsageError("--hold is the hold of a canary: give --canary PERCENT with it")
    wait_for_broker(settings)
    channel_list = list(dict.fromkeys(channels))
    if share is not None:
        hold = settings.canary_hold_s if hold_s is None else hold_s
        say(f"canary: {share:.2%} of the audience first, the rest after {hold:g}s without a stop "
            f"(or `estop release {campaign_id}`)")
    with Progress(transient=False) as progress:
        task = progress.add_task(f"queueing {campaign_id}", total=recipients * len(channel_list))
        result = run_launch(settings, serdes_for(settings), campaign_id,
                            channel_list, recipients, rate,
                            progress=lambda n: progress.advance(task, n), canary=share,
                            hold_s=hold_s)
    if share is not None:
        click.echo(f"{campaign_id}: canary " + (f"released by {result.released_by}"
                                                if result.released_by else "stopped during the hold"))
    click.echo(f"{campaign_id}: {result.state}; queued "
               + ", ".join(f"{c} {n:,}" for c, n in result.queued.items()))
    for channel, count in result.never_queued.items():
        click.echo(f"  {channel}: {count:,} never queued (reported as notSent, stage sending)")


@click.command()
@click.argument("campaign_id")
@click.option("--as", "new_id", required=True, help="Id of the new campaign.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Recipients queued per second (default: as fast as Kafka takes them).")
@click.pass_obj
@handles_errors
def relaunch(settings: Settings, campaign_id: str, new_id: str, rate: float | None) -> None:
    """Queue exactly the notSent recipients of a stopped campaign as a new campaign."""
    from streams.campaigns.lifecycle import read_campaigns, read_control
    from streams.campaigns.relaunch import plan_relaunch
    from streams.campaigns.relaunch import relaunch as run_relaunch
    from streams.kafka.clients import wait_for_broker
    from streams.models.ids import check_id
    from streams.security import audit
    from streams.serde import serdes_for
    from streams.sink.store import open_store

    check_id(campaign_id)
    check_id(new_id, "new campaign id")
    serdes = serdes_for(settings)
    wait_for_broker(settings)
    store = open_store(settings)
    try:
        known = (set(read_campaigns(settings, serdes)) | read_control(settings, serdes).campaigns()
                 | set(store.campaigns()))
        plan = plan_relaunch(store, campaign_id, new_id, known)
    finally:
        store.close()
    channels = sorted(plan.audience)
    audited_cli(settings, audit.RELAUNCH, audit.ACCEPTED, campaign_id, channels,
                 f"as {new_id}: {plan.recipients:,} notSent recipient(s)")
    try:
        result = run_relaunch(settings, serdes, plan, rate)
    except EstopError as exc:
        audited_cli(settings, audit.RELAUNCH, audit.FAILED, campaign_id, channels,
                     f"as {new_id}: {exc}")
        raise
    click.echo(f"{plan.campaign_id}: {result.state}; relaunched the notSent recipients of "
               f"{campaign_id}: " + ", ".join(f"{c} {n:,}" for c, n in result.queued.items()))
    if plan.foreign:
        click.echo(f"  left out {plan.foreign:,} notSent row(s) whose message ids {campaign_id} "
                   "was never planned with")


@click.command()
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_obj
@handles_errors
def status(settings: Settings, campaign_id: str, as_json: bool) -> None:
    """Lifecycle state and per-channel counts of a campaign."""
    from streams.campaigns.status import campaign_status, status_lines
    from streams.kafka.clients import wait_for_broker
    from streams.serde import serdes_for

    wait_for_broker(settings)
    report = campaign_status(settings, serdes_for(settings), campaign_id)
    if as_json:
        click.echo(json.dumps(report))
        return
    for line in status_lines(report):
        click.echo(line)


@click.command()
@click.argument("campaign_id")
@click.pass_obj
@handles_errors
def release(settings: Settings, campaign_id: str) -> None:
    """Release the rest of a canary launch now, instead of when its hold passes; recorded as
    released by your Kafka user (your OS user on a cluster without authentication), audited."""
    from streams.campaigns.canary import release as release_canary
    from streams.kafka.clients import wait_for_broker
    from streams.models.ids import check_id
    from streams.security import audit
    from streams.serde import serdes_for

    check_id(campaign_id)
    wait_for_broker(settings)
    actor = audit.cli_actor(settings)
    try:
        state = release_canary(settings, serdes_for(settings), campaign_id, actor.name)
    except EstopError as exc:
        audited_cli(settings, audit.RELEASE, audit.REJECTED, campaign_id, [], str(exc))
        raise
    audited_cli(settings, audit.RELEASE, audit.ACCEPTED, campaign_id, sorted(state["cohort"]),
                "the rest of the canary released")
    click.echo(f"{campaign_id}: canary released by {actor.name}; the launcher queues the rest")
