"""`estop mta`: the private Postfix, its receiver and the MTA agent."""

from __future__ import annotations

import sys

import click

from streams.cli.common import announce, handles_errors, log_to_stderr
from streams.settings import Settings


@click.group()
def mta() -> None:
    """The private MTA for email: Postfix run from the data folder, a receiver for it, and the
    agent that dispatchers on any host reach it through."""


@mta.command("start")
@click.option("--without-receiver", is_flag=True,
              help="Leave the receiver down: accepted mail waits in Postfix's deferred queue.")
@click.pass_obj
@handles_errors
def mta_start(settings: Settings, without_receiver: bool) -> None:
    """Start Postfix, its receiver and the MTA agent (in the background); says how to send
    email through them."""
    from streams.mta.local import LocalMta

    local = LocalMta(settings)
    local.start(receiver=not without_receiver)
    status = local.status()
    click.echo(f"Postfix running at {status.smtp} (folder {status.home}); receiver "
               f"{'at ' + status.receiver if status.receiver_running else 'down'}")
    click.echo(f"MTA agent running at {status.agent} (pid {local.agent.pid()}, log "
               f"{local.agent.files.log}): Postfix's log -> "
               f"{settings.topics.receipts('email')} at {settings.bootstrap_servers}; its token is "
               f"{'ESTOP_MTA_AGENT_TOKEN' if settings.mta_agent_token else local.agent.files.token}")
    click.echo(f"send email through it: ESTOP_EMAIL_PROVIDER={local.provider_url}")


@mta.command("stop")
@click.pass_obj
@handles_errors
def mta_stop(settings: Settings) -> None:
    """Stop Postfix, its receiver and the MTA agent; exits 0 when none runs."""
    from streams.mta.local import LocalMta

    LocalMta(settings).stop()
    click.echo("Postfix, its receiver and the MTA agent stopped")


@mta.command("status")
@click.pass_obj
@handles_errors
def mta_status(settings: Settings) -> None:
    """Say whether Postfix, the receiver and the MTA agent run, what waits in the queue, what
    arrived, what the agent shipped; exits 1 when Postfix or the agent is down."""
    from streams.mta.local import LocalMta

    status = LocalMta(settings).status()
    queued = ", ".join(f"{n} {q}" for q, n in sorted(status.queue.by_queue.items())) or "empty"
    click.echo(f"Postfix {'running at ' + status.smtp if status.running else 'not running'}; "
               f"queue: {queued}")
    click.echo(f"receiver {'running at ' + status.receiver if status.receiver_running else 'down'}; "
               f"{status.received:,} messages received")
    health = status.agent_health
    if health is not None:
        kafka = f"; Kafka: {health['kafka_error']}" if health["kafka_error"] else ""
        click.echo(f"MTA agent running at {status.agent}; {health['shipped']:,} receipts shipped "
                   f"to {health['receipts_topic']} at {health['bootstrap_servers']}, "
                   f"{health['unshipped']:,} waiting{kafka}")
    else:
        click.echo(f"MTA agent {'not answering' if status.agent_running else 'not running'} "
                   f"at {status.agent}")
    if not status.running or health is None:
        sys.exit(1)


@mta.command("agent")
@click.pass_obj
@handles_errors
def mta_agent(settings: Settings) -> None:
    """Run the MTA agent in the foreground: ship Postfix's log to Kafka, serve find and cancel
    to the dispatchers (ESTOP_MTA_AGENT_HOST/PORT, bearer ESTOP_MTA_AGENT_TOKEN); SIGTERM stops."""
    from streams.mta.agent_api import run_agent

    log_to_stderr()
    sys.exit(run_agent(settings, announce))


@mta.command("receiver")
@click.argument("action", type=click.Choice(["start", "stop"]))
@click.pass_obj
@handles_errors
def mta_receiver(settings: Settings, action: str) -> None:
    """Start the receiver (and retry deferred mail now) or hold it down (mail waits in Postfix)."""
    from streams.mta.local import LocalMta

    local = LocalMta(settings)
    if action == "start":
        local.receiver_up()
        click.echo(f"receiver running at {local.status().receiver}; deferred mail retried")
    else:
        local.receiver_down()
        click.echo("receiver down: accepted mail waits in Postfix's deferred queue")
