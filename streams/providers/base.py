"""The provider adapter contract: what a dispatcher needs from an email server, SMS gateway or
push service, and nothing more. The dispatcher owns estop's durable state (its handoff ledger in
``streams.dispatch.ledger``, kept in a Kafka changelog: idempotency by message id, outcomes
reported once, restored by whichever process is assigned a partition); an adapter only speaks
the provider's protocol and never persists estop's state.

The dispatcher calls one adapter from more than one thread (handoffs on its own thread, a stop's
cancel on the control feed's), one call at a time: an adapter needs no locking of its own."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, Self
from urllib.parse import SplitResult

if TYPE_CHECKING:
    from streams.settings import Settings


class CancelCapability(StrEnum):
    """What a stop can do at this provider about messages it already accepted."""

    NONE = "none"  # FCM, APNs, SES: estop keeps messages in its own hands until just before delivery
    BY_MESSAGE_ID = "by_message_id"  # Postfix postsuper -d, SMPP cancel_sm, Web Push DELETE
    BY_CAMPAIGN = "by_campaign"  # e.g. KumoMTA bounce by campaign


class SubmitStatus(StrEnum):
    ACCEPTED = "accepted"  # the provider holds it now (provider_id set)
    REFUSED = "refused"  # the provider does not hold it: safe to submit again
    UNKNOWN = "unknown"  # the answer was lost: the provider may or may not hold it


class CancelStatus(StrEnum):
    """What a stop's cancel achieved for one message, as far as the provider's answer proves it.
    Real providers answer "ok" to a cancel of a message they already delivered (SMPPSim's
    ``cancel_sm``, Mozilla autopush's ``DELETE``): an "ok" alone is ``UNCONFIRMED``."""

    CANCELLED = "cancelled"  # the provider proved it dropped it: it will never be delivered
    TOO_LATE = "too_late"  # already on its way or delivered: a Delivery will tell its fate
    # The provider took the cancel request but did not prove the message will not be delivered:
    # a notSent whose reason says so (counted apart), which a later delivery receipt overrides.
    UNCONFIRMED = "unconfirmed"
    UNKNOWN = "unknown"  # the provider could not say (or cannot cancel at all)


@dataclass(frozen=True, slots=True)
class Handoff:
    """What the adapter needs to build the provider's request."""

    message_id: str
    campaign_id: str
    channel: str
    recipient_id: str
    payload: str


@dataclass(frozen=True, slots=True)
class Submitted:
    message_id: str
    status: SubmitStatus
    # The provider's own id when accepted: Postfix queue id, SMSC message_id, push Location...
    provider_id: str | None = None
    error: str | None = None  # the provider's answer when refused / unknown


@dataclass(frozen=True, slots=True)
class Delivery:
    """Something the provider told us about a message it accepted."""

    message_id: str  # "" when the adapter knows only the provider's id (a receipt sent again
    provider_id: str  # after a restart): the outbox then finds the message by provider_id
    delivered: bool  # True: reached the recipient side; False: bounced / expired / dropped
    at_ms: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message the outbox says this provider accepted and that has no outcome yet."""

    message_id: str
    provider_id: str
    recipient_id: str
    handed_at_ms: int


class ProviderAdapter(Protocol):
    channel: str
    cancel_capability: CancelCapability
    receipt_source: str  # one line for docs and status: where deliveries are learned

    @classmethod
    def from_url(cls, settings: Settings, channel: str, url: SplitResult) -> Self:
        """Open the adapter for ``channel`` from its provider URL (``ESTOP_<CHANNEL>_PROVIDER``,
        parsed) and the settings: the one constructor ``open_provider`` calls. Raises
        ProviderConfigError for a bad URL or setting (``streams.providers.urls`` reads the URL),
        ProviderUnavailableError when the provider does not answer."""

    def submit(self, handoffs: Sequence[Handoff]) -> list[Submitted]:
        """Hand messages over; one answer per handoff, in the same order."""

    def find(self, handoffs: Sequence[Handoff]) -> dict[str, str]:
        """Which of these messages the provider already accepted: message_id -> provider_id.
        Asked only for messages in doubt (an UNKNOWN answer, or a crash between submission and
        the ledger's record of it) before they are submitted again. An adapter whose provider
        cannot be asked returns ``{}``: the message is submitted again (at least once)."""

    def resume(self, accepted: Sequence[Accepted]) -> None:
        """Called each time the dispatcher is assigned partitions, before it hands anything over
        from them, with what their ledger says this provider accepted without an outcome yet
        (accepted by this process or another one before). An adapter that learns deliveries from
        the provider (its log, receipts sent again) has nothing to do; one that learns them from
        its own clock (web push: the TTL; FCM: the acceptance) tracks them again, so no message
        is left without an outcome. Deliveries of messages whose partition is held elsewhere are
        routed to their owner by the dispatcher."""

    def cancel(self, campaign_id: str, provider_ids: Mapping[str, str]) -> dict[str, CancelStatus]:
        """Cancel what the provider still holds of a stopped campaign. ``provider_ids``: message_id
        -> provider_id of the messages the ledger says are accepted and not known delivered;
        returns message_id -> status for each."""

    def deliveries(self) -> list[Delivery]:
        """Deliveries learned since the last call; must not block long. After the adapter is
        opened, the first calls report every delivery the provider still remembers (so one
        learned but not recorded before a crash is learned again); the ledger applies each
        once. An adapter whose provider reports elsewhere (the MTA agent ships Postfix's log to
        Kafka) returns nothing: those receipts reach the owner through Kafka."""

    def close(self) -> None: ...
