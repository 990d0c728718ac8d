"""What every command shares: error handling, the channel choice, timestamps
and the audit of what a command did."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from streams.exceptions import EstopError
from streams.security.exceptions import AccessDeniedError
from streams.security.refusals import who
from streams.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

CHANNEL_OPTION = click.Choice(["email", "sms", "push", "webpush"])


def say(text: str) -> None:
    """A warning or progress line for the user, on stderr (stdout may be JSON)."""
    click.echo(text, err=True)


def announce(line: str) -> None:
    """A line a supervisor waits for (a ready line): flushed at once."""
    click.echo(line)
    sys.stdout.flush()


def log_to_stderr() -> None:
    """The log of a long-running process (worker, MTA agent) on stderr; stdout keeps its
    ready line."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def handles_errors(func: F) -> F:
    """A deliberate error (user mistake, unreachable service) ends the command in one line and
    its exit code; only bugs show a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EstopError as exc:
            if isinstance(exc, AccessDeniedError):
                # Deep code (a consumer loop) may not know the principal; the command does.
                settings = click.get_current_context().find_object(Settings)
                if settings is not None:
                    exc = exc.naming(who(settings))
            click.echo(f"estop: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


def audited_cli(settings: Settings, action: str, outcome: str, campaign_id: str,
                channels: list[str], detail: str) -> None:
    """Audit what the command did under its identity (the Kafka user, else the OS user); say
    so when the event could not be written (what it did stands)."""
    from streams.security import audit
    from streams.serde import serdes_for

    entry = audit.event(settings, audit.cli_actor(settings), action, outcome, campaign_id,
                        channels=channels, detail=detail)
    problem = audit.record(settings, serdes_for(settings), entry)
    if problem:
        say(f"estop: warning: {problem}")
