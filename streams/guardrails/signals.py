"""What each record the guardrails read counts as: one outcome of the window's sample (``sent``,
``failed``) and the metrics it hits (``failed`` is a provider failure, and a bounce when the
provider said so: an SMTP 5xx bounce through Postfix or an SMPP ``UNDELIV``/``REJECTD`` receipt,
which the dispatcher reports as ``accepted but not delivered``; a web push subscription the
service answers 404/410 for; an FCM token ``UNREGISTERED``), or a feedback report (no outcome,
the metric of its kind). Nobody has to produce feedback for the providers' own negative
outcomes: they are read from the outcome topics the sink reads."""

from __future__ import annotations

from typing import Any

from streams.dispatch.dispatcher import UNDELIVERED_ERROR

BOUNCE, HARD, SOFT = "bounce", "hard", "soft"
KINDS = (BOUNCE, "complaint", "unsubscribe", "click")
BOUNCE_TYPES = (HARD, SOFT)


def provider_bounce(channel: str, error: str) -> bool:
    """Whether a `failed` event's error is the provider saying the recipient cannot be reached."""
    if error.startswith(UNDELIVERED_ERROR):
        return True
    if channel == "webpush":
        return error.startswith(("404 ", "410 "))
    if channel == "push":
        return "UNREGISTERED" in error
    return False


def failed_hits(event: dict[str, Any]) -> tuple[str, ...]:
    if provider_bounce(event["channel"], event["error"]):
        return ("provider_failure", BOUNCE, f"{HARD}_bounce")
    return ("provider_failure",)


def feedback_hits(report: dict[str, Any]) -> tuple[str, ...]:
    kind = report["kind"]
    if kind == BOUNCE:
        kind_of = report.get("bounce_type")
        return (BOUNCE, f"{kind_of}_bounce") if kind_of in BOUNCE_TYPES else (BOUNCE,)
    return (kind,)
