"""The ``estop`` command. User mistakes and unreachable services end in one line and an exit
code; only bugs show a traceback."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from streams.exceptions import EstopError, UsageError
from streams.security.exceptions import AccessDeniedError
from streams.security.refusals import who
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
            if isinstance(exc, AccessDeniedError):
                # Deep code (a consumer loop) may not know the principal; the command does.
                settings = click.get_current_context().find_object(Settings)
                if settings is not None:
                    exc = exc.naming(who(settings))
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


# -- security ---------------------------------------------------------------------------------


@main.group()
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


# -- mta ----------------------------------------------------------------------------------------


@main.group()
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

    def announce(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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


@main.group()
def schemas() -> None:
    """Avro schemas of the events in a schema registry (ESTOP_SCHEMA_REGISTRY_URL)."""


@schemas.command("register")
@click.option("--dir", "directory", default=None,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Register the *.avsc files of this folder (default: estop's own schemas/), "
                   "e.g. to check a changed schema against the registry's compatibility rule.")
@click.pass_obj
@handles_errors
def schemas_register(settings: Settings, directory: Path | None) -> None:
    """Register every schema under its subject (<topic prefix><namespace>.<name>); a schema the
    registry's compatibility rule refuses ends the command with exit code 2. Workers register
    their schemas themselves on first use; this does it up front."""
    from streams.serde import SCHEMA_DIR
    from streams.serde.registry import ConfluentRegistry, register_schemas

    if not settings.schema_registry_url:
        raise UsageError("no schema registry: set ESTOP_SCHEMA_REGISTRY_URL (without one, values "
                         "are single-object encoded and need no registry)")
    registry = ConfluentRegistry(settings.schema_registry_url)
    for subject, schema_id in register_schemas(registry, settings.topic_prefix, directory or SCHEMA_DIR):
        click.echo(f"{subject}: id {schema_id}")


# -- data plane ---------------------------------------------------------------------------------

CHANNEL_OPTION = click.Choice(["email", "sms", "push", "webpush"])


@main.command()
@click.option("--role", "roles", multiple=True,
              type=click.Choice(["gate", "dispatcher", "sink", "control"]),
              help="Run only these roles (default: every gate and dispatcher, and the sink); "
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

    def announce(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    if "control" in roles:
        if set(roles) != {"control"} or channels or metrics_port is not None:
            raise UsageError("the control role runs in a process of its own, without --channel or "
                             "--metrics-port (its /metrics is on its HTTP port, ESTOP_CONTROL_PORT)")
        from streams.controlplane import run_control

        sys.exit(run_control(settings, announce))

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": metrics_port})
    sys.exit(run_worker(settings, roles or ROLES, channels or CHANNELS, announce))


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="HTTP port of the API and /metrics (default ESTOP_CONTROL_PORT, 6066; 0 picks "
                   "a free one, printed in the ready line).")
@click.pass_obj
@handles_errors
def control(settings: Settings, port: int | None) -> None:
    """The control plane (faust-streaming): campaign HTTP API, stop confirmations, /metrics."""
    from streams.controlplane import run_control

    def announce(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    if port is not None:
        settings = settings.model_copy(update={"control_port": port})
    sys.exit(run_control(settings, announce))


@main.command()
@click.option("--campaign", "campaign_id", required=True, help="Campaign id.")
@click.option("--channel", "channels", multiple=True, type=CHANNEL_OPTION, required=True)
@click.option("--recipients", type=click.IntRange(min=1), required=True)
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Recipients queued per second (default: as fast as Kafka takes them).")
@click.pass_obj
@handles_errors
def launch(settings: Settings, campaign_id: str, channels: tuple[str, ...], recipients: int,
           rate: float | None) -> None:
    """Queue a campaign the way the campaign engine would (Sending, requests, Finished)."""
    from rich.progress import Progress

    from streams.campaigns.launcher import launch as run_launch
    from streams.kafka.clients import wait_for_broker
    from streams.models.ids import check_id
    from streams.serde import serdes_for

    check_id(campaign_id)
    wait_for_broker(settings)
    channel_list = list(dict.fromkeys(channels))
    with Progress(transient=False) as progress:
        task = progress.add_task(f"queueing {campaign_id}", total=recipients * len(channel_list))
        result = run_launch(settings, serdes_for(settings), campaign_id,
                            channel_list, recipients, rate,
                            progress=lambda n: progress.advance(task, n))
    click.echo(f"{campaign_id}: {result.state}; queued "
               + ", ".join(f"{c} {n:,}" for c, n in result.queued.items()))
    for channel, count in result.never_queued.items():
        click.echo(f"  {channel}: {count:,} never queued (reported as notSent, stage sending)")


@main.command()
@click.argument("campaign_id", required=False)
@click.option("--all", "stop_everything", is_flag=True,
              help="The kill switch: stop every campaign no command has stopped on every channel, "
                   "whatever its status says, on every channel.")
@click.option("--reason", required=True, help="Why the campaign is stopped (shown everywhere).")
@click.option("--channel", "channels", multiple=True,
              help="Stop only these channels (default: every channel).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for every live worker to confirm (default ESTOP_STOP_TIMEOUT_S, 30).")
@click.option("--force", is_flag=True, help="Stop a campaign not (yet) seen Sending or Finished.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_obj
@handles_errors
def stop(settings: Settings, campaign_id: str | None, stop_everything: bool, reason: str,
         channels: tuple[str, ...], timeout_s: float | None, force: bool, as_json: bool) -> None:
    """Stop a campaign on every channel (or some), or every campaign with --all, and wait until
    it is confirmed. The stop is recorded as requested by your Kafka user (ESTOP_SASL_USERNAME),
    or your OS user on a cluster without authentication, and audited."""
    from streams.control.exceptions import StopNotConfirmedError, StopsIncompleteError
    from streams.control.stop import audited_stop, audited_stop_all
    from streams.security.audit import cli_actor
    from streams.serde import serdes_for

    serdes = serdes_for(settings)
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
            _print_stop(result)
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
        _print_stop(result)
    if not result.confirmed:
        raise StopNotConfirmedError(
            f"stop of {campaign_id} not confirmed within {timeout:g}s; it stays in force"
        )


def _warn_unaudited(results: list[Any]) -> None:
    """The stop stands; say once that its audit event could not be written."""
    problem = next((r.audit_problem for r in results if r.audit_problem), None)
    if problem:
        _say(f"estop: warning: {problem}")


def _print_stop(result: Any) -> None:
    if result.error is not None:
        click.echo(f"{result.campaign_id!r} could NOT be stopped: {result.error}")
        return
    if result.already_stopped:
        click.echo(f"{result.campaign_id} is already stopped on {', '.join(result.channels)} "
                   f"(command {result.command_id}); nothing written")
        return
    state = "confirmed" if result.confirmed else "NOT confirmed"
    click.echo(f"stop {result.command_id} for {result.campaign_id} ({', '.join(result.channels)}): "
               f"{state} after {result.confirm_s:.3f}s")
    for ack in result.acks:
        click.echo(f"  {ack.process_id:<40} applied after {ack.propagation_ms:>5} ms, "
                   f"halted {ack.halted:,} at its provider")
    held: dict[str, list[str]] = {}
    for partition, holder in result.waiting:
        held.setdefault(holder or "", []).append(partition)
    for holder, partitions in sorted(held.items()):
        if holder:
            click.echo(f"  {holder:<40} has not acknowledged it on {', '.join(partitions)}")
        else:
            click.echo(f"  {'(nobody)':<40} holds {', '.join(partitions)}: in transit, or every "
                       "process of that role is down")
    if result.not_running:
        click.echo(f"  never ran here: {', '.join(result.not_running)}; a process that starts "
                   "reads the stop before its first request")
    click.echo(f"  halted at providers so far: {result.halted:,}")


@main.command()
@click.argument("campaign_id")
@click.option("--as", "new_id", required=True, help="Id of the new campaign.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Recipients queued per second (default: as fast as Kafka takes them).")
@click.pass_obj
@handles_errors
def relaunch(settings: Settings, campaign_id: str, new_id: str, rate: float | None) -> None:
    """Queue exactly the notSent recipients of a stopped campaign as a new campaign."""
    from streams.campaigns.lifecycle import read_campaigns, read_control
    from streams.campaigns.relaunch import plan_relaunch
    from streams.campaigns.relaunch import relaunch as run_relaunch
    from streams.kafka.clients import wait_for_broker
    from streams.models.ids import check_id
    from streams.security import audit
    from streams.serde import serdes_for
    from streams.sink.store import open_store

    check_id(campaign_id)
    check_id(new_id, "new campaign id")
    serdes = serdes_for(settings)
    wait_for_broker(settings)
    store = open_store(settings)
    try:
        known = (set(read_campaigns(settings, serdes)) | read_control(settings, serdes).campaigns()
                 | set(store.campaigns()))
        plan = plan_relaunch(store, campaign_id, new_id, known)
    finally:
        store.close()
    channels = sorted(plan.audience)
    _audited_cli(settings, audit.RELAUNCH, audit.ACCEPTED, campaign_id, channels,
                 f"as {new_id}: {plan.recipients:,} notSent recipient(s)")
    try:
        result = run_relaunch(settings, serdes, plan, rate)
    except EstopError as exc:
        _audited_cli(settings, audit.RELAUNCH, audit.FAILED, campaign_id, channels,
                     f"as {new_id}: {exc}")
        raise
    click.echo(f"{plan.campaign_id}: {result.state}; relaunched the notSent recipients of "
               f"{campaign_id}: " + ", ".join(f"{c} {n:,}" for c, n in result.queued.items()))
    if plan.foreign:
        click.echo(f"  left out {plan.foreign:,} notSent row(s) whose message ids {campaign_id} "
                   "was never planned with")


def _audited_cli(settings: Settings, action: str, outcome: str, campaign_id: str,
                 channels: list[str], detail: str) -> None:
    """Audit what the command did under its identity (the Kafka user, else the OS user); say
    so when the event could not be written (what it did stands)."""
    from streams.security import audit
    from streams.serde import serdes_for

    entry = audit.event(settings, audit.cli_actor(settings), action, outcome, campaign_id,
                        channels=channels, detail=detail)
    problem = audit.record(settings, serdes_for(settings), entry)
    if problem:
        _say(f"estop: warning: {problem}")


@main.command()
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.pass_obj
@handles_errors
def status(settings: Settings, campaign_id: str, as_json: bool) -> None:
    """Lifecycle state and per-channel counts of a campaign."""
    from streams.campaigns.status import campaign_status
    from streams.kafka.clients import wait_for_broker
    from streams.serde import serdes_for

    wait_for_broker(settings)
    report = campaign_status(settings, serdes_for(settings), campaign_id)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"{campaign_id}: {report['state']}")
    click.echo(f"  {'channel':<8} {'requested':>10} {'passed gate':>12} {'handed':>10} "
               f"{'sent':>10} {'notSent@sending':>16} {'notSent@provider':>17} "
               f"{'cancel unconfirmed':>19} {'failed':>8} {'pending':>9}")
    for channel, c in report["channels"].items():
        click.echo(f"  {channel:<8} {c['requested']:>10,} {c['passed_gate']:>12,} "
                   f"{c['handed_to_provider']:>10,} {c['sent']:>10,} "
                   f"{c['not_sent']['sending']:>16,} {c['not_sent']['provider']:>17,} "
                   f"{c['cancel_unconfirmed']:>19,} {c['failed']:>8,} {c['pending']:>9,}")
    for s in report["stops"]:
        click.echo(f"  stopped {', '.join(s['channels'])} by {s['requested_by']} at "
                   f"{_when(s['requested_at'])}: {s['reason']} (command {s['command_id']})")


def _when(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


REAL_RECIPIENTS, REAL_STOP_AFTER, REAL_RATE = 3_000, 600, 100.0  # the demo through real protocols


@main.command(context_settings={"allow_extra_args": True})
@click.option("--recipients", type=click.IntRange(min=1), default=None,
              help="Recipients per channel [default: 500,000; 3,000 with --provider real].")
@click.option("--stop-after", type=click.IntRange(min=0), default=None,
              help="Stop once this many messages were sent [default: 50,000; 600 with --provider real].")
@click.option("--channels", "channels", multiple=True, type=CHANNEL_OPTION,
              help="Channels of the campaign, e.g. --channels email sms push webpush (default: email).")
@click.option("--provider-rate", type=click.FloatRange(min=1), default=None,
              help="Messages per second handed to each channel's provider [default: 5,000; 100 with "
                   "--provider real].")
@click.option("--provider", type=click.Choice(["simulated", "smtp", "real"]), default="simulated",
              show_default=True,
              help="smtp: email goes through the private Postfix (started if needed, see "
                   "`estop mta`), whose receiver goes down before the stop so mail waits there. "
                   "real: every channel over its real protocol on this machine: email through that "
                   "Postfix, SMS over SMPP to a local SMSC, web push and mobile push over HTTP to "
                   "local stand-ins of a push service and of FCM.")
@click.option("--outage-s", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="With --provider smtp or real: how long the email receiver is down before the stop.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handles_errors
def demo(settings: Settings, recipients: int | None, stop_after: int | None, channels: tuple[str, ...],
         provider_rate: float | None, provider: str, outage_s: float, as_json: bool) -> None:
    """The reference scenario: a 500,000-recipient email campaign stopped after about 50,000
    sent."""
    from streams.demo import demo_progress, run_demo
    from streams.mta.local import LocalMta

    real = provider == "real"
    extra = click.get_current_context().args  # --channels email sms push: the values after the first
    unknown = [c for c in extra if c not in CHANNEL_OPTION.choices]
    if unknown:
        raise UsageError(f"unknown channel {unknown[0]!r} (channels: {', '.join(CHANNEL_OPTION.choices)})")
    channel_list = list(dict.fromkeys([*channels, *extra])) or ["email"]
    recipients = recipients or (REAL_RECIPIENTS if real else 500_000)
    stop_after = stop_after if stop_after is not None else (REAL_STOP_AFTER if real else 50_000)
    if stop_after >= recipients * len(channel_list):
        raise UsageError("--stop-after must be smaller than the number of planned messages")
    if provider == "smtp" and channel_list != ["email"]:
        raise UsageError("--provider smtp carries email only: leave out --channels or use "
                         "--channels email (--provider real carries every channel)")
    settings = settings.model_copy(update={
        "provider_rate": provider_rate or (REAL_RATE if real else 5000.0), "provider_delay_s": 1.0})
    through_mta = provider == "smtp" or (real and "email" in channel_list)
    if through_mta:  # started by the demo once it has a broker, for the agent to ship to
        settings = settings.model_copy(update={"email_provider": LocalMta(settings).provider_url})
    with demo_progress(transient=as_json) as progress:
        result = run_demo(settings, recipients, stop_after, channel_list,
                          say=progress.console.print if not as_json else _say, progress=progress,
                          through_mta=through_mta, outage_s=outage_s, real=real)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    stop_line = (f"{result.stop.confirm_s:.3f}s by {len(result.stop.acks)} process(es)"
                 if result.stop and result.stop.confirmed else "NOT confirmed")
    click.echo("")
    click.echo(f"campaign {result.campaign_id} ({', '.join(channel_list)}), stopped while "
               f"{result.state_at_stop}")
    click.echo(f"  planned                      {result.planned:>10,}")
    click.echo(f"  sent                         {result.sent:>10,}")
    click.echo(f"  notSent, stage sending       {result.not_sent.get('sending', 0):>10,}")
    click.echo(f"  notSent, stage provider      {result.not_sent.get('provider', 0):>10,}")
    if result.failed:
        click.echo(f"  failed at the provider       {result.failed:>10,}")
    click.echo(f"  total outcomes               {result.total:>10,}")
    click.echo(f"  stop confirmed in            {stop_line}")
    click.echo(f"  all outcomes in after stop   {result.outcomes_complete_s or 0:.1f}s")
    click.echo(f"  handoffs after confirmation  {result.handoffs_after_confirmation:>10,}")
    if result.analytics:
        click.echo(f"  analytics store accounts for {result.analytics['accounted']:>10,}   "
                   f"(estop report {result.campaign_id})")
    if result.received is not None and result.analytics and not result.channels:
        click.echo(f"  waiting in Postfix at stop   {result.queued_at_stop or 0:>10,}")
        click.echo(f"  cancelled at the provider    {result.analytics['cancelled_at_provider']:>10,}")
        click.echo(f"  arrived at the receiver      {result.received:>10,}   (must equal sent)")
    if result.channels:
        click.echo("")
        click.echo(f"  {'channel':<8} {'provider':<26} {'sent':>7} {'@sending':>9} {'cancelled':>10} "
                   f"{'held back':>10} {'arrived':>8} {'after stop':>10}")
        for row in result.channels:
            after = "-" if row.arrived_after_confirmation is None else f"{row.arrived_after_confirmation:,}"
            click.echo(f"  {row.channel:<8} {row.provider:<26} {row.sent:>7,} {row.at_sending:>9,} "
                       f"{row.cancelled:>10,} {row.held_back:>10,} {row.arrived:>8,} {after:>10}")
    if (result.total != result.planned or result.handoffs_after_confirmation
            or (result.received is not None and not result.channels and result.received != result.sent)
            or any(row.arrived_after_confirmation or row.arrived != row.sent for row in result.channels)):
        raise EstopError("the demo's accounting does not add up (see above)")


# -- analytics ----------------------------------------------------------------------------------


@main.command()
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--watch", is_flag=True, help="Refresh every second until interrupted.")
@click.pass_obj
@handles_errors
def report(settings: Settings, campaign_id: str, as_json: bool, watch: bool) -> None:
    """Exact sent/notSent split of a campaign from the analytics store."""
    import time

    from rich.console import Console
    from rich.live import Live

    from streams.sink.report import campaign_report
    from streams.sink.store import open_store

    store = open_store(settings)
    try:
        data = campaign_report(store, campaign_id)
        if as_json and not watch:
            click.echo(json.dumps(data))
            return
        if not watch:
            Console().print(_report_table(data))
            return
        with Live(_report_table(data), refresh_per_second=2) as live:
            try:
                while True:
                    time.sleep(1)
                    live.update(_report_table(campaign_report(store, campaign_id)))
            except KeyboardInterrupt:
                pass
    finally:
        store.close()


def _report_table(data: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{data['campaign_id']}: {data['state'] or 'unknown state'}")
    for column in ("channel", "planned", "sent", "notSent", "@sending", "@provider", "failed",
                   "pending"):
        table.add_column(column, justify="left" if column == "channel" else "right")
    for channel, c in data["by_channel"].items():
        stages = c["not_sent_by_stage"]
        table.add_row(channel, f"{c['planned']:,}", f"{c['sent']:,}", f"{c['not_sent']:,}",
                      f"{stages.get('sending', 0):,}", f"{stages.get('provider', 0):,}",
                      f"{c.get('failed', 0):,}", f"{c['pending']:,}")
    stages = data["not_sent_by_stage"]
    table.add_row("total", f"{data['total']:,}", f"{data['sent']:,}", f"{data['not_sent']:,}",
                  f"{stages.get('sending', 0):,}", f"{stages.get('provider', 0):,}",
                  f"{data.get('failed', 0):,}", f"{data['pending']:,}", style="bold")
    lines = []
    for stop in data["stops"]:
        channels = ", ".join(stop["channels"]) or "all channels"
        lines.append(f"stopped {channels} at {_when(stop['requested_at'])} by {stop['requested_by']}: "
                     f"{stop['reason']} ({stop['acks']} acknowledgements)")
    if data["cancelled_at_provider"]:
        lines.append(f"{data['cancelled_at_provider']:,} cancelled at the provider (accepted by it, "
                     "removed from its queue by the stop)")
    if data.get("cancel_unconfirmed"):
        per_channel = ", ".join(f"{channel} {c['cancel_unconfirmed']:,}"
                                for channel, c in data["by_channel"].items() if c["cancel_unconfirmed"])
        lines.append(f"{data['cancel_unconfirmed']:,} cancel requested at the provider, not confirmed "
                     f"({per_channel}): counted notSent, though the provider did not prove they will "
                     "not be delivered; a delivery receipt that comes later counts one sent")
    if data["stop_to_last_halted_accounted_s"] is not None:
        lines.append(f"last halted message accounted {data['stop_to_last_halted_accounted_s']:.1f}s "
                     "after the stop")
    if data.get("audit"):
        lines.append("audit:")
    for entry in data.get("audit", []):
        lines.append("  " + _audit_line(entry))
    return Group(table, *(Text(line) for line in lines))


def _audit_line(entry: dict[str, Any]) -> str:
    """One audit event: when, what, outcome, who (role), via, from where, why."""
    role = f" ({entry['role']})" if entry.get("role") else ""
    detail = f": {entry['detail']}" if entry.get("detail") else ""
    command = f" command {entry['command_id']}" if entry.get("command_id") else ""
    return (f"{_when(entry['at'])} {entry['action']} {entry['outcome']} by {entry['actor']}{role} "
            f"via {entry['via']} from {entry['source']}{command}{detail}")


@main.command()
@click.argument("campaign_id")
@click.option("--status", "outcome", type=click.Choice(["not_sent", "sent", "failed"]), required=True,
              help="Which recipients: those never sent (to re-target), those sent, or those the "
                   "provider never accepted.")
@click.option("--channel", type=CHANNEL_OPTION, default=None)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="CSV file to write (replaced atomically).")
@click.pass_obj
@handles_errors
def export(settings: Settings, campaign_id: str, outcome: str, channel: str | None, out: Path) -> None:
    """One CSV row per recipient of a campaign with the given outcome."""
    from streams.models.ids import check_id
    from streams.security import audit
    from streams.sink.report import export_recipients
    from streams.sink.store import open_store

    check_id(campaign_id)
    store = open_store(settings)
    try:
        rows = export_recipients(store, campaign_id, outcome, channel, out)
    finally:
        store.close()
    _audited_cli(settings, audit.EXPORT, audit.ACCEPTED, campaign_id, [channel] if channel else [],
                 f"{rows:,} {outcome} row(s) to {out}")
    click.echo(f"wrote {rows:,} {outcome} rows of {campaign_id} to {out}")


@main.command()
@click.option("--quick", is_flag=True,
              help="Small sizes: the whole run ends within about 5 minutes (the first run also "
                   "prepares the peers: a quixstreams virtualenv and a Maven build).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("bench/results/latest.json"), show_default=True)
@click.pass_obj
@handles_errors
def bench(settings: Settings, quick: bool, out: Path) -> None:
    """Measure throughput, stop latency, leaks and analytics completion against raw Kafka."""
    from rich.console import Console

    from streams.bench.harness import run_bench
    from streams.bench.plot import plot, print_table

    console = Console()
    started = __import__("time").monotonic()
    results = run_bench(settings, quick, out, lambda line: console.print(f"[dim]{line}[/dim]"))
    plot(results, out.with_suffix(".png"))
    print_table(results, console)
    console.print(f"wrote {out} and {out.with_suffix('.png')} "
                  f"in {__import__('time').monotonic() - started:.0f}s")
