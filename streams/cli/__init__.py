"""The ``estop`` command: one module per command or group of commands, the shared error handling
in ``common``. User mistakes and unreachable services end in one line and an exit code; only
bugs show a traceback."""

from __future__ import annotations

import logging
import sys

import click

from streams.cli import (
    bench,
    broker,
    campaign,
    demo,
    mta,
    report,
    rules,
    security,
    stop,
    topics,
    worker,
)
from streams.settings import load_settings


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """Emergency stop for multi-channel campaigns on Kafka."""
    # A one-shot command speaks in its own lines (a user mistake is one line). The unreadable
    # records it passes over are counted here and logged by the long-running control plane,
    # which reads the same topics.
    logging.getLogger("streams.kafka.deadletter").addHandler(logging.NullHandler())
    try:
        ctx.obj = load_settings()
    except Exception as exc:  # pydantic ValidationError: a bad ESTOP_* variable
        click.echo(f"estop: bad setting: {exc}", err=True)
        sys.exit(2)


for command in (broker.broker, security.security, mta.mta, topics.topics, topics.schemas,
                worker.worker, worker.control, campaign.launch, campaign.relaunch, campaign.release,
                campaign.status, stop.stop, demo.demo, report.report, report.export, bench.bench,
                rules.rules):
    main.add_command(command)

__all__ = ["main"]
