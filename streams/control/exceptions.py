"""Control errors: a stop that cannot be issued, or one not confirmed in time."""

from streams.exceptions import EstopError, UsageError


class InvalidStopError(UsageError):
    """The stop command is invalid; nothing was written."""


class CampaignNotStoppableError(InvalidStopError):
    """The campaign is not Sending or Finished (``state`` None: never seen); nothing was written."""

    def __init__(self, message: str, state: str | None) -> None:
        super().__init__(message)
        self.state = state


class StopNotConfirmedError(EstopError):
    """The stop is in force but not every live process acknowledged it within the timeout."""

    exit_code = 3


class StopsIncompleteError(EstopError):
    """The kill switch stopped every campaign it could; these it could not (named with why)."""
