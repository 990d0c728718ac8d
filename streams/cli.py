"""The ``estop`` command. User mistakes and unreachable services end in one line and an exit
code; only bugs show a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from streams.exceptions import EstopError
from streams.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def _say(text: str) -> None:
    click.echo(text, err=True)


def handles_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EstopError as exc:
            click.echo(f"estop: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Emergency stop for multi-channel campaigns on Kafka."""
    try:
        ctx.obj = load_settings()
    except Exception as exc:  # pydantic ValidationError: a bad ESTOP_* variable
        click.echo(f"estop: bad setting: {exc}", err=True)
        sys.exit(2)


# -- broker -----------------------------------------------------------------------------------


@main.group()
def broker() -> None:
    """The local single-node KRaft broker (Apache Kafka jars from Maven Central)."""


@broker.command("start")
@click.pass_obj
@handles_errors
def broker_start(settings: Settings) -> None:
    """Start the local broker (resolves jars once); says so if it already runs."""
    from streams.kafka.broker import LocalBroker

    LocalBroker(settings, click.echo).start()


@broker.command("stop")
@click.pass_obj
@handles_errors
def broker_stop(settings: Settings) -> None:
    """Stop the local broker cleanly; exits 0 when none runs."""
    from streams.kafka.broker import LocalBroker

    LocalBroker(settings, click.echo).stop()


@broker.command("status")
@click.pass_obj
@handles_errors
def broker_status(settings: Settings) -> None:
    """Say whether the local broker runs, its address and its Kafka version."""
    from streams.kafka.broker import LocalBroker

    status = LocalBroker(settings).status()
    state = f"running (pid {status.pid})" if status.running else "not running"
    click.echo(f"broker {state} at {status.address}, Apache Kafka {status.version}")
    if not status.running:
        sys.exit(1)


# -- topics -----------------------------------------------------------------------------------


@main.group()
def topics() -> None:
    """Topics of the pipeline."""


@topics.command("create")
@click.pass_obj
@handles_errors
def topics_create(settings: Settings) -> None:
    """Create every topic the pipeline needs; idempotent, reports drift from the settings."""
    from streams.kafka.topics import create_topics

    report = create_topics(settings, click.echo)
    click.echo(f"{len(report.created)} created, {len(report.existed)} existed, "
               f"{len(report.drift)} differ from the settings")
