"""Helpers of the secured suite: the session's secured broker, the principals of one test (from
`estop security init`), an extra principal with chosen ACLs, and the environment that makes an
`estop` subprocess one of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

from streams.kafka.broker import LocalBroker
from streams.kafka.clients import admin
from streams.security import credentials
from streams.security.roles import ROLES, Grant, username
from streams.security.setup import SCRAM_ITERATIONS, bindings, init_security
from streams.settings import Settings


@dataclass
class SecureBroker:
    local: LocalBroker
    admin: Settings  # connects as the broker's super user


@dataclass
class Principals:
    """One test's deployment: ``admin`` (super user, the test's prefix and data folder) and
    the settings of every role's principal."""

    admin: Settings
    roles: dict[str, Settings]
    env_files: dict[str, Path]
    http_tokens: dict[str, str]  # HTTP role -> its token

    @classmethod
    def initialise(cls, admin_settings: Settings) -> Principals:
        result = init_security(admin_settings)
        roles: dict[str, Settings] = {}
        files: dict[str, Path] = {}
        for role in ROLES:
            name = username(admin_settings, role)
            files[role] = result.users[name]
            password = credentials.password_from(credentials.read_env(files[role]))
            assert password, f"no password in {files[role]}"
            roles[role] = credentials.as_principal(admin_settings, name, password)
        assert result.http_tokens is not None
        entries = credentials.read_env(result.http_tokens)["ESTOP_HTTP_TOKENS"].split(",")
        tokens = {entry.split(":")[1]: entry.split(":", 2)[2] for entry in entries}
        return cls(admin_settings, roles, files, tokens)

    def env(self, role: str) -> dict[str, str]:
        """Environment of an `estop` subprocess running as ``role``: its credentials file, as a
        user sources it, on this test's data folder."""
        return {**credentials.read_env(self.env_files[role]), "ESTOP_DATA_DIR": str(self.admin.data_dir)}

    def add_user(self, name: str, grants: list[Grant]) -> Settings:
        """One more principal with exactly these grants (a read-only one, say)."""
        password = credentials.new_password()
        upsert = UserScramCredentialUpsertion(
            name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS), password.encode())
        acls = [b for g in grants for b in bindings(name, g)]
        with admin(self.admin) as client:
            for future in client.alter_user_scram_credentials([upsert]).values():
                future.result(timeout=30)
            for future in client.create_acls(acls).values() if acls else ():
                future.result(timeout=30)
        return credentials.as_principal(self.admin, name, password)


def env_of(settings: Settings) -> dict[str, str]:
    """Environment of an `estop` subprocess connecting with ``settings``' credentials (a
    principal that has no credentials file: the admin, one a test added)."""
    password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    return {**credentials.principal_env(settings, settings.sasl_username or "", password),
            "ESTOP_DATA_DIR": str(settings.data_dir)}
