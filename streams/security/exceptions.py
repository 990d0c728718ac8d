"""Security errors: Kafka refused an operation, or refused the credentials themselves."""

from streams.exceptions import EstopError


class AccessDeniedError(EstopError):
    """A principal lacks a right (an ACL); nothing was written. The message names both."""

    exit_code = 4


class AuthenticationFailedError(EstopError):
    """The broker refused the SASL credentials (unknown user, wrong password or mechanism)."""

    exit_code = 4


class CredentialsError(EstopError):
    """Credentials are missing or unusable (a malformed token list, an unreadable env file)."""

    exit_code = 2
