"""`estop worker` and `estop control`: the long-running processes."""

from __future__ import annotations

import sys

import click

from streams.cli.common import CHANNEL_OPTION, announce, handles_errors, log_to_stderr
from streams.exceptions import UsageError
from streams.settings import Settings


@click.command()
@click.option("--role", "roles", multiple=True,
              type=click.Choice(["gate", "dispatcher", "sink", "guardrail", "control"]),
              help="Run only these roles (default: every gate and dispatcher, and the sink); "
                   "`guardrail` runs the guardrail processor (docs/guardrails.md); "
                   "`control` alone runs the control plane, as `estop control` does.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics here (default ESTOP_METRICS_PORT; a taken port falls back to a free one).")
@click.option("--channel", "channels", multiple=True, type=CHANNEL_OPTION,
              help="Run only these channels (default: all four).")
@click.pass_obj
@handles_errors
def worker(settings: Settings, roles: tuple[str, ...], metrics_port: int | None,
           channels: tuple[str, ...]) -> None:
    """Run gates, dispatchers and the analytics sink; SIGTERM shuts down cleanly."""
    from streams.models import CHANNELS
    from streams.worker import ROLES, run_worker

    if "control" in roles:
        if set(roles) != {"control"} or channels or metrics_port is not None:
            raise UsageError("the control role runs in a process of its own, without --channel or "
                             "--metrics-port (its /metrics is on its HTTP port, ESTOP_CONTROL_PORT)")
        from streams.controlplane import run_control

        sys.exit(run_control(settings, announce))

    log_to_stderr()

    if metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": metrics_port})
    sys.exit(run_worker(settings, roles or ROLES, channels or CHANNELS, announce))


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="HTTP port of the API and /metrics (default ESTOP_CONTROL_PORT, 6066; 0 picks "
                   "a free one, printed in the ready line).")
@click.pass_obj
@handles_errors
def control(settings: Settings, port: int | None) -> None:
    """The control plane (faust-streaming): campaign HTTP API, stop confirmations, /metrics."""
    from streams.controlplane import run_control

    if port is not None:
        settings = settings.model_copy(update={"control_port": port})
    sys.exit(run_control(settings, announce))
