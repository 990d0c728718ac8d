"""Where a send request goes, decided the same way at both stages that act on one: the gate
(stage ``sending``) and the dispatcher (stage ``provider``). Forwarded when its campaign is not
stopped on the stage's channel, held back (a notSent event) when it is, dead-lettered when it
cannot be read, names invalid ids, or belongs to another channel.

Pure: what the record says (its routing headers or its decoded body) and the control view's
answer go in, a ``Decision`` comes out; the stages do the Kafka side. The records are not
frozen: one is made per record on the hot path, and a frozen dataclass costs 4 times more."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from streams.kafka.deadletter import MAX_RECORD_BYTES
from streams.models import CHANNELS, HEADER_CAMPAIGN, HEADER_CHANNEL, HEADER_RECIPIENT
from streams.models.ids import MESSAGE_ID_MAX, id_problem, is_valid_id, request_problem
from streams.serde import SerdeError

if TYPE_CHECKING:
    from streams.control.view import Stop
    from streams.kafka.clients import RecordHeaders

# The control view's answer: the stop in force for a campaign on a channel, or None.
StopLookup = Callable[[str, str], "Stop | None"]


class Route(StrEnum):
    FORWARD = "forward"
    HOLD = "hold"
    DEAD_LETTER = "dead-letter"


@dataclass(slots=True)
class Decision:
    route: Route
    stop: Stop | None = None  # hold: the stop that holds the request back
    reason: str = ""  # dead-letter: why, one line kept with the dead letter


FORWARD = Decision(Route.FORWARD)


@dataclass(slots=True)
class RoutingHeaders:
    """The campaign, channel and recipient headers of a send request as they came, where its
    producer set them: the last of a repeated header wins, a header without a value counts as
    absent. Bytes, for a hot loop that compares them."""

    campaign: bytes | None
    channel: bytes | None
    recipient: bytes | None

    @classmethod
    def of(cls, headers: RecordHeaders) -> RoutingHeaders:
        if not headers:
            return NO_HEADERS
        found = dict(headers)
        campaign, channel, recipient = (found.get(HEADER_CAMPAIGN), found.get(HEADER_CHANNEL),
                                        found.get(HEADER_RECIPIENT))
        return cls(campaign if isinstance(campaign, bytes) and campaign else None,
                   channel if isinstance(channel, bytes) and channel else None,
                   recipient if isinstance(recipient, bytes) and recipient else None)

    @property
    def count(self) -> int:
        """How many of the three are present."""
        return (self.campaign is not None) + (self.channel is not None) + (self.recipient is not None)


NO_HEADERS = RoutingHeaders(None, None, None)


@dataclass(slots=True)
class CampaignHeader:
    """A campaign header read as a campaign id, and why it is refused (an id no stop could
    name: passing its requests would put them beyond every stop), or None."""

    campaign_id: str
    problem: str | None

    @classmethod
    def of(cls, raw: bytes) -> CampaignHeader:
        problem = id_problem(raw)
        return cls(raw.decode(errors="replace"), None if problem is None else f"header {problem}")


@dataclass(slots=True)
class SendRequest:
    """A decoded send request whose ids are all valid (``streams.models.ids``)."""

    message_id: str
    campaign_id: str
    channel: str
    recipient_id: str
    payload: str

    @classmethod
    def checked(cls, decoded: Mapping[str, Any]) -> SendRequest:
        """The request a decoded record makes; SerdeError naming the first invalid id."""
        problem = request_problem(decoded)
        if problem is not None:
            raise SerdeError(problem)
        return cls(decoded["message_id"], decoded["campaign_id"], decoded["channel"],
                   decoded["recipient_id"], decoded["payload"])


def record_problem(value: bytes | None, key: bytes | None) -> str | None:
    """Why a record is refused before it is read: no value, a value larger than any send
    request, or a key that is not a valid message id (a record may come without a key); None
    when none is."""
    if value is None:
        return "empty value"
    if len(value) > MAX_RECORD_BYTES:
        return f"record of {len(value):,} bytes"
    if key is not None and not is_valid_id(key, MESSAGE_ID_MAX):
        return f"key: {id_problem(key, 'message id', MESSAGE_ID_MAX)}"
    return None


def decide(channel: str, campaign_id: str | None, record_channel: str | None,
           stopped: StopLookup, problem: str | None = None) -> Decision:
    """The route of a request read from the ``channel`` topic, for ``campaign_id`` on
    ``record_channel`` (from its headers or its body); ``problem`` is why it could not be read
    or names invalid ids, and dead-letters it."""
    if problem is not None or campaign_id is None or record_channel is None:
        return Decision(Route.DEAD_LETTER, reason=problem or "no campaign or channel")
    if record_channel != channel:
        known = "channel" if record_channel in CHANNELS else "unknown channel"
        return Decision(Route.DEAD_LETTER, reason=f"{known} {record_channel!r} on the {channel} topic")
    stop = stopped(campaign_id, channel)
    return FORWARD if stop is None else Decision(Route.HOLD, stop=stop)
