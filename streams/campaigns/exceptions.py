"""Campaign errors."""

from streams.exceptions import UsageError


class RelaunchError(UsageError):
    """The unsent audience cannot be relaunched as asked; nothing was written."""


class CanaryError(UsageError):
    """A canary asked for wrongly (its share), or a release of a campaign whose canary is not
    holding; nothing was written."""


class CanaryNotHoldingError(CanaryError):
    """A release of a campaign whose canary is not holding (none, or released or stopped
    already); nothing was written."""
