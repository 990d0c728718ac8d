"""`estop demo`: the reference scenario."""

from __future__ import annotations

import json

import click

from streams.cli.common import CHANNEL_OPTION, handles_errors, say
from streams.exceptions import EstopError, UsageError
from streams.settings import Settings

REAL_RECIPIENTS, REAL_STOP_AFTER, REAL_RATE = 3_000, 600, 100.0  # the demo through real protocols


@click.command(context_settings={"allow_extra_args": True})
@click.option("--recipients", type=click.IntRange(min=1), default=None,
              help="Recipients per channel [default: 500,000; 3,000 with --provider real].")
@click.option("--stop-after", type=click.IntRange(min=0), default=None,
              help="Stop once this many messages were sent [default: 50,000; 600 with --provider real].")
@click.option("--channels", "channels", multiple=True, type=CHANNEL_OPTION,
              help="Channels of the campaign, e.g. --channels email sms push webpush (default: email).")
@click.option("--provider-rate", type=click.FloatRange(min=1), default=None,
              help="Messages per second handed to each channel's provider [default: 5,000; 100 with "
                   "--provider real].")
@click.option("--provider", type=click.Choice(["simulated", "smtp", "real"]), default="simulated",
              show_default=True,
              help="smtp: email goes through the private Postfix (started if needed, see "
                   "`estop mta`), whose receiver goes down before the stop so mail waits there. "
                   "real: every channel over its real protocol on this machine: email through that "
                   "Postfix, SMS over SMPP to a local SMSC, web push and mobile push over HTTP to "
                   "local stand-ins of a push service and of FCM.")
@click.option("--outage-s", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="With --provider smtp or real: how long the email receiver is down before the stop.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def demo(settings: Settings, recipients: int | None, stop_after: int | None, channels: tuple[str, ...],
         provider_rate: float | None, provider: str, outage_s: float, as_json: bool) -> None:
    """The reference scenario: a 500,000-recipient email campaign stopped after about 50,000
    sent."""
    from streams.lab.demo import demo_progress, run_demo
    from streams.mta.local import LocalMta

    real = provider == "real"
    extra = click.get_current_context().args  # --channels email sms push: the values after the first
    unknown = [c for c in extra if c not in CHANNEL_OPTION.choices]
    if unknown:
        raise UsageError(f"unknown channel {unknown[0]!r} (channels: {', '.join(CHANNEL_OPTION.choices)})")
    channel_list = list(dict.fromkeys([*channels, *extra])) or ["email"]
    recipients = recipients or (REAL_RECIPIENTS if real else 500_000)
    stop_after = stop_after if stop_after is not None else (REAL_STOP_AFTER if real else 50_000)
    if stop_after >= recipients * len(channel_list):
        raise UsageError("--stop-after must be smaller than the number of planned messages")
    if provider == "smtp" and channel_list != ["email"]:
        raise UsageError("--provider smtp carries email only: leave out --channels or use "
                         "--channels email (--provider real carries every channel)")
    settings = settings.model_copy(update={
        "provider_rate": provider_rate or (REAL_RATE if real else 5000.0), "provider_delay_s": 1.0})
    through_mta = provider == "smtp" or (real and "email" in channel_list)
    if through_mta:  # started by the demo once it has a broker, for the agent to ship to
        settings = settings.model_copy(update={"email_provider": LocalMta(settings).provider_url})
    with demo_progress(transient=as_json) as progress:
        result = run_demo(settings, recipients, stop_after, channel_list,
                          say=progress.console.print if not as_json else say, progress=progress,
                          through_mta=through_mta, outage_s=outage_s, real=real)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    click.echo("")
    for line in result.lines(channel_list):
        click.echo(line)
    if not result.adds_up:
        raise EstopError("the demo's accounting does not add up (see above)")
