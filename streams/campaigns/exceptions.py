"""Campaign errors."""

from streams.exceptions import UsageError


class RelaunchError(UsageError):
    """The unsent audience cannot be relaunched as asked; nothing was written."""


class CanaryError(UsageError):
    """A canary asked for wrongly (its share), or a release of a campaign whose canary is not
    holding; nothing was written."""
