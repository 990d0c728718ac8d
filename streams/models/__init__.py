"""Domain vocabulary: channels, their event names, pipeline stages, lifecycle states."""

from __future__ import annotations

from typing import Final

CHANNELS: Final = ("email", "sms", "push", "webpush")

# Event names per channel, as analytics consumers know them.
SENT_EVENT: Final = {
    "email": "message.sent",
    "sms": "sms.sent",
    "push": "push.sent",
    "webpush": "webpush.sent",
}
NOT_SENT_EVENT: Final = {
    "email": "message.notSent",
    "sms": "sms.notSent",
    "push": "push.notSent",
    "webpush": "webpush.notSent",
}

# A message the provider never accepted, its retry budget spent: neither sent nor stopped.
FAILED_EVENT: Final = {
    "email": "message.failed",
    "sms": "sms.failed",
    "push": "push.failed",
    "webpush": "webpush.failed",
}

STAGE_SENDING: Final = "sending"
STAGE_PROVIDER: Final = "provider"
STAGES: Final = (STAGE_SENDING, STAGE_PROVIDER)
# How a notSent event of stage provider begins its reason: the message was still in estop's
# hands (held before handoff), a provider held it and proved it cancelled it on the stop, or a
# provider took the stop's cancel request without proving the message will not be delivered
# (counted apart; a later delivery receipt turns it into sent).
REASON_HELD: Final = "held before handoff"
REASON_CANCELLED: Final = "cancelled at the provider"
REASON_CANCEL_UNCONFIRMED: Final = "cancel requested at the provider, not confirmed"

ACTION_STOP: Final = "stop"

STATE_SENDING: Final = "Sending"
STATE_FINISHED: Final = "Finished"
STATE_STOPPED: Final = "Stopped"
STOPPABLE_STATES: Final = (STATE_SENDING, STATE_FINISHED)

# Headers every data-plane record carries so a stage can route without decoding the value.
HEADER_CAMPAIGN: Final = "campaign_id"
HEADER_CHANNEL: Final = "channel"
# On send requests: the recipient, so a stage can turn a held-back request into its notSent event
# without decoding it (the key is the message id).
HEADER_RECIPIENT: Final = "recipient_id"
HEADER_STAGE: Final = "stage"
HEADER_OUTCOME: Final = "outcome"  # "failed" on failure events (sent and notSent need no header)
OUTCOME_FAILED: Final = "failed"
HEADER_ERROR: Final = "estop.error"
HEADER_SOURCE_TOPIC: Final = "estop.source.topic"
HEADER_SOURCE_PARTITION: Final = "estop.source.partition"
HEADER_SOURCE_OFFSET: Final = "estop.source.offset"
HEADER_TRUNCATED: Final = "estop.truncated"  # on a dead letter: what was cut to fit (key, headers, value)


def check_channels(channels: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate channel names given by a user; raises ValueError naming the bad one."""
    for channel in channels:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r} (expected one of {', '.join(CHANNELS)})")
    return tuple(dict.fromkeys(channels))
