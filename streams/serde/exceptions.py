"""Serde errors: a record that cannot be decoded is data for the dead-letter topic."""

from streams.exceptions import EstopError


class SerdeError(EstopError):
    """A value could not be encoded or decoded; ``reason`` is short enough for a header."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownSchemaError(SerdeError):
    """The value names a writer schema this process does not know."""
