"""`estop security`: principals, ACLs and tokens of a secured deployment."""

from __future__ import annotations

import click

from streams.cli.common import handles_errors
from streams.settings import Settings


@click.group()
def security() -> None:
    """Principals, ACLs and HTTP tokens of a secured deployment."""


@security.command("init")
@click.pass_obj
@handles_errors
def security_init(settings: Settings) -> None:
    """Create the SCRAM user of every role (operator, control, worker, analytics, engine) with
    least-privilege ACLs, one credentials file each, and the HTTP API tokens; idempotent."""
    from streams.security.setup import init_security

    result = init_security(settings, click.echo)
    click.echo(f"{len(result.users)} users, {result.acls} ACLs; use a role with "
               f"`set -a; . {next(iter(result.users.values()))}; set +a`")
