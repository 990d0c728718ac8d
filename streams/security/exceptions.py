"""Security errors: Kafka refused an operation, or refused the credentials themselves."""

from __future__ import annotations

from streams.exceptions import EstopError


class AccessDeniedError(EstopError):
    """A principal lacks a right (an ACL). The message names both; code that does not know
    the principal (a consumer loop) leaves ``who`` empty for its caller to fill in."""

    exit_code = 4

    def __init__(self, right: str, who: str | None = None, detail: str = "") -> None:
        self.right, self.who, self.detail = right, who, detail
        super().__init__(f"{who or 'this client'} may not {right}{detail}")

    def naming(self, who: str) -> AccessDeniedError:
        """The same refusal, naming the principal."""
        return self if self.who else AccessDeniedError(self.right, who, self.detail)


class AuthenticationFailedError(EstopError):
    """The broker refused the SASL credentials (unknown user, wrong password or mechanism)."""

    exit_code = 4


class CredentialsError(EstopError):
    """Credentials are missing or unusable (a malformed token list, an unreadable env file)."""

    exit_code = 2
