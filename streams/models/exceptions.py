"""Errors of the data model: an id or a value that breaks the model's rules."""

from streams.exceptions import UsageError


class InvalidIdError(UsageError):
    """An id breaks the rule; nothing was written."""
