"""The whole stop pipeline on the secured broker, every process with its own least-privilege
principal: gates and dispatchers as `worker`, the analytics sink as `analytics`, the campaign
as `engine`, the stop as `operator`. The stop is confirmed, every message ends as exactly one
outcome, and the audit trail in the analytics store (and `estop report`) names the operator.
A principal that may not stop is refused by Kafka and the running workers never notice."""

from __future__ import annotations

import json
import threading

from confluent_kafka import KafkaError, Message, Producer

from streams.campaigns.launcher import LaunchResult, launch
from streams.dispatch.changelog import LedgerStats
from streams.kafka.clients import producer
from streams.lab.harness import WorkerProcess
from streams.models import ACTION_STOP
from streams.security.refusals import refused
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.store import open_store
from tests.controlplane.support import Processes
from tests.pipeline.support import records, wait_joined, wait_outcomes
from tests.security.support import Principals
from tests.support import run_estop, wait_for

WAIT_S = 120.0


def start_workers(secured: Principals, processes: Processes) -> str:
    """Gates and dispatchers of the email channel as `worker`, the sink as `analytics`; returns
    the data-plane process id once it is in its groups."""
    base = secured.admin.model_copy(update={"provider_rate": 400.0, "provider_delay_s": 1.0,
                                            "metrics_port": 0})
    data_plane = WorkerProcess(base, ["--role", "gate", "--role", "dispatcher", "--channel", "email"],
                               env=secured.env("worker"))
    processes.add(data_plane)
    sink = WorkerProcess(base, ["--role", "sink"], env=secured.env("analytics"))
    processes.add(sink)
    worker_id = data_plane.wait_ready(WAIT_S)
    sink.wait_ready(WAIT_S)
    topics = secured.admin.topics
    wait_joined(secured.admin, [worker_id], [topics.gate_group("email"), topics.dispatcher_group("email")])
    return worker_id


def raw_stop(settings: Settings, serdes: Serdes, campaign_id: str) -> KafkaError | None:
    """A stop command produced the way any Kafka producer can (README); the delivery error."""
    out: Producer = producer(settings, **{"linger.ms": 0})
    errors: list[KafkaError | None] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        errors.append(error)

    out.produce(settings.topics.control, key=campaign_id.encode(), on_delivery=delivered,
                value=serdes.control_command.encode({
                    "command_id": "forged", "campaign_id": campaign_id, "action": ACTION_STOP,
                    "channels": [], "reason": "not mine to stop", "requested_by": "the operator",
                    "requested_at": 0}))
    out.flush(30)
    assert len(errors) == 1
    return errors[0]


def test_stop_end_to_end_with_least_privilege_principals(
        secured: Principals, serdes: Serdes, processes: Processes) -> None:
    campaign, recipients = "spring-promo", 3000
    worker_id = start_workers(secured, processes)
    launched: dict[str, LaunchResult] = {}
    engine = threading.Thread(target=lambda: launched.setdefault("r", launch(
        secured.roles["engine"], serdes, campaign, ["email"], recipients, rate=500.0)))
    engine.start()
    wait_for(lambda: LedgerStats(secured.admin, "email").at_provider(campaign) > 0,
             "messages at the provider", timeout_s=WAIT_S, every_s=0.05)

    stopped = run_estop("stop", campaign, "--reason", "wrong discount code", "--json",
                        env=secured.env("operator"))

    assert stopped.returncode == 0, stopped.stderr
    result = json.loads(stopped.stdout)
    assert result["confirmed"] is True and result["live_processes"] == [worker_id]
    engine.join(WAIT_S)
    counter = wait_outcomes(secured.admin, campaign, recipients)
    email = counter.channel("email")
    assert email.sent + email.not_sent_total == recipients and email.not_sent_total > 0
    operator = secured.roles["operator"].sasl_username
    [command] = [serdes.control_command.decode(m.value())
                 for m in records(secured.admin, secured.admin.topics.control)]
    assert (command["command_id"], command["requested_by"]) == (result["command_id"], operator)

    # The sink (as `analytics`) stored the audit event the operator's command line wrote.
    store = open_store(secured.admin)
    try:
        wait_for(lambda: bool(store.audit(campaign)), "the audit event in the store", timeout_s=WAIT_S)
        [entry] = store.audit(campaign)
    finally:
        store.close()
    assert (entry["action"], entry["outcome"], entry["actor"], entry["via"], entry["principal"],
            entry["command_id"], entry["reason"]) == (
        "stop", "accepted", operator, "cli", operator, result["command_id"], "wrong discount code")
    report = run_estop("report", campaign, env=secured.env("operator"))
    assert report.returncode == 0, report.stderr
    assert f"stop accepted by {operator} via cli" in report.stdout


def test_a_principal_that_may_not_stop_is_refused_and_workers_are_unaffected(
        secured: Principals, serdes: Serdes, processes: Processes) -> None:
    """Engine, worker and analytics principals each produce a stop straight to campaign-control:
    Kafka refuses every one, nothing is written, and the running workers then pass the whole
    campaign they were asked to stop to the provider."""
    campaign, recipients = "not-to-be-stopped", 300
    start_workers(secured, processes)
    topics = secured.admin.topics

    lines = {}
    for role in ("engine", "worker", "analytics"):
        error = raw_stop(secured.roles[role], serdes, campaign)
        denied = refused(secured.roles[role], error, f"write {topics.control}")
        assert denied is not None, (role, error)
        lines[role] = str(denied)

    assert lines == {role: f"user '{secured.roles[role].sasl_username}' may not write {topics.control}"
                     for role in ("engine", "worker", "analytics")}
    assert records(secured.admin, topics.control) == []
    result = launch(secured.roles["engine"], serdes, campaign, ["email"], recipients)
    assert result.queued == {"email": recipients}
    counter = wait_outcomes(secured.admin, campaign, recipients)
    assert counter.channel("email").sent == recipients


