"""Feedback reports: what recipients and providers say after a handoff (a bounce, a complaint,
an unsubscribe, a click), as ``Feedback`` records on the ``feedback`` topic keyed by message id.
Any producer may write them (an ESP's webhook relay, a feedback loop, the app); the control
plane's ``POST /feedback`` turns an authenticated HTTP request into them. Every report of a
request is checked before any is written: one bad report refuses the whole request."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException

from streams.clock import now_ms
from streams.guardrails.exceptions import InvalidFeedbackError
from streams.guardrails.signals import BOUNCE, BOUNCE_TYPES, KINDS
from streams.kafka.clients import producer
from streams.kafka.exceptions import KafkaUnavailableError
from streams.models import CHANNELS
from streams.models.ids import id_problem
from streams.security.refusals import refused
from streams.serde import Serdes
from streams.settings import Settings

FIELDS = ("kind", "bounce_type", "message_id", "campaign_id", "channel", "detail", "occurred_at",
          "feedback_id")
REPORTS_MAX = 1000  # reports in one request (the body is capped too: boundary.MAX_BODY)
DETAIL_MAX = 1000


def check(item: Any, source: str, index: int = 0) -> dict[str, Any]:
    """One report as a Feedback record, or InvalidFeedbackError naming report ``index`` and what
    is wrong with it."""
    where = f"report {index}"
    if not isinstance(item, Mapping):
        raise InvalidFeedbackError(f"{where} is not a JSON object")
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        raise InvalidFeedbackError(f"{where}: unknown field(s) {', '.join(unknown)} "
                                   f"(expected {', '.join(FIELDS)})")
    for name in ("message_id", "campaign_id"):
        value = item.get(name)
        problem = id_problem(value, name.replace("_", " ")) if isinstance(value, str) else \
            f'missing "{name}"'
        if problem:
            raise InvalidFeedbackError(f"{where}: {problem}")
    feedback_id = item.get("feedback_id", uuid.uuid4().hex)
    if not isinstance(feedback_id, str):
        raise InvalidFeedbackError(f"{where}: feedback_id must be text")
    if problem := id_problem(feedback_id, "feedback id"):
        raise InvalidFeedbackError(f"{where}: {problem}")
    kind = item.get("kind")
    if kind not in KINDS:
        raise InvalidFeedbackError(f"{where}: unknown kind {kind!r} (expected {', '.join(KINDS)})")
    bounce_type = item.get("bounce_type")
    if bounce_type is not None and (kind != BOUNCE or bounce_type not in BOUNCE_TYPES):
        raise InvalidFeedbackError(f"{where}: bounce_type is {' or '.join(BOUNCE_TYPES)}, "
                                   "for a bounce only")
    if item.get("channel") not in CHANNELS:
        raise InvalidFeedbackError(f"{where}: unknown channel {item.get('channel')!r} "
                                   f"(expected {', '.join(CHANNELS)})")
    detail = item.get("detail")
    if detail is not None and (not isinstance(detail, str) or len(detail) > DETAIL_MAX):
        raise InvalidFeedbackError(f"{where}: detail must be text of at most {DETAIL_MAX:,} characters")
    occurred_at = item.get("occurred_at", now_ms())
    if isinstance(occurred_at, bool) or not isinstance(occurred_at, int) or occurred_at < 0:
        raise InvalidFeedbackError(f"{where}: occurred_at must be milliseconds since the epoch")
    return {"feedback_id": feedback_id, "kind": kind, "bounce_type": bounce_type,
            "message_id": item["message_id"], "campaign_id": item["campaign_id"],
            "channel": item["channel"], "source": source, "detail": detail,
            "occurred_at": occurred_at}


def check_all(items: Any, source: str) -> list[dict[str, Any]]:
    if not isinstance(items, list) or not items:
        raise InvalidFeedbackError('"feedback" must be a non-empty list of reports')
    if len(items) > REPORTS_MAX:
        raise InvalidFeedbackError(f"{len(items):,} reports in one request; at most {REPORTS_MAX:,}")
    return [check(item, source, i) for i, item in enumerate(items)]


def publish(settings: Settings, serdes: Serdes, reports: list[dict[str, Any]]) -> int:
    """Write checked reports (acks=all); returns how many Kafka acknowledged."""
    out = producer(settings)
    errors: list[Any] = []
    right = f"write {settings.topics.feedback}"
    try:
        for report in reports:
            out.produce(settings.topics.feedback, key=report["message_id"].encode(),
                        value=serdes.feedback.encode(report),
                        on_delivery=lambda err, _m: errors.append(err) if err else None)
        unsent = out.flush(settings.admin_timeout_s)
    except (KafkaException, BufferError) as exc:
        raise refused(settings, exc, right) or KafkaUnavailableError(
            f"the feedback was not written: {exc}") from exc
    if errors or unsent:
        error = errors[0] if errors else None
        raise refused(settings, error, right) or KafkaUnavailableError(
            f"the feedback was not written: {error or f'{unsent} not acknowledged in time'}")
    return len(reports)
