"""``estop rules``: list, set and delete guardrail rules (``streams.guardrails.rules``)."""

from __future__ import annotations

import json

import click

from streams.cli.common import handles_errors
from streams.guardrails.rules import ALL, METRICS, WINDOWS, delete_rule, read_rules, set_rule, summary
from streams.kafka.clients import wait_for_broker
from streams.models import CHANNELS
from streams.security import audit
from streams.serde import serdes_for
from streams.settings import Settings


@click.group()
def rules() -> None:
    """Guardrail rules: a campaign whose bounces, complaints, ... reach a rule's threshold is
    stopped by the guardrail processor (`estop worker --role guardrail`; docs/guardrails.md)."""


@rules.command("list")
@click.option("--campaign", default=None, help="Show the rules that apply to this campaign.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
@handles_errors
def rules_list(settings: Settings, campaign: str | None, as_json: bool) -> None:
    """The defaults for every campaign, and each campaign's own rules (or those of --campaign)."""
    wait_for_broker(settings)
    book = read_rules(settings, serdes_for(settings))
    shown = book.effective(campaign) if campaign else [*book.defaults(),
                                                        *sorted((r for r in book.stored.values()
                                                                 if r.scope != ALL),
                                                                key=lambda r: r.key)]
    if as_json:
        click.echo(json.dumps([r.as_json() for r in shown], indent=2))
        return
    for rule in shown:
        scope = "every campaign" if rule.scope == ALL else rule.scope
        origin = " (built in)" if rule.updated_by == "builtin" else f" (set by {rule.updated_by})"
        click.echo(f"{rule.name:<18} {scope:<24} {summary(rule)}{origin}")


@rules.command("set")
@click.argument("name")
@click.option("--campaign", default=None, help="The campaign the rule is for (default: every campaign).")
@click.option("--metric", type=click.Choice(METRICS), default=None)
@click.option("--threshold", type=float, default=None, help="The rate that trips it, e.g. 0.05 for 5%.")
@click.option("--min-sample", type=int, default=None, help="Outcomes in the window before it counts.")
@click.option("--window", type=click.Choice(WINDOWS), default=None,
              help="first: the first --window-size outcomes; sliding: the last --window-size seconds.")
@click.option("--window-size", type=int, default=None)
@click.option("--channel", "channels", multiple=True, type=click.Choice(CHANNELS),
              help="Channels it watches (default: every channel).")
@click.option("--disable", is_flag=True, help="Switch it off (for --campaign: the default too).")
@click.option("--enable", is_flag=True)
@click.pass_obj
@handles_errors
def rules_set(settings: Settings, name: str, campaign: str | None, metric: str | None,
              threshold: float | None, min_sample: int | None, window: str | None,
              window_size: int | None, channels: tuple[str, ...], disable: bool,
              enable: bool) -> None:
    """Set rule NAME (fields not given keep the value of the rule it changes); audited."""
    data = {"name": name, "scope": campaign or ALL, "metric": metric, "threshold": threshold,
            "min_sample": min_sample, "window": window, "window_size": window_size,
            "channels": list(channels) or None,
            "enabled": False if disable else True if enable else None}
    wait_for_broker(settings)
    rule = set_rule(settings, serdes_for(settings), audit.cli_actor(settings), data)
    click.echo(f"{rule.name} for {'every campaign' if rule.scope == ALL else rule.scope}: {summary(rule)}")


@rules.command("delete")
@click.argument("name")
@click.option("--campaign", default=None, help="The campaign's own rule (default: the stored default).")
@click.pass_obj
@handles_errors
def rules_delete(settings: Settings, name: str, campaign: str | None) -> None:
    """Remove a stored rule: a campaign's falls back to the default, a default to the built-in
    one; audited."""
    wait_for_broker(settings)
    delete_rule(settings, serdes_for(settings), audit.cli_actor(settings), campaign or ALL, name)
    click.echo(f"deleted {name} for {campaign or 'every campaign'}")
