"""Client construction in one place: shared config, quiet librdkafka logs, bounded waits."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from streams.kafka.exceptions import KafkaUnavailableError
from streams.security.exceptions import AccessDeniedError, AuthenticationFailedError
from streams.settings import Settings

# What confluent-kafka accepts as record headers.
Headers = list[tuple[str, str | bytes | None]]
# What a consumed record's ``headers()`` returns.
RecordHeaders = Headers | dict[str, str | bytes | None] | None

# librdkafka reports every refused connection; route it through logging so callers decide.
RDKAFKA_LOG = logging.getLogger("estop.librdkafka")
# Shown only where a process configures logging (workers do); a command says one line instead.
RDKAFKA_LOG.addHandler(logging.NullHandler())


def process_id(role: str) -> str:
    """Identity of this process in acks and in consumer-group membership (``client.id``)."""
    return f"{role}@{socket.gethostname()}:{os.getpid()}"


def _base(settings: Settings, extra: dict[str, Any]) -> dict[str, Any]:
    conf: dict[str, Any] = dict(settings.client_config())
    conf["logger"] = RDKAFKA_LOG
    conf.update(extra)
    return conf


def admin(settings: Settings) -> AdminClient:
    """Use it as ``with admin(settings) as client:``. An admin client runs Python on its own
    librdkafka thread to resolve futures; one left to the garbage collector can be collected
    on that very thread, where librdkafka aborts the whole process. ``with`` destroys it on the
    thread that made it."""
    return AdminClient(_base(settings, {}))


def producer(settings: Settings, **extra: Any) -> Producer:
    conf = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 1000000,
        # Kafka's own partitioner (Java clients use it too): a receipt keyed by a message id lands
        # on the partition number its request has on dispatch.<channel>, whoever writes it.
        "partitioner": "murmur2_random",
    }
    conf.update(extra)
    return Producer(_base(settings, conf))


def consumer(settings: Settings, **extra: Any) -> Consumer:
    conf = {
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "fetch.wait.max.ms": 50,
        # A killed worker leaves its group (and the live set a stop waits for) within 10 s.
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 1000,
    }
    conf.update(extra)
    if "group.id" not in conf:
        # Assign-only consumers (control view, readers) never join a group, but librdkafka
        # still requires a group id; a throwaway one keeps them out of every real group.
        conf["group.id"] = f"estop-reader-{os.getpid()}-{id(conf)}"
    return Consumer(_base(settings, conf))


def wait_for_broker(settings: Settings, timeout_s: float | None = None) -> int:
    """Return the number of brokers once one answers a metadata request, or raise."""
    timeout = settings.admin_timeout_s if timeout_s is None else timeout_s
    # Refused credentials look like an absent broker to a metadata request (it just times out);
    # the client reports the SASL failure on its error callback, served between short requests.
    refusals: list[str] = []

    def on_error(error: KafkaError) -> None:
        if error.code() == KafkaError._AUTHENTICATION:
            refusals.append(error.str())

    with AdminClient(_base(settings, {"error_cb": on_error})) as client:
        deadline = time.monotonic() + timeout
        while True:
            try:
                metadata = client.list_topics(timeout=max(min(1.0, deadline - time.monotonic()), 0.1))
                return len(metadata.brokers)
            except KafkaException as exc:
                client.poll(0)
                if refusals:
                    raise AuthenticationFailedError(
                        f"the broker at {settings.bootstrap_servers} refused the credentials of "
                        f"user {settings.sasl_username!r} ({settings.sasl_mechanism} authentication "
                        "failed); check ESTOP_SASL_USERNAME and ESTOP_SASL_PASSWORD") from exc
                if time.monotonic() >= deadline:
                    secured = "" if settings.sasl_username else (
                        " (a broker that requires SASL closes the connection: set ESTOP_SECURITY_PROTOCOL, "
                        "ESTOP_SASL_MECHANISM, ESTOP_SASL_USERNAME and ESTOP_SASL_PASSWORD)")
                    raise KafkaUnavailableError(
                        f"no Kafka broker answered at {settings.bootstrap_servers} within {timeout:.0f}s "
                        f"({exc.args[0].str() if exc.args else exc}); start one with `estop broker start` "
                        f"or point ESTOP_BOOTSTRAP_SERVERS at your cluster{secured}"
                    ) from exc


def headers_of(message: Message) -> Headers:
    """A consumed record's headers as a list (librdkafka hands back a list of pairs)."""
    return list(cast(Headers, message.headers() or []))


def take(source: Consumer, max_messages: int, timeout_s: float) -> list[Message]:
    """Up to ``max_messages`` without waiting once something is there: ``consume`` alone waits
    out its whole timeout for a full batch, which would add that timeout to a stop's latency.

    A topic the principal may not read is raised, not skipped: Kafka would answer every fetch
    with the same refusal, and a stage skipping it would idle silently forever."""
    first = source.poll(timeout_s)
    if first is None:
        return []
    batch = [first, *source.consume(max_messages - 1, timeout=0)] if max_messages > 1 else [first]
    for message in batch:
        error = message.error()
        if error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            raise AccessDeniedError(f"read {message.topic()}")
        if error is not None and error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
            raise AccessDeniedError(f"read with its consumer group ({error.str()})")
    return batch

