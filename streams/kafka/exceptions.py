"""Kafka-side errors: the broker is unreachable, the local broker cannot start, the topic plan
cannot work on the cluster."""

from streams.exceptions import EstopError, UsageError


class KafkaUnavailableError(EstopError):
    """No broker answered within the bounded wait."""


class LocalBrokerError(EstopError):
    """The project's own broker cannot be resolved, formatted, started or stopped."""


class TopicPlanError(UsageError):
    """The replication settings cannot work on this cluster; nothing was created."""


class WedgedProducerError(EstopError):
    """A transactional call did not return within its bound (``streams.kafka.transactions``):
    the producer is abandoned for a new one."""
