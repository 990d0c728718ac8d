"""Credentials files: one ``<principal>.env`` per principal in ``<data_dir>/security/`` (mode
0600), holding the ``ESTOP_*`` variables a process needs to connect as that principal, so
``set -a; . .data/security/operator.env; set +a`` makes a shell that principal."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from streams.security.exceptions import CredentialsError
from streams.settings import Settings

PROTOCOL = "SASL_SSL"  # what the secured local broker asks, and what a SASL client gets by default
MECHANISM = "SCRAM-SHA-512"
SASL_PROTOCOLS = ("SASL_SSL", "SASL_PLAINTEXT")


def security_dir(settings: Settings) -> Path:
    return settings.data_dir / "security"


def new_password() -> str:
    """URL-safe: no quote or comma to escape in a JAAS line or a StorageTool argument."""
    return secrets.token_urlsafe(24)


def as_principal(settings: Settings, username: str, password: str) -> Settings:
    """These settings, connecting as ``username`` over SASL/SCRAM (over the settings' SASL
    protocol and CA, TLS by default)."""
    protocol = settings.security_protocol if settings.security_protocol in SASL_PROTOCOLS else PROTOCOL
    return settings.model_copy(update={
        "security_protocol": protocol, "sasl_mechanism": MECHANISM,
        "sasl_username": username, "sasl_password": SecretStr(password)})


def write_env(path: Path, values: dict[str, str]) -> None:
    """Write atomically, readable by the owner only (it holds a password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(f"{key}={value}\n" for key, value in values.items()))
    staging.replace(path)


def read_env(path: Path) -> dict[str, str]:
    """The variables of an env file; empty when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from exc
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def principal_env(settings: Settings, username: str, password: str) -> dict[str, str]:
    """What a process needs to connect as ``username``, on ``settings``' broker, protocol and CA."""
    principal = as_principal(settings, username, password)
    env = {
        "ESTOP_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ESTOP_SECURITY_PROTOCOL": principal.security_protocol,
        "ESTOP_SASL_MECHANISM": MECHANISM,
        "ESTOP_SASL_USERNAME": username,
        "ESTOP_SASL_PASSWORD": password,
    }
    if settings.ssl_ca_location is not None:
        env["ESTOP_SSL_CA_LOCATION"] = str(settings.ssl_ca_location)
    if settings.topic_prefix:
        env["ESTOP_TOPIC_PREFIX"] = settings.topic_prefix
    return env


def password_from(env: dict[str, str]) -> str | None:
    return env.get("ESTOP_SASL_PASSWORD") or None
