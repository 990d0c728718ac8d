"""`estop broker`: the local KRaft broker."""

from __future__ import annotations

import sys

import click

from streams.cli.common import handles_errors
from streams.settings import Settings


@click.group()
def broker() -> None:
    """The local KRaft broker (Apache Kafka jars from Maven Central): one node, or a cluster."""


BROKERS_OPTION = click.option(
    "--brokers", type=click.IntRange(1, 9), default=None,
    help="Nodes of the local broker (default ESTOP_BROKERS, 1): 3 is a cluster on localhost, "
         "node n on ports ESTOP_BROKER_PORT+2(n-1) and ESTOP_CONTROLLER_PORT+2(n-1).")


@broker.command("start")
@BROKERS_OPTION
@click.option("--secure", is_flag=True,
              help="SASL/SCRAM-SHA-512 listener, ACLs (StandardAuthorizer, deny when no ACL "
                   "matches), an admin super user; ESTOP_BROKER_SECURE=true does the same.")
@click.pass_obj
@handles_errors
def broker_start(settings: Settings, brokers: int | None, secure: bool) -> None:
    """Start the local broker (resolves jars once); says so if it already runs."""
    from streams.kafka.broker import LocalBroker

    if secure:
        settings = settings.model_copy(update={"broker_secure": True})
    LocalBroker(settings, click.echo, brokers).start()


@broker.command("stop")
@BROKERS_OPTION
@click.pass_obj
@handles_errors
def broker_stop(settings: Settings, brokers: int | None) -> None:
    """Stop every node of the local broker cleanly; exits 0 when none runs."""
    from streams.kafka.broker import LocalBroker

    LocalBroker(settings, click.echo, brokers).stop()


@broker.command("status")
@BROKERS_OPTION
@click.pass_obj
@handles_errors
def broker_status(settings: Settings, brokers: int | None) -> None:
    """Say whether the local broker runs (each node of a cluster), its address and version;
    exits 1 when any node is down."""
    from streams.kafka.broker import LocalBroker

    local = LocalBroker(settings, brokers=brokers)
    status = local.status()
    state = f"running (pid {status.pid})" if status.running else "not running"
    secured = ", secured (SASL/SCRAM-SHA-512, ACLs)" if local.secured_marker.exists() else ""
    if len(status.nodes) == 1:
        click.echo(f"broker {state} at {status.address}, Apache Kafka {status.version}{secured}")
    else:
        up = sum(n.running for n in status.nodes)
        click.echo(f"cluster of {len(status.nodes)} brokers at {status.address}, Apache Kafka "
                   f"{status.version}: {up} running")
        for n in status.nodes:
            node_state = f"running (pid {n.pid})" if n.running else "not running"
            click.echo(f"  node {n.node.node_id} {node_state} at {n.node.address}, controller "
                       f"localhost:{n.node.controller_port}, data {n.node.home}")
    if not status.running:
        sys.exit(1)
