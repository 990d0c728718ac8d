"""The dispatcher's handoff ledger: estop's own record of what each provider holds, per partition
of ``dispatch.<channel>``, in memory, with every change bound for the ledger's changelog topic
(``streams.dispatch.changelog`` writes and restores it). Pure state here: no Kafka.

* Idempotency by message id: a message is reserved (``submitting``) before it is submitted, and
  the reservation is in the changelog before the submission; it becomes ``accepted`` with the
  provider's id once the provider confirmed it. A message found reserved but not accepted is in
  doubt (its answer was lost, or its owner died between the submission and the record): the
  dispatcher asks the provider (``ProviderAdapter.find``) before submitting it again. A message
  found accepted is never submitted again.
* Outcomes: an accepted message is ``reported`` (delivered, undelivered, cancelled at the
  provider, or cancel unconfirmed) in the same Kafka transaction as its outcome event, so each
  outcome is published exactly once, whichever process owns the partition then.
* What stays in memory: every entry without an outcome yet, and reported entries whose request
  may still be read again (at or after the partition's committed offset); of the other reported
  ones only the message id and campaign (``settled``), so a request queued again later still
  finds its one outcome and is neither handed over nor reported twice. Settled messages older
  than the retention (``ESTOP_LEDGER_RETENTION_S``) are forgotten: tombstoned in the changelog,
  which compaction then shrinks. ``LedgerStats`` reads the changelog from Kafka.

Every method is called with ``lock`` held by the caller when more than one thread uses the
ledger (the dispatcher's thread and the control feed's, which runs stop hooks)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from streams.clock import now_ms
from streams.providers.base import Accepted, Delivery, Handoff

SUBMITTING, ACCEPTED, REPORTED = "submitting", "accepted", "reported"
DELIVERED, UNDELIVERED, CANCELLED, UNCONFIRMED = "delivered", "undelivered", "cancelled", "unconfirmed"
# The changelog key of a partition's receipts checkpoint: no message id can be it.
CHECKPOINT_KEY = "\x00receipts"


@dataclass(slots=True)
class Entry:
    """One message at the provider stage (the changelog's ``LedgerEntry``)."""

    message_id: str
    campaign_id: str
    recipient_id: str
    input_offset: int
    state: str
    provider_id: str | None = None
    submitted_at: int | None = None
    handed_at: int | None = None
    attempts: int = 1
    outcome: str | None = None
    occurred_at: int | None = None
    stop_command_id: str | None = None
    stop_requested_at: int | None = None
    reason: str | None = None

    def record(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Entry:
        return cls(**{name: record[name] for name in cls.__slots__})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of an accepted message, to be reported with its event."""

    outcome: str  # delivered | undelivered | cancelled | unconfirmed
    occurred_at: int
    reason: str | None = None  # the provider's words, or the stop's reason
    stop_command_id: str | None = None
    stop_requested_at: int | None = None


@dataclass(frozen=True, slots=True)
class Reserved:
    """What ``reserve`` found for a slice of handoffs."""

    fresh: list[Handoff]  # never seen: submit them
    in_doubt: list[Handoff]  # submitted before, answer unknown: ask the provider first
    already: int  # accepted or reported before (a redelivery): counted, never submitted


@dataclass
class PartitionLedger:
    """One partition's entries, indexed for the questions a dispatcher asks."""

    partition: int
    entries: dict[str, Entry] = field(default_factory=dict)
    by_provider: dict[str, str] = field(default_factory=dict)  # provider id -> message id
    at_provider: dict[str, set[str]] = field(default_factory=dict)  # campaign -> accepted ids
    campaigns: dict[str, int] = field(default_factory=dict)  # campaign -> entries in memory
    # Reported, request committed: message id -> (campaign id, reported at ms), and per campaign
    # how many (a drain asks whether a campaign has anything here at all).
    settled: dict[str, tuple[str, int]] = field(default_factory=dict)
    settled_campaigns: dict[str, int] = field(default_factory=dict)
    receipts_offset: int = 0  # next offset of its receipts partition to apply

    def put(self, entry: Entry) -> None:
        old = self.entries.get(entry.message_id)
        if old is not None:
            self._unindex(old)
        else:
            self.campaigns[entry.campaign_id] = self.campaigns.get(entry.campaign_id, 0) + 1
        self.entries[entry.message_id] = entry
        if _by_provider(entry):
            self.by_provider[entry.provider_id] = entry.message_id  # type: ignore[index]
        if entry.state == ACCEPTED and entry.provider_id:
            self.at_provider.setdefault(entry.campaign_id, set()).add(entry.message_id)

    def drop(self, message_id: str) -> None:
        entry = self.entries.pop(message_id, None)
        if entry is None:
            return
        self._unindex(entry)
        left = self.campaigns[entry.campaign_id] - 1
        if left:
            self.campaigns[entry.campaign_id] = left
        else:
            del self.campaigns[entry.campaign_id]

    def _unindex(self, entry: Entry) -> None:
        if _by_provider(entry):
            self.by_provider.pop(entry.provider_id, None)  # type: ignore[arg-type]
        if entry.state == ACCEPTED and entry.provider_id:
            held = self.at_provider.get(entry.campaign_id)
            if held is not None:
                held.discard(entry.message_id)
                if not held:
                    del self.at_provider[entry.campaign_id]

    def accepted(self) -> list[Entry]:
        return [self.entries[m] for ids in self.at_provider.values() for m in ids]

    def settle(self, message_id: str, campaign_id: str, at_ms: int) -> None:
        campaign_id = sys.intern(campaign_id)  # shared by the campaign's settled messages
        if message_id not in self.settled:
            self.settled_campaigns[campaign_id] = self.settled_campaigns.get(campaign_id, 0) + 1
        self.settled[message_id] = (campaign_id, at_ms)

    def prune(self, committed_offset: int) -> int:
        """Keep only the id of reported entries whose request will not be read again; returns
        how many. A cancel the provider did not confirm stays whole, open to a later receipt,
        until the retention forgets it."""
        done = [e for e in self.entries.values()
                if e.state == REPORTED and e.input_offset < committed_offset
                and e.outcome != UNCONFIRMED]
        for entry in done:
            self.drop(entry.message_id)
            self.settle(entry.message_id, entry.campaign_id, entry.occurred_at or now_ms())
        return len(done)

    def expire(self, before_ms: int) -> list[str]:
        """Forget settled messages (and unconfirmed cancels) reported before ``before_ms``;
        returns their ids."""
        unconfirmed = [e.message_id for e in self.entries.values()
                       if e.outcome == UNCONFIRMED and (e.occurred_at or 0) < before_ms]
        for message_id in unconfirmed:
            self.drop(message_id)
        old = [m for m, (_, at) in self.settled.items() if at < before_ms]
        for message_id in old:
            campaign_id, _ = self.settled.pop(message_id)
            left = self.settled_campaigns[campaign_id] - 1
            if left:
                self.settled_campaigns[campaign_id] = left
            else:
                del self.settled_campaigns[campaign_id]
        return old + unconfirmed


def _by_provider(entry: Entry) -> bool:
    """Whether a receipt naming only the provider's id finds the entry: once the provider
    accepted it (a receipt sent again after its outcome is then known as one, and a delivery
    receipt after a cancel wins over the cancel)."""
    return bool(entry.provider_id) and entry.state != SUBMITTING


# A change bound for the changelog: the entry's new value, or None (a tombstone).
Change = Entry | None
# An outcome event bound for its topic: (topic, key, value, headers).
EventRecord = tuple[str, bytes, bytes, Any]


@dataclass
class Pending:
    """Everything changed since the last committed transaction."""

    changes: dict[tuple[int, str], Change] = field(default_factory=dict)
    events: dict[tuple[int, str], EventRecord] = field(default_factory=dict)
    checkpoints: dict[int, int] = field(default_factory=dict)  # partition -> receipts offset
    routed: list[Delivery] = field(default_factory=list)  # receipts of messages held elsewhere

    def __bool__(self) -> bool:
        return bool(self.changes or self.events or self.checkpoints or self.routed)

    def merge_back(self, later: Pending) -> None:
        """Put a failed transaction's content back under what changed since (``later`` wins)."""
        self.changes = {**self.changes, **later.changes}
        self.events = {**self.events, **later.events}
        self.checkpoints = {**self.checkpoints, **later.checkpoints}
        self.routed = [*self.routed, *later.routed]

    def without(self, partitions: set[int]) -> None:
        self.changes = {k: v for k, v in self.changes.items() if k[0] not in partitions}
        self.events = {k: v for k, v in self.events.items() if k[0] not in partitions}
        self.checkpoints = {p: o for p, o in self.checkpoints.items() if p not in partitions}


class Ledger:
    """A channel's ledger in one process: the partitions it holds and what is not yet in the
    changelog. ``render`` turns a reported entry into its outcome event."""

    def __init__(self, channel: str, render: Any) -> None:
        self.channel = channel
        self.render = render  # Callable[[Entry], EventRecord]
        self.lock = threading.RLock()
        self.partitions: dict[int, PartitionLedger] = {}
        self.pending = Pending()

    # -- partitions ----------------------------------------------------------------------------

    def add(self, ledgers: Iterable[PartitionLedger]) -> None:
        for ledger in ledgers:
            self.partitions[ledger.partition] = ledger

    def remove(self, partitions: Iterable[int]) -> None:
        """Partitions that left this process. What the provider said of their messages and is
        not in the changelog yet is routed to their next owner (``receipts``): the adapter will
        not say it again. Anything else of them not committed is redone by that owner (a
        message accepted whose record was lost is in doubt there; a cancellation is asked
        again)."""
        gone = set(partitions)
        for partition in gone:
            self.partitions.pop(partition, None)
        self.pending.routed.extend(
            Delivery(e.message_id, e.provider_id or "", e.outcome == DELIVERED,
                     e.occurred_at or now_ms(), e.reason or "")
            for (p, _), e in self.pending.changes.items()
            if p in gone and e is not None and e.outcome in (DELIVERED, UNDELIVERED))
        self.pending.without(gone)

    def take_pending(self) -> Pending:
        taken, self.pending = self.pending, Pending()
        return taken

    def restore_pending(self, failed: Pending) -> None:
        """A transaction failed: its content is committed with the next one, unless its
        partition left this process meanwhile."""
        failed.without({p for p, _ in failed.changes} - set(self.partitions))
        failed.merge_back(self.pending)
        self.pending = failed

    # -- lookups -------------------------------------------------------------------------------

    def find(self, message_id: str) -> tuple[PartitionLedger, Entry] | None:
        for ledger in self.partitions.values():
            entry = ledger.entries.get(message_id)
            if entry is not None:
                return ledger, entry
        return None

    def find_provider_id(self, provider_id: str) -> tuple[PartitionLedger, Entry] | None:
        for ledger in self.partitions.values():
            message_id = ledger.by_provider.get(provider_id)
            if message_id is not None:
                return ledger, ledger.entries[message_id]
        return None

    def states(self, message_ids: Iterable[str]) -> dict[str, str]:
        found = {}
        for message_id in message_ids:
            located = self.find(message_id)
            if located is not None:
                found[message_id] = located[1].state
            elif self.settled(message_id):
                found[message_id] = REPORTED
        return found

    def settled(self, message_id: str) -> bool:
        return any(message_id in ledger.settled for ledger in self.partitions.values())

    def has_campaign(self, campaign_ids: Iterable[str]) -> bool:
        """Whether any entry in memory belongs to these campaigns (a dict lookup per campaign
        and partition: a stopped backlog of a campaign never handed over costs nothing more)."""
        ids = list(campaign_ids)
        return any(c in ledger.campaigns or c in ledger.settled_campaigns
                   for ledger in self.partitions.values() for c in ids)

    def at_provider(self, campaign_id: str, partitions: Iterable[int] | None = None) -> dict[str, str]:
        """message_id -> provider_id of the campaign's messages the provider may still hold."""
        held: dict[str, str] = {}
        for partition in self.partitions if partitions is None else partitions:
            ledger = self.partitions.get(partition)
            if ledger is None:
                continue
            for message_id in ledger.at_provider.get(campaign_id, ()):
                provider_id = ledger.entries[message_id].provider_id
                if provider_id:
                    held[message_id] = provider_id
        return held

    def campaigns_at_provider(self, partitions: Iterable[int]) -> set[str]:
        return {c for p in partitions if p in self.partitions for c in self.partitions[p].at_provider}

    def unfinished(self, partitions: Iterable[int]) -> list[Accepted]:
        """Accepted messages without an outcome yet: what an adapter tracks again
        (``ProviderAdapter.resume``) when this process is assigned their partitions."""
        return [Accepted(e.message_id, e.provider_id or "", e.recipient_id,
                         e.handed_at if e.handed_at is not None else now_ms())
                for p in partitions if p in self.partitions for e in self.partitions[p].accepted()]

    # -- changes -------------------------------------------------------------------------------

    def _put(self, ledger: PartitionLedger, entry: Entry) -> None:
        ledger.put(entry)
        self.pending.changes[(ledger.partition, entry.message_id)] = entry

    def reserve(self, handoffs: Sequence[Handoff], positions: Mapping[str, tuple[int, int]]) -> Reserved:
        """Record the intent to submit these messages (``positions``: message id -> (partition,
        offset) of its request); the caller commits the changelog before submitting."""
        fresh: list[Handoff] = []
        in_doubt: list[Handoff] = []
        already = 0
        at = now_ms()
        for handoff in handoffs:
            partition, offset = positions[handoff.message_id]
            ledger = self.partitions[partition]
            entry = ledger.entries.get(handoff.message_id)
            if entry is None and handoff.message_id in ledger.settled:
                already += 1  # reported long ago, queued again: never handed over twice
                continue
            if entry is None:
                self._put(ledger, Entry(handoff.message_id, handoff.campaign_id, handoff.recipient_id,
                                        offset, SUBMITTING, submitted_at=at))
                fresh.append(handoff)
                continue
            doubted = entry.state == SUBMITTING
            self._put(ledger, replace(entry, attempts=entry.attempts + 1,
                                      submitted_at=at if doubted else entry.submitted_at,
                                      input_offset=max(entry.input_offset, offset)))
            if doubted:
                in_doubt.append(handoff)
            else:
                already += 1
        return Reserved(fresh, in_doubt, already)

    def accepted(self, provider_ids: Mapping[str, str], at_ms: int | None) -> None:
        """The provider holds these messages (message_id -> provider_id), handed over at
        ``at_ms``; None when the provider was found to hold them only later (an answer was
        lost): they were handed over at their last submission, the only time it could take them,
        which is what ``handed_at`` (and the leak count built on it) must say."""
        for message_id, provider_id in provider_ids.items():
            found = self.find(message_id)
            if found is None or found[1].state != SUBMITTING:
                continue
            ledger, entry = found
            self._put(ledger, replace(entry, state=ACCEPTED, provider_id=provider_id,
                                      handed_at=at_ms if at_ms is not None else entry.submitted_at))

    def not_held(self, message_ids: Iterable[str]) -> None:
        """The provider does not hold these messages (refused, or not found when in doubt)."""
        for message_id in message_ids:
            found = self.find(message_id)
            if found is None or found[1].state != SUBMITTING:
                continue
            ledger = found[0]
            ledger.drop(message_id)
            self.pending.changes[(ledger.partition, message_id)] = None

    def report(self, ledger: PartitionLedger, entry: Entry, outcome: Outcome) -> None:
        """An accepted message's outcome: reported with its event in the next transaction."""
        reported = replace(entry, state=REPORTED, outcome=outcome.outcome,
                           occurred_at=outcome.occurred_at, reason=outcome.reason,
                           stop_command_id=outcome.stop_command_id,
                           stop_requested_at=outcome.stop_requested_at)
        self._put(ledger, reported)
        self.pending.events[(ledger.partition, entry.message_id)] = self.render(reported)

    def delivered(self, delivery: Delivery, partition: int | None = None) -> str:
        """Apply what the provider said became of a message: ``applied``, ``early`` (its
        acceptance is not recorded yet: apply it again later), ``done`` (it has its outcome
        already) or ``unknown`` (not in the partitions held here, or not in ``partition``)."""
        found = self._locate(delivery, partition)
        if found is None:
            return "done" if delivery.message_id and self.settled(delivery.message_id) else "unknown"
        ledger, entry = found
        if entry.state == SUBMITTING:
            return "early"
        if entry.state == REPORTED and entry.outcome in (CANCELLED, UNCONFIRMED) \
                and delivery.delivered and entry.provider_id == delivery.provider_id:
            # A delivery receipt always wins over an earlier cancel (the provider delivered it
            # after all): its sent event replaces the notSent in analytics.
            self.report(ledger, entry, Outcome(DELIVERED, delivery.at_ms, delivery.detail or None))
            return "applied"
        if entry.state == REPORTED:
            return "done"
        if delivery.message_id and delivery.provider_id and entry.provider_id != delivery.provider_id:
            return "unknown"  # another submission's receipt (e.g. a reused provider id)
        self.report(ledger, entry, Outcome(DELIVERED if delivery.delivered else UNDELIVERED,
                                           delivery.at_ms, delivery.detail or None))
        return "applied"

    def _locate(self, delivery: Delivery, partition: int | None) -> tuple[PartitionLedger, Entry] | None:
        if partition is not None:
            ledger = self.partitions.get(partition)
            if ledger is None:
                return None
            message_id = delivery.message_id or ledger.by_provider.get(delivery.provider_id)
            entry = ledger.entries.get(message_id) if message_id else None
            return (ledger, entry) if entry is not None else None
        if delivery.message_id:
            return self.find(delivery.message_id)
        return self.find_provider_id(delivery.provider_id)

    def checkpoint(self, partition: int, receipts_offset: int) -> None:
        ledger = self.partitions.get(partition)
        if ledger is not None and receipts_offset > ledger.receipts_offset:
            ledger.receipts_offset = receipts_offset
            self.pending.checkpoints[partition] = receipts_offset

    def route(self, deliveries: Sequence[Delivery]) -> None:
        """Receipts of messages this process does not hold: the owner applies them."""
        self.pending.routed.extend(deliveries)

    def prune(self, committed: Mapping[int, int]) -> int:
        return sum(self.partitions[p].prune(o) for p, o in committed.items() if p in self.partitions)

    def expire(self, before_ms: int) -> int:
        """Forget settled messages reported before ``before_ms`` here and in the changelog."""
        count = 0
        for ledger in self.partitions.values():
            for message_id in ledger.expire(before_ms):
                self.pending.changes[(ledger.partition, message_id)] = None
                count += 1
        return count

    def __len__(self) -> int:
        return sum(len(p.entries) for p in self.partitions.values())

    def entries(self) -> Iterator[Entry]:
        for ledger in self.partitions.values():
            yield from ledger.entries.values()
