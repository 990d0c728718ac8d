"""Campaign errors."""

from streams.exceptions import UsageError


class RelaunchError(UsageError):
    """The unsent audience cannot be relaunched as asked; nothing was written."""
