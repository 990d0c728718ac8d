"""``estop security init``: the topics, the SCRAM users of every role (one credentials file each)
and their ACLs, created with the Admin API as a super user. Idempotent: a role whose credentials file
exists keeps its password, ACLs already present are left as they are."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from streams.kafka.clients import admin, wait_for_broker
from streams.kafka.topics import create_topics
from streams.security import credentials
from streams.security.exceptions import AuthenticationFailedError, CredentialsError
from streams.security.refusals import refused
from streams.security.roles import ROLES, Grant, grants, username
from streams.settings import Settings

SCRAM_ITERATIONS = 8192
RESOURCE = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
            "transactional_id": ResourceType.TRANSACTIONAL_ID}
HTTP_ROLES = ("viewer", "operator", "admin")
HTTP_TOKENS_FILE = "http-tokens.env"


@dataclass
class InitResult:
    users: dict[str, Path] = field(default_factory=dict)  # principal -> its credentials file
    acls: int = 0
    http_tokens: Path | None = None


def admin_settings(settings: Settings) -> Settings:
    """The settings' own SASL user, else the local secured broker's admin."""
    if settings.sasl_username:
        return settings
    from streams.kafka.broker import LocalBroker

    local = LocalBroker(settings)
    if local.admin_env().exists():
        return local.client_settings().model_copy(update={"bootstrap_servers": settings.bootstrap_servers})
    raise CredentialsError(
        "no admin credentials: set ESTOP_SASL_USERNAME and ESTOP_SASL_PASSWORD to a super user "
        "of your cluster, or start the local broker with `estop broker start --secure`")


def bindings(principal: str, grant: Grant) -> list[AclBinding]:
    pattern = ResourcePatternType.PREFIXED if grant.prefixed else ResourcePatternType.LITERAL
    return [AclBinding(RESOURCE[grant.resource], grant.name, pattern, f"User:{principal}", "*",
                       AclOperation[operation], AclPermissionType.ALLOW)
            for operation in grant.operations]


def init_security(settings: Settings, say: Callable[[str], None] = lambda _: None) -> InitResult:
    su = admin_settings(settings)
    create_topics(su, say=lambda _: None)  # ACLs name them; creating topics is the admin's job
    folder = credentials.security_dir(settings)
    result = InitResult()
    passwords: dict[str, str] = {}
    for role in ROLES:
        name = username(settings, role)
        path = folder / f"{name}.env"
        passwords[name] = credentials.password_from(credentials.read_env(path)) or credentials.new_password()
        # On the admin's broker, protocol and CA (a local secured broker's own), this prefix.
        credentials.write_env(path, credentials.principal_env(su, name, passwords[name]))
        result.users[name] = path
    upserts: list[UserScramCredentialAlteration] = [UserScramCredentialUpsertion(
        name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS), password.encode())
        for name, password in passwords.items()]
    acls = [b for role, role_grants in grants(settings).items()
            for g in role_grants for b in bindings(username(settings, role), g)]
    with admin(su) as client:
        _settle(client.alter_user_scram_credentials(upserts, request_timeout=su.admin_timeout_s),
                su, "alter SCRAM users")
        _settle(client.create_acls(acls, request_timeout=su.admin_timeout_s), su, "create ACLs")
    result.acls = len(acls)
    for name, path in result.users.items():
        _await_login(credentials.as_principal(su, name, passwords[name]))
        say(f"user {name:<24} credentials in {path}")
    result.http_tokens = _http_tokens(folder / HTTP_TOKENS_FILE)
    say(f"{result.acls} ACLs in place; HTTP API tokens (viewer, operator, admin) in {result.http_tokens}")
    return result


def _settle(futures: Mapping[Any, Future[Any]], settings: Settings, what: str) -> None:
    for future in futures.values():
        try:
            future.result(timeout=settings.admin_timeout_s)
        except KafkaException as exc:
            denied = refused(settings, exc, f"{what} (it must be a super user)")
            raise denied or exc from exc


def _await_login(settings: Settings, timeout_s: float = 30.0) -> None:
    """A new SCRAM user can log in once the broker applied the metadata record: wait for that,
    so the credentials file works the moment this command returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            wait_for_broker(settings, timeout_s=5.0)
            return
        except AuthenticationFailedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _http_tokens(path: Path) -> Path:
    """One token per HTTP role for the control plane (``ESTOP_HTTP_TOKENS``), kept if present."""
    if not credentials.read_env(path):
        entries = ",".join(f"{role}:{role}:{credentials.new_password()}" for role in HTTP_ROLES)
        credentials.write_env(path, {"ESTOP_HTTP_TOKENS": entries})
    return path
