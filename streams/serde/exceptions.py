"""Serde errors: a record that cannot be decoded is data for the dead-letter topic; a schema
registry that refuses a schema or does not answer is not."""

from streams.exceptions import EstopError, UsageError


class SerdeError(EstopError):
    """A value could not be encoded or decoded; ``reason`` is short enough for a header."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownSchemaError(SerdeError):
    """The value names a writer schema this process does not know."""


class IncompatibleSchemaError(UsageError):
    """The schema registry's compatibility rule refused a schema as a new version of its
    subject; nothing was registered or written."""


class SchemaRegistryError(EstopError):
    """The schema registry did not answer, or answered with an error other than a refusal.
    Not a SerdeError: the record is fine, so it must never go to a dead-letter topic."""
