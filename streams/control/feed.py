"""Keeps a ControlView current: reads ``campaign-control`` to its end before the process
handles its first request (every partition assigned, no consumer group), then tails it on a
thread, runs the process's stop hooks and acknowledges each command it applied.

Acknowledgements say how far the process applied the topic (``control_offsets``) and on which of
its input partitions (``partitions``: those its stages hold, ready). A stage that is assigned a
partition first makes the view current (``sync``: everything written before the assignment is
applied), prepares it (a dispatcher restores its ledger and cancels what its provider holds of
stopped campaigns), then acknowledges it (``acknowledge_partitions``). A stop is confirmed when
every partition is held by a process whose acknowledgement covers the stop's offset
(``streams.control.confirmation``).

What a record may do is ``streams.control.records``' rule: a record whose ids break the id rule
or whose key is not its campaign's id is refused, a tombstone, an unknown action or an unreadable
record leaves every stop in force; each is counted (``estop_control_anomalies_total``) and
logged. The control plane restates a stop over such a record, so compaction keeps the stop."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from streams.clock import now_ms
from streams.control.records import refusal
from streams.control.view import Applied, ControlView
from streams.kafka.clients import consumer, producer, take
from streams.kafka.exceptions import KafkaUnavailableError
from streams.kafka.reader import assign_all, high_watermark, read_until
from streams.metrics import CONTROL_ANOMALIES, STOP_PROPAGATION, STOPS_APPLIED
from streams.serde import SerdeError, Serdes
from streams.serde.fastevents import FlatDecoder
from streams.settings import Settings

log = logging.getLogger(__name__)

# A hook halts what the process holds for a newly stopped campaign; returns how many it halted.
# A dispatcher holds nothing of a partition until it prepared it: a start-up reading a million
# stops runs hooks only for the recent ones, whose acknowledgements carry their counts, and the
# dispatcher's preparation of each partition covers all of them at once.
StopHook = Callable[[Applied], int]
# The input partitions (topic:partition) the process's stages hold, ready, right now.
HeldPartitions = Callable[[], list[str]]
SYNC_TIMEOUT_S = 60.0



class ControlFeed:
    def __init__(self, settings: Settings, view: ControlView, serdes: Serdes, process_id: str,
                 roles: list[str], acknowledge: bool = True) -> None:
        self.settings = settings
        self.view = view
        self.serdes = serdes
        self._commands = FlatDecoder(serdes.control_command)  # a start-up reads them all
        self.process_id = process_id
        self.roles = roles
        self._hooks: list[StopHook] = []
        self.held: HeldPartitions = list
        # campaign-control partition -> next offset applied to the view; a reader of it (an
        # acknowledgement, a stage's preparation) may count on everything below it.
        self._position: dict[int, int] = {}
        self._advanced = threading.Condition()
        self._acknowledge = acknowledge
        self._producer = producer(settings, **{"linger.ms": 0}) if acknowledge else None
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self.last_pass = time.monotonic()  # the tail loop's heartbeat, for the worker's /health
        self.bootstrap_s: float | None = None
        self._received_at: dict[str, int] = {}  # record timestamps of commands being applied

    def add_hook(self, hook: StopHook) -> None:
        """``hook`` for each stop applied while tailing (and each recent one read at start-up)."""
        self._hooks.append(hook)

    def position(self) -> list[int]:
        """Per partition of campaign-control, the next offset applied to the view."""
        with self._advanced:
            return [self._position.get(p, 0) for p in range(max(self._position, default=-1) + 1)]

    def sync(self, timeout_s: float = SYNC_TIMEOUT_S) -> list[int]:
        """Wait until every command written before now is applied (and its hooks ran); returns
        the position reached. A stage calls it before the first record of a partition newly
        assigned to it, so a stop confirmed before the assignment holds there too."""
        topic = self.settings.topics.control
        # A reader of its own (the tail thread owns _consumer), new each time: a client left idle
        # keeps asking a partition's old leader after the leader moved (a broker died), and a
        # preparation waits on this.
        reader = consumer(self.settings)
        try:
            ends = {p: high_watermark(reader, TopicPartition(topic, p), self.settings.admin_timeout_s)
                    for p in self._position}
        finally:
            reader.close()
        deadline = time.monotonic() + timeout_s
        with self._advanced:
            while not all(self._position.get(p, 0) >= end for p, end in ends.items()):
                left = deadline - time.monotonic()
                if left <= 0 or not self.tailing:
                    raise KafkaUnavailableError(
                        f"the control view did not reach the end of {topic} within {timeout_s:.0f}s")
                self._advanced.wait(min(left, 0.5))
            return [self._position.get(p, 0) for p in range(max(self._position, default=-1) + 1)]

    def acknowledge_partitions(self, partitions: list[str], position: list[int]) -> None:
        """Say that these newly prepared partitions have every command below ``position``
        applied (an acknowledgement without a command)."""
        if not self._acknowledge or self._producer is None or not partitions:
            return
        self._producer.produce(self.settings.topics.acks, key=self.process_id.encode(),
                               value=self.serdes.control_ack.encode({
                                   "process_id": self.process_id, "roles": self.roles,
                                   "command_id": "", "campaign_id": "", "command_requested_at": 0,
                                   "applied_at": now_ms(), "halted": 0,
                                   "partitions": partitions, "control_offsets": position}))
        self._producer.flush(10)

    def bootstrap(self) -> None:
        """Block until every command present now is applied."""
        started = time.monotonic()
        reader, ends = assign_all(self.settings, self.settings.topics.control,
                                  **{"fetch.wait.max.ms": 10})
        self._consumer = reader
        with self._advanced:
            self._position = dict.fromkeys(ends, 0)
        applied: list[Applied] = []
        recent = now_ms() - int(self.settings.ack_recent_s * 1000)
        # A start-up creates a few objects per stopped campaign, all long-lived: with the cyclic
        # garbage collector running, each full collection walks everything read so far again.
        collecting = gc.isenabled()
        gc.disable()
        try:
            read_until(reader, self.settings.topics.control, ends,
                       lambda m: self._apply(m, applied, recent))
        finally:
            if collecting:
                gc.enable()
        gc.freeze()  # and no later collection in this process walks the view again
        with self._advanced:
            for partition, end in ends.items():  # compaction may have left the last offsets empty
                self._position[partition] = max(self._position[partition], end)
        self._after_apply(applied, applied)  # only the recent ones: see _apply
        self.bootstrap_s = time.monotonic() - started
        log.info("control view ready: %d stopped campaigns, %d commands in %.2fs",
                 len(self.view), self.view.applied, self.bootstrap_s)

    def start(self) -> None:
        if self._consumer is None:
            self.bootstrap()
        self._running.set()
        self._thread = threading.Thread(target=self._tail, name="control-feed", daemon=True)
        self._thread.start()

    @property
    def tailing(self) -> bool:
        """True while the thread that applies new commands runs."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()
        if self._producer is not None:
            self._producer.flush(5)

    def _tail(self) -> None:
        assert self._consumer is not None
        while self._running.is_set():
            self.last_pass = time.monotonic()
            messages = take(self._consumer, 1000, 0.05)
            applied: list[Applied] = []
            for message in messages:
                if message.error():
                    continue
                self._apply(message, applied)
            if messages:
                # Before the hooks: the view holds these commands now, which is what a stage
                # preparing a partition reads; acknowledgements built from the position are
                # published after the hooks ran.
                self._caught_up()
            if applied:
                self._after_apply(applied, applied)

    def _caught_up(self) -> None:
        """Advance the position to where the reader is (past records without a command, and
        gaps compaction left, too) and wake whoever waits in ``sync``."""
        assert self._consumer is not None
        topic = self.settings.topics.control
        positions = self._consumer.position([TopicPartition(topic, p) for p in self._position])
        with self._advanced:
            for tp in positions:
                if tp.offset >= 0:
                    self._position[tp.partition] = max(self._position[tp.partition], tp.offset)
            self._advanced.notify_all()

    def _apply(self, message: Message, applied: list[Applied], ack_from: int | None = None) -> None:
        """Apply one record; a new command goes to ``applied`` when it is to be acknowledged
        (requested at ``ack_from`` or later: a start-up acknowledges only recent ones) or has
        stop hooks to run."""
        key = message.key()
        campaign = key.decode(errors="replace") if isinstance(key, bytes) else ""
        anomalies = self.view.anomalies
        value = message.value()
        if value is None:
            if self.view.apply_tombstone(campaign):
                log.warning("ignored a tombstone for stopped campaign %r: a stop is final", campaign)
        else:
            try:
                command = self._commands.decode(value)
            except SerdeError as exc:
                self.view.apply_anomaly()
                log.warning("ignored an unreadable control record for %r at %s: %s", campaign,
                            _where(message), exc.reason)
            else:
                refused = refusal(key, command)
                if refused is not None:
                    self.view.apply_anomaly()
                    log.warning("refused control record %s: %s", _where(message), refused)
                else:
                    self._apply_command(command, message, applied, ack_from)
        if self.view.anomalies > anomalies:
            CONTROL_ANOMALIES.inc(self.view.anomalies - anomalies)

    def _apply_command(self, command: dict[str, Any], message: Message, applied: list[Applied],
                       ack_from: int | None) -> None:
        # A re-published stop is not new: not acknowledged or run through the hooks again.
        seen = self.view.in_force(command["campaign_id"], command["command_id"])
        anomalies = self.view.anomalies
        result = self.view.apply(command)
        if result is None:
            log.warning("ignored control command %s for %r: action %r, channels %s",
                        command.get("command_id"), command.get("campaign_id"),
                        command.get("action"), command.get("channels"))
            return
        if self.view.anomalies > anomalies:
            log.warning("control command %s names unknown channels: %s",
                        result.command_id, command.get("channels"))
        if not seen:
            # A start-up keeps only what it acknowledges; the start hooks take the rest.
            acknowledged = ack_from is None or result.requested_at >= ack_from
            if acknowledged:
                self._received_at[result.command_id] = message.timestamp()[1]
                applied.append(result)

    def _after_apply(self, to_ack: list[Applied], applied: list[Applied]) -> None:
        halted: dict[str, int] = {}
        if self._hooks:
            for result in applied:
                if result.newly_halted:
                    halted[result.command_id] = sum(hook(result) for hook in self._hooks)
        if to_ack and self._acknowledge:
            # Only a stage's feed applies stops; read-only views (CLI, control service, launcher)
            # must not count in the data plane's stop metrics.
            applied_at = now_ms()
            for result in to_ack:
                STOPS_APPLIED.inc()
                STOP_PROPAGATION.observe(
                    max(applied_at - self._received_at.get(result.command_id, applied_at), 0) / 1000)
        self._received_at.clear()
        if not self._acknowledge or self._producer is None:
            return
        # Every partition held now has every command applied so far: those prepared before the
        # hooks above ran had them run, those prepared since read the view (see the module).
        partitions, position = self.held(), self.position()
        for result in to_ack:
            ack = {
                "process_id": self.process_id,
                "roles": self.roles,
                "command_id": result.command_id,
                "campaign_id": result.campaign_id,
                "command_requested_at": result.requested_at,
                "applied_at": now_ms(),
                "halted": halted.get(result.command_id, 0),
                "partitions": partitions,
                "control_offsets": position,
            }
            self._producer.produce(self.settings.topics.acks, key=result.command_id.encode(),
                                   value=self.serdes.control_ack.encode(ack))
        self._producer.flush(10)


def _where(message: Message) -> str:
    return f"{message.topic()}[{message.partition()}]@{message.offset()}"
