"""Errors of the third-party servers estop runs for its tests."""

from streams.exceptions import EstopError


class EcosystemError(EstopError):
    """A third-party server could not be fetched, started or configured."""


class ServerExitedError(EcosystemError):
    """A server exited while starting: on a port picked free, another process may have taken it
    meanwhile, so a caller may try another port."""
