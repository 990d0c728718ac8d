"""Errors of the third-party servers estop runs for its tests."""

from streams.exceptions import EstopError


class EcosystemError(EstopError):
    """A third-party server could not be fetched, started or configured."""
