"""Errors of the private MTA (``estop mta``) and of its agent's API."""

from streams.exceptions import EstopError


class MtaError(EstopError):
    """The private Postfix instance, its receiver or its agent cannot be set up, started or
    stopped, or Postfix did not do what the agent asked."""


class AgentUnavailableError(MtaError):
    """The MTA agent did not answer, or answered with an error."""


class AgentRefusedError(MtaError):
    """The MTA agent refused the token (a setting to fix, not an outage)."""

    exit_code = 2


class BadRequestError(MtaError):
    """A request to the agent whose body is not what the route takes (answered 400)."""

    exit_code = 2
