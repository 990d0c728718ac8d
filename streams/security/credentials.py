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

PROTOCOL = "SASL_PLAINTEXT"
MECHANISM = "SCRAM-SHA-512"


def security_dir(settings: Settings) -> Path:
    return settings.data_dir / "security"


def new_password() -> str:
    """URL-safe: no quote or comma to escape in a JAAS line or a StorageTool argument."""
    return secrets.token_urlsafe(24)


def as_principal(settings: Settings, username: str, password: str) -> Settings:
    """These settings, connecting as ``username`` over SASL/SCRAM."""
    return settings.model_copy(update={
        "security_protocol": PROTOCOL, "sasl_mechanism": MECHANISM,
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
    env = {
        "ESTOP_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ESTOP_SECURITY_PROTOCOL": PROTOCOL,
        "ESTOP_SASL_MECHANISM": MECHANISM,
        "ESTOP_SASL_USERNAME": username,
        "ESTOP_SASL_PASSWORD": password,
    }
    if settings.topic_prefix:
        env["ESTOP_TOPIC_PREFIX"] = settings.topic_prefix
    return env


def password_from(env: dict[str, str]) -> str | None:
    return env.get("ESTOP_SASL_PASSWORD") or None
