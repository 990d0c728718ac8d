"""Errors of the private MTA (``estop mta``)."""

from streams.exceptions import EstopError


class MtaError(EstopError):
    """The private Postfix instance or its receiver cannot be set up, started or stopped."""
