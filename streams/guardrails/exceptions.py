"""Guardrail errors: a bad rule or a bad feedback report (nothing written)."""

from streams.exceptions import UsageError


class InvalidRuleError(UsageError):
    """A rule that cannot be stored as given; nothing was written."""


class InvalidFeedbackError(UsageError):
    """A feedback report that cannot be recorded as given; nothing of its request was written."""
