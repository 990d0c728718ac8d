"""`estop topics` and `estop schemas`: what the pipeline needs on the broker and the registry."""

from __future__ import annotations

from pathlib import Path

import click

from streams.cli.common import handles_errors
from streams.exceptions import UsageError
from streams.settings import Settings


@click.group()
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


@click.group()
def schemas() -> None:
    """Avro schemas of the events in a schema registry (ESTOP_SCHEMA_REGISTRY_URL)."""


@schemas.command("register")
@click.option("--dir", "directory", default=None,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Register the *.avsc files of this folder (default: the schemas estop ships), "
                   "e.g. to check a changed schema against the registry's compatibility rule.")
@click.pass_obj
@handles_errors
def schemas_register(settings: Settings, directory: Path | None) -> None:
    """Register every schema under its subject (<topic prefix><namespace>.<name>); a schema the
    registry's compatibility rule refuses ends the command with exit code 2. Run it before the
    workers start: they otherwise register on first use, and several registering a new subject
    at once can leave it two identical versions."""
    from streams.serde import SCHEMA_DIR
    from streams.serde.registry import ConfluentRegistry, register_schemas

    if not settings.schema_registry_url:
        raise UsageError("no schema registry: set ESTOP_SCHEMA_REGISTRY_URL (without one, values "
                         "are single-object encoded and need no registry)")
    registry = ConfluentRegistry(settings.schema_registry_url)
    for subject, schema_id in register_schemas(registry, settings.topic_prefix, directory or SCHEMA_DIR):
        click.echo(f"{subject}: id {schema_id}")
