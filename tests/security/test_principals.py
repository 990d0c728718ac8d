"""`estop security init` and the credentials a secured broker accepts, against the secured
broker: refused credentials and missing rights reach the user as one line."""

from __future__ import annotations

import stat
from typing import Any

from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from streams.kafka.clients import admin
from streams.security.roles import READER_GROUP_PREFIX, Grant, grants, username
from streams.settings import Settings
from tests.pipeline.support import records
from tests.security.support import Principals, SecureBroker, env_of
from tests.support import run_estop, wait_for


def acls_of(settings: Settings, principal: str) -> set[tuple[str, str, str, str]]:
    """(resource type, name, pattern, operation) of every ACL naming ``principal``."""
    # None matches any name, principal and host (the type stubs do not say so).
    anything: Any = None
    everything = AclBindingFilter(ResourceType.ANY, anything, ResourcePatternType.ANY, anything,
                                  anything, AclOperation.ANY, AclPermissionType.ANY)
    with admin(settings) as client:
        found = client.describe_acls(everything, request_timeout=30).result(timeout=35)
    return {(b.restype.name, b.name, b.resource_pattern_type.name, b.operation.name)
            for b in found if b.principal == f"User:{principal}"}


def test_init_creates_each_role_with_exactly_its_grants_and_twice_changes_nothing(
        secured: Principals) -> None:
    """Every role's principal exists with exactly the planned ACLs; a second run keeps the
    passwords (credentials files unchanged, owner-only) and adds nothing."""
    plan = grants(secured.admin)
    files = {role: path.read_text() for role, path in secured.env_files.items()}
    before = {role: acls_of(secured.admin, username(secured.admin, role)) for role in plan}
    for role, role_grants in plan.items():
        expected = {(g.resource.upper(), g.name, "PREFIXED" if g.prefixed else "LITERAL", op)
                    for g in role_grants for op in g.operations}
        assert before[role] == expected, role

    again = run_estop("security", "init", env=env_of(secured.admin))

    assert again.returncode == 0, again.stderr
    assert {role: path.read_text() for role, path in secured.env_files.items()} == files
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in secured.env_files.values())
    assert {role: acls_of(secured.admin, username(secured.admin, role)) for role in plan} == before
    # The plan itself: only operator, control and the guardrail processor (its automatic stops)
    # may write campaign-control.
    writers = {role for role, role_grants in plan.items() for g in role_grants
               if g.name == secured.admin.topics.control and "WRITE" in g.operations}
    assert writers == {"operator", "control", "guardrail"}


def test_wrong_password_is_one_line_naming_the_user(secured: Principals) -> None:
    """Refused credentials look like an absent broker to Kafka's clients (a timeout); the user
    is told the credentials were refused, and whose."""
    operator = secured.roles["operator"]
    env = {**env_of(operator), "ESTOP_SASL_PASSWORD": "not-the-password"}

    result = run_estop("status", "any-campaign", env=env)

    assert result.returncode == 4, result.stderr
    assert result.stderr.strip() == (
        f"estop: the broker at {operator.bootstrap_servers} refused the credentials of user "
        f"'{operator.sasl_username}' (SCRAM-SHA-512 authentication failed); check "
        "ESTOP_SASL_USERNAME and ESTOP_SASL_PASSWORD")
    assert result.stdout == ""


def test_a_principal_that_may_write_nothing_cannot_stop(secured: Principals) -> None:
    """The idempotent producer of such a principal fails fatally (no producer id: Kafka says
    CLUSTER_AUTHORIZATION_FAILED); the user reads who may not write what, nothing is written."""
    topics = secured.admin.topics
    name = f"{secured.admin.topic_prefix}reader"
    reader = secured.add_user(name, [
        Grant("topic", topics.control, ("READ",)), Grant("topic", topics.status, ("READ",)),
        Grant("topic", topics.acks, ("READ",)),
        Grant("group", f"{secured.admin.topic_prefix}estop-", ("DESCRIBE",), prefixed=True),
        Grant("group", READER_GROUP_PREFIX, ("READ",), prefixed=True)])

    result = run_estop("stop", "spring-promo", "--reason", "wrong discount code", "--force",
                       env=env_of(reader))

    assert result.returncode == 4, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"estop: user '{name}' may not write {topics.control} (Kafka refused it a producer id: "
        "it may write no topic at all)"]
    assert records(secured.admin, topics.control) == []


def test_the_campaign_engine_cannot_stop(secure_broker: SecureBroker, secured: Principals) -> None:
    """The engine writes send requests but not campaign-control: `estop stop` as the engine
    says so in one line and writes nothing, neither a command nor a lifecycle record; the
    broker's authorizer log records the refused attempt (the refused principal cannot write
    the audit topic)."""
    topics = secured.admin.topics
    engine = secured.roles["engine"]

    result = run_estop("stop", "spring-promo", "--reason", "wrong discount code", "--force",
                       env=secured.env("engine"))

    assert result.returncode == 4, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"estop: user '{engine.sasl_username}' may not write {topics.control}"]
    assert records(secured.admin, topics.control) == []
    assert records(secured.admin, topics.status) == []
    denial = (f"Principal = User:{engine.sasl_username} is Denied operation = WRITE from host = "
              f"127.0.0.1 on resource = Topic:LITERAL:{topics.control}")
    log = secure_broker.local.nodes[0].logs / "kafka-authorizer.log"
    wait_for(lambda: denial in log.read_text(), f"{denial!r} in {log}", timeout_s=60)


def test_a_worker_started_as_the_wrong_user_stops_with_one_line(secured: Principals) -> None:
    """A gate run with the analytics user's credentials may not use the gates' transactional
    ids: the worker stops (exit 1, a supervisor sees it) with one line naming user and right."""
    analytics = secured.roles["analytics"].sasl_username

    result = run_estop("worker", "--role", "gate", "--channel", "email",
                       env={**secured.env("analytics"), "ESTOP_METRICS_PORT": "0"})

    assert result.returncode == 1, result.stderr
    assert (f"ERROR streams.worker: gate.email failed: user '{analytics}' may not use the "
            "transactional ids of gate.email; stopping the worker") in result.stderr
    assert "Traceback" not in result.stderr


def test_the_operator_sets_guardrail_rules_and_the_engine_cannot(secured: Principals) -> None:
    """`estop rules set` as the operator stores the rule; as the campaign engine it is one line
    naming the user and the right, nothing written."""
    topics = secured.admin.topics
    engine = secured.roles["engine"]

    refused = run_estop("rules", "set", "bounce", "--threshold", "0.2", env=secured.env("engine"))

    assert refused.returncode == 4, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"estop: user '{engine.sasl_username}' may not read {topics.guardrail_rules}"]
    assert records(secured.admin, topics.guardrail_rules) == []

    done = run_estop("rules", "set", "bounce", "--threshold", "0.2", env=secured.env("operator"))

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("bounce for every campaign: bounce rate >= 20.00%")
    assert len(records(secured.admin, topics.guardrail_rules)) == 1
