"""`estop stop`: stop a campaign, or every campaign, and wait for the confirmation."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from streams.cli.common import handles_errors, say
from streams.exceptions import UsageError
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.control.stop import StopResult


@click.command()
@click.argument("campaign_id", required=False)
@click.option("--all", "stop_everything", is_flag=True,
              help="The kill switch: stop every campaign no command has stopped on every channel, "
                   "whatever its status says, on every channel.")
@click.option("--reason", default="", help="Why the campaign is stopped (shown everywhere); "
                                          "required unless --dry-run.")
@click.option("--channel", "channels", multiple=True,
              help="Stop only these channels (default: every channel).")
@click.option("--dry-run", is_flag=True,
              help="Write nothing: show what the stop would halt now, stage by stage and channel "
                   "by channel, and what could still reach recipients.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for every live worker to confirm (default ESTOP_STOP_TIMEOUT_S, 30).")
@click.option("--force", is_flag=True, help="Stop a campaign not (yet) seen Sending or Finished.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_obj
@handles_errors
def stop(settings: Settings, campaign_id: str | None, stop_everything: bool, reason: str,
         channels: tuple[str, ...], dry_run: bool, timeout_s: float | None, force: bool,
         as_json: bool) -> None:
    """Stop a campaign on every channel (or some), or every campaign with --all, and wait until
    it is confirmed. The stop is recorded as requested by your Kafka user (ESTOP_SASL_USERNAME),
    or your OS user on a cluster without authentication, and audited. With --dry-run, show what
    it would halt and write nothing."""
    from streams.control.exceptions import StopNotConfirmedError, StopsIncompleteError
    from streams.control.stop import audited_stop, audited_stop_all
    from streams.security.audit import cli_actor
    from streams.serde import serdes_for

    serdes = serdes_for(settings)
    if dry_run:
        from streams.control.preview import describe, preview_with_store

        if stop_everything or not campaign_id:
            raise UsageError("--dry-run previews the stop of one CAMPAIGN")
        impact = preview_with_store(settings, serdes, campaign_id, list(channels))
        click.echo(json.dumps(impact.as_dict()) if as_json else describe(impact))
        return
    actor = cli_actor(settings)
    timeout = settings.stop_timeout_s if timeout_s is None else timeout_s
    if stop_everything:
        if campaign_id or channels or force:
            raise UsageError("--all stops every campaign on every channel: give no CAMPAIGN, "
                             "--channel or --force with it")
        results = audited_stop_all(settings, serdes, actor, reason, timeout)
        _warn_unaudited(results)
        if as_json:
            click.echo(json.dumps({"stopped": [r.as_dict() for r in results]}))
        elif not results:
            click.echo("every campaign is stopped already; nothing written")
        for result in [] if as_json else results:
            for line in result.lines():
                click.echo(line)
        failed = [r for r in results if r.error is not None]
        if failed:
            raise StopsIncompleteError(
                f"{len(failed)} campaign(s) could not be stopped, every other one was: "
                + "; ".join(f"{r.campaign_id!r}: {r.error}" for r in failed))
        unconfirmed = [r.campaign_id for r in results if not r.confirmed]
        if unconfirmed:
            raise StopNotConfirmedError(f"stop of {', '.join(unconfirmed)} not confirmed within "
                                        f"{timeout:g}s; it stays in force")
        return
    if not campaign_id:
        raise UsageError("name the CAMPAIGN to stop (or --all for every campaign)")
    result = audited_stop(settings, serdes, actor, campaign_id, reason, list(channels), timeout, force)
    _warn_unaudited([result])
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        for line in result.lines():
            click.echo(line)
    if not result.confirmed:
        raise StopNotConfirmedError(
            f"stop of {campaign_id} not confirmed within {timeout:g}s; it stays in force"
        )


def _warn_unaudited(results: list[StopResult]) -> None:
    """The stop stands; say once that its audit event could not be written."""
    problem = next((r.audit_problem for r in results if r.audit_problem), None)
    if problem:
        say(f"estop: warning: {problem}")
