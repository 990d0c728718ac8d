"""Kafka-side errors: the broker is unreachable, the local broker cannot start, topics drift."""

from streams.exceptions import EstopError


class KafkaUnavailableError(EstopError):
    """No broker answered within the bounded wait."""


class LocalBrokerError(EstopError):
    """The project's own broker cannot be resolved, formatted, started or stopped."""
