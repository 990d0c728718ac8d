"""Kafka's refusals as one line naming the principal and the missing right.

Kafka answers an operation a principal has no ACL for with an authorization error, which the
clients surface in different shapes: a fatal CLUSTER_AUTHORIZATION_FAILED when an idempotent
producer may write no topic at all (no producer id), TOPIC_AUTHORIZATION_FAILED in a delivery
report or from a watermark query, GROUP_AUTHORIZATION_FAILED from a group description. The call
site knows what it tried (``right``, e.g. "write campaign-control"); this module words it."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException, Producer

from streams.security.exceptions import AccessDeniedError
from streams.settings import Settings

AUTHORIZATION_ERRORS = frozenset({
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
})


def who(settings: Settings) -> str:
    if settings.sasl_username:
        return f"user {settings.sasl_username!r}"
    return "this client (no SASL user: ESTOP_SASL_USERNAME is unset)"


def error_code(error: KafkaError | BaseException | None) -> int | None:
    """The Kafka error code in ``error`` or its causes: a delivery callback that runs while the
    client holds a fatal error raises SystemError, whose cause is the KafkaException."""
    while isinstance(error, BaseException):
        if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
            error = error.args[0]
            break
        error = error.__cause__
    return error.code() if isinstance(error, KafkaError) else None


def refused(settings: Settings, error: KafkaError | BaseException | None,
            right: str) -> AccessDeniedError | None:
    """The one-line error when ``error`` is an authorization refusal, else None."""
    code = error_code(error)
    if code not in AUTHORIZATION_ERRORS:
        return None
    detail = ""
    if code == KafkaError.CLUSTER_AUTHORIZATION_FAILED and right.startswith("write "):
        detail = " (Kafka refused it a producer id: it may write no topic at all)"
    return AccessDeniedError(right, who(settings), detail)


def fatal_cause(producer: Producer, error: BaseException) -> BaseException:
    """The error that made a producer fatal. Once it is, ``produce`` only says "fatal error";
    the next ``poll`` raises the original (CLUSTER_AUTHORIZATION_FAILED, say)."""
    if error_code(error) != KafkaError._FATAL:
        return error
    try:
        producer.poll(0)
    except KafkaException as original:
        return original
    return error


# What a refusal means when the code that met it cannot say more (a stage's own clients).
GENERIC_RIGHTS = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "read or write the topics of",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "use the consumer group of",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "write anything (no producer id) for",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "use the transactional ids of",
}


def stage_refusal(settings: Settings, error: BaseException, stage: str) -> AccessDeniedError | None:
    """A refusal met by a worker stage (``gate.email``, ``sink``), named as precisely as the
    stage's clients allow; None when ``error`` is no refusal."""
    if isinstance(error, AccessDeniedError):
        return error.naming(who(settings))
    code = error_code(error)
    if code not in GENERIC_RIGHTS:
        return None
    return AccessDeniedError(f"{GENERIC_RIGHTS[code]} {stage}", who(settings))
