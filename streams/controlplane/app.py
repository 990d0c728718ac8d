"""The control plane as a faust-streaming app (aiokafka transport).

Tables (raw Avro bytes, exactly as on the topics; decoded when read):

* ``campaigns``: campaign id -> latest ``CampaignStatus`` from ``campaign-status``;
* ``commands``: ``<partition>/<offset>`` -> ``ControlCommand`` from ``campaign-control``, so the
  control view is rebuilt in topic order (a compacted topic keeps only a campaign's last command;
  the table keeps every command it saw);
* ``acks``: ``<command id>/<process id>`` -> ``ControlAck`` from ``campaign-control-acks``;
* ``confirmations``: command id -> when the stop was seen confirmed, fed by the app's own
  internal topic, so a confirmation survives a restart of the service.

The app reads its three source topics with its own consumer group from the earliest offset on
first start; later starts recover the tables from their changelogs and resume from the committed
offsets. ``GET /health`` answers 200 (and the ready line is printed) only once the tables hold
every record that was on the topics when the service started.

Counts come from the analytics store (``streams.sink``); a stop is issued with the same code as
``estop stop`` (``streams.control.stop``). Blocking calls (Kafka admin, the store, issuing a stop)
run on worker threads, never on the event loop."""

from __future__ import annotations

import asyncio
import csv
import functools
import hashlib
import io
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, TypeVar

import faust
from aiohttp import web
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from faust.types import EventT, StreamT, TopicT

from streams.campaigns.canary import Canary
from streams.campaigns.canary import read_state as read_canary
from streams.campaigns.canary import release as release_canary
from streams.campaigns.exceptions import CanaryError, RelaunchError
from streams.campaigns.lifecycle import effective_state, status_record
from streams.campaigns.relaunch import plan_relaunch, relaunch
from streams.clock import now_ms
from streams.control.confirmation import Coverage, Holdings, holdings
from streams.control.exceptions import InvalidStopError
from streams.control.preview import preview_stop
from streams.control.records import covers, refusal, restatement
from streams.control.stop import StopResult, audited_stop, audited_stop_all, validate
from streams.control.view import ALL_CHANNELS, ControlView
from streams.controlplane import auth, boundary, state
from streams.controlplane.exceptions import KafkaUnreachableError
from streams.controlplane.offsets import (
    TP,
    committed_offsets,
    last_record_offsets,
    partition_counts,
)
from streams.controlplane.topics import ensure_topics, faust_topic_spec
from streams.exceptions import EstopError, UsageError
from streams.kafka.clients import admin, process_id, producer
from streams.kafka.deadletter import skip_unreadable
from streams.kafka.topics import TopicSpec
from streams.metrics import (
    CAMPAIGNS,
    LIVE_PROCESSES,
    STOP_UNCONFIRMED_SECONDS,
    STOPS_UNCONFIRMED,
)
from streams.models import STATE_FINISHED, STATE_SENDING, STATE_STOPPED
from streams.security import audit
from streams.serde import SerdeError, Serdes, serdes_for
from streams.settings import Settings
from streams.sink.exceptions import UnknownCampaignError
from streams.sink.report import campaign_timeline, export_rows, stored_outcomes
from streams.sink.store import OutcomeStore, open_store

log = logging.getLogger(__name__)

T = TypeVar("T")

RAW: dict[str, Any] = {"key_type": bytes, "value_type": bytes,
                       "key_serializer": "raw", "value_serializer": "raw"}
LIVE_MAX_AGE_S = 1.0  # answers use a live set at most this old
# A relaunch's state, as `GET /campaigns/{id}/relaunch` answers it.
RELAUNCH_QUEUEING, RELAUNCH_DONE, RELAUNCH_FAILED = "queueing", "done", "failed"
TICK_S = 1.0  # confirmation tracking and gauges


class ControlPlane:
    """One control service: the Faust app, its tables, agents, timer and web views."""

    def __init__(self, settings: Settings, routes: auth.Routes, serdes: Serdes | None = None,
                 on_ready: Callable[[ControlPlane], None] | None = None) -> None:
        """``routes``: the access of every HTTP route (``streams.controlplane.web``), which the
        boundary and auth middlewares check before any view runs."""
        boundary.check_open(settings)  # before anything: no open API by accident
        self.settings = settings
        self.serdes = serdes or serdes_for(settings)
        self.process_id = process_id("control")
        self.on_ready = on_ready
        topics = settings.topics
        self.source_topics = [topics.status, topics.control, topics.acks]
        partitions = partition_counts(settings, self.source_topics)
        self.app_id = f"{settings.topic_prefix}estop-control"
        datadir = settings.data_dir / "control" / self.app_id
        datadir.parent.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            self.app_id,
            broker=[f"kafka://{host.strip()}" for host in settings.bootstrap_servers.split(",")],
            broker_credentials=_credentials(settings),
            broker_client_id=self.process_id,
            # A restarted service rejoins its group quickly after a crash.
            broker_session_timeout=10.0,
            broker_heartbeat_interval=1.0,
            store="memory://",
            datadir=str(datadir),
            autodiscover=False,
            topic_partitions=1,
            topic_replication_factor=settings.replication_factor,
            table_standby_replicas=0,
            consumer_auto_offset_reset="earliest",
            web_enabled=True,
            web_port=settings.control_port,
            web_bind=settings.control_host,
            web_host=settings.control_host,
            web_ssl_context=boundary.tls_context(settings),
            # The boundary (host, size, headers), then tokens and roles for every route, before
            # any handler runs (streams.controlplane.boundary, .auth).
            web_application_options={"middlewares": [
                boundary.middleware(settings, routes, self._on_refused),
                auth.middleware(settings, routes, self._on_refused)]},
            # Only this module's views: no table dumps or router pages on the API port.
            web_router_enabled=False,
            web_tables_enabled=False,
            web_graph_enabled=False,
            web_stats_enabled=False,
        )
        self.status_topic = self.app.topic(topics.status, **RAW)
        self.control_topic = self.app.topic(topics.control, **RAW)
        self.acks_topic = self.app.topic(topics.acks, **RAW)
        self.confirm_topic = self.app.topic(f"{self.app_id}-stop-confirmations", internal=True,
                                            partitions=1, compacting=True, **RAW)
        table: dict[str, Any] = {"key_type": bytes, "value_type": bytes}
        self.campaigns = self.app.Table("campaigns", partitions=partitions[topics.status],
                                        help="campaign id -> CampaignStatus", **table)
        self.commands = self.app.Table("commands", partitions=partitions[topics.control],
                                       help="partition/offset -> ControlCommand", **table)
        self.acks = self.app.Table("acks", partitions=partitions[topics.acks],
                                   help="command id/process id -> ControlAck", **table)
        self.confirmations = self.app.Table("confirmations", partitions=1,
                                            help="command id -> confirmation (JSON)", **table)

        self.ready = False
        self._positions: dict[TP, int] = {}  # last offset each agent processed
        self._writes = 0  # any table write; invalidates the decoded caches below
        self._cache: dict[str, tuple[tuple[int, int], Any]] = {}
        self._live = Holdings([])
        self._live_at = float("-inf")
        self._live_lock: asyncio.Lock | None = None
        self._confirm_sent: set[str] = set()
        self._kafka_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="control-kafka")
        # Stops and the kill switch run on threads nothing else uses: no flood of reads, refused
        # requests or audit writes can keep a stop waiting for a thread.
        self._stop_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="control-stop")
        # Audit events, restated stops and statuses: one thread, one long-lived producer each.
        self._audit_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="control-audit")
        self._store_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="control-store")
        # The plane's one audit writer: other areas' views audit through it too.
        self.trail = audit.AuditWriter(settings, self.serdes)
        self._throttle = audit.Throttle()
        self._repairs: Producer | None = None  # restates stops and statuses (the audit thread's)
        # Campaign -> (what its latest control record stops on its own, where, what it was):
        # campaigns whose latest record is not a full stop, checked against the view once ready.
        self._suspects: dict[str, tuple[frozenset[str], str, str]] = {}
        # Campaign -> its last good status, for campaigns whose latest status record is not one.
        self._status_repairs: dict[str, bytes] = {}
        self._itself = audit.Actor("control plane", "kafka", self.process_id)
        self._closing = ExitStack()
        self._admin = self._closing.enter_context(admin(settings))
        self._store: OutcomeStore | None = None
        self._timeout_ms = int(settings.stop_timeout_s * 1000)
        self._relaunches: dict[str, dict[str, Any]] = {}  # new id -> its relaunch, as answered

        self._register_agents()
        self.app.timer(TICK_S, name=f"{self.app_id}.track-confirmations")(self._tick)
        self.app.task(self._catch_up)

    def internal_topics(self) -> list[TopicSpec]:
        """Faust's own topics for this app: leader election, table changelogs, confirmations."""
        leader = TopicSpec(f"{self.app_id}-__assignor-__leader", 1)
        return [leader, *(faust_topic_spec(t.changelog_topic) for t in self.app.tables.values()),
                faust_topic_spec(self.confirm_topic)]

    def declare_topics(self) -> list[str]:
        """Create Faust's internal topics before Faust starts (see streams.controlplane.topics)."""
        return ensure_topics(self.settings, self.internal_topics())

    # -- agents: each writes one table, inside the event's context ----------------------------

    def _register_agents(self) -> None:
        def agent(topic: TopicT, name: str, handle: Callable[[EventT], None]) -> None:
            async def process(stream: StreamT) -> None:
                async for event in stream.events():
                    try:
                        handle(event)
                    finally:
                        message = event.message
                        self._positions[(message.topic, message.partition)] = message.offset

            self.app.agent(topic, name=f"{self.app_id}.{name}")(process)

        agent(self.status_topic, "campaign-status", self._on_status)
        agent(self.control_topic, "campaign-control", self._on_command)
        agent(self.acks_topic, "campaign-control-acks", self._on_ack)
        agent(self.confirm_topic, "stop-confirmations", self._on_confirmation)

    def _on_status(self, event: EventT) -> None:
        key, value = event.key, event.value
        message = event.message
        try:
            record = status_record(self.serdes, key, value)
        except SerdeError as exc:
            skip_unreadable(message.topic, message.partition, message.offset, exc.reason)
            record = None
        else:
            if record is None:
                log.warning("ignored a tombstone on %s[%d]@%d", message.topic, message.partition,
                            message.offset)
        if record is not None:
            self.campaigns[key] = value
            self._writes += 1
            self._status_repairs.pop(record["campaign_id"], None)
            return
        # A tombstone, an unreadable record or one naming another campaign never hides a
        # campaign: its last status stays, and is restated so compaction keeps it.
        known = self.campaigns.get(key) if isinstance(key, bytes) else None
        if known is not None and isinstance(key, bytes):
            self._status_repairs[key.decode()] = known

    def _on_command(self, event: EventT) -> None:
        """Keep a command the view applies; audit a record refused by the rule every reader
        applies (``streams.control.records``); note a campaign whose latest record is no full
        stop, to restate its stop if it has one."""
        message, value = event.message, event.value
        key = event.key if isinstance(event.key, bytes) else None
        where = f"{message.topic}[{message.partition}]@{message.offset}"
        campaign = key.decode(errors="replace") if key is not None else ""
        command = None if value is None else self._decode(self.serdes.control_command, value, event)
        refused = None if command is None else refusal(key, command)
        if command is not None and refused is None:
            self.commands[f"{message.partition:05d}/{message.offset:020d}".encode()] = value
            self._writes += 1
        elif value is not None:
            why = refused or "unreadable: not a ControlCommand"
            # Who wrote it is not in the record: the audit names where it is (its own kind for
            # the throttle: each record is audited, at most WINDOWS_MAX of them per window).
            writer = audit.Actor("a producer of the topic", "kafka", where)
            self._audit_soon(audit.event(
                self.settings, writer, audit.CONTROL_RECORD, audit.REFUSED, campaign,
                command_id=command["command_id"] if command else None, detail=f"{where}: {why}",
                audit_id=_record_audit_id(audit.REFUSED, where)))
        covered = covers(None if refused else command)
        if covered == ALL_CHANNELS:
            self._suspects.pop(campaign, None)
        elif campaign:
            what = ("a tombstone" if value is None else "a refused record" if command is None or refused
                    else f"{command['action']!r} of {', '.join(sorted(covered)) or 'no channel'}")
            self._suspects[campaign] = (covered, where, what)

    def _on_ack(self, event: EventT) -> None:
        if event.value is None:
            return
        ack = self._decode(self.serdes.control_ack, event.value, event)
        if ack is not None:
            # A process acknowledging partitions newly assigned to it names no command: one
            # entry per process and set of partitions.
            what = ack["command_id"] or f"/{','.join(ack['partitions'])}"
            self.acks[f"{what}/{ack['process_id']}".encode()] = event.value
            self._writes += 1

    def _on_confirmation(self, event: EventT) -> None:
        if isinstance(event.key, bytes) and event.value is not None and event.key not in self.confirmations:
            self.confirmations[event.key] = event.value
            self._writes += 1

    @staticmethod
    def _decode(serde: Any, value: bytes, event: EventT) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = serde.decode(value)
            return record
        except SerdeError as exc:
            message = event.message
            skip_unreadable(message.topic, message.partition, message.offset, exc.reason)
            return None

    # -- decoded state, rebuilt only after a write -------------------------------------------

    def _cached(self, name: str, size: int, build: Callable[[], T]) -> T:
        key = (self._writes, size)
        held = self._cache.get(name)
        if held is None or held[0] != key:
            held = (key, build())
            self._cache[name] = held
        value: T = held[1]
        return value

    def statuses(self) -> dict[str, dict[str, Any]]:
        def build() -> dict[str, dict[str, Any]]:
            return {k.decode(): self.serdes.campaign_status.decode(v) for k, v in self.campaigns.items()}

        return self._cached("statuses", len(self.campaigns), build)

    def view(self) -> tuple[ControlView, set[str]]:
        """The control view over every command seen, in topic order, and the campaigns it names."""
        def build() -> tuple[ControlView, set[str]]:
            view = ControlView()
            campaigns: set[str] = set()
            for key in sorted(self.commands.keys()):
                command = self.serdes.control_command.decode(self.commands[key])
                if view.apply(command) is not None:
                    campaigns.add(command["campaign_id"])
            return view, campaigns

        return self._cached("view", len(self.commands), build)

    def acks_by_command(self) -> tuple[dict[str, dict[str, dict[str, Any]]], Coverage]:
        """Acknowledgements of each command by process, and what all of them cover."""
        def build() -> tuple[dict[str, dict[str, dict[str, Any]]], Coverage]:
            index: dict[str, dict[str, dict[str, Any]]] = {}
            coverage = Coverage()
            for value in self.acks.values():
                ack = self.serdes.control_ack.decode(value)
                coverage.add(ack)
                if ack["command_id"]:
                    index.setdefault(ack["command_id"], {})[ack["process_id"]] = ack
            return index, coverage

        return self._cached("acks", len(self.acks), build)

    def positions(self) -> dict[str, tuple[int, int]]:
        """command id -> (partition, offset) of the command in campaign-control."""
        def build() -> dict[str, tuple[int, int]]:
            found: dict[str, tuple[int, int]] = {}
            for key, value in self.commands.items():
                partition, offset = key.decode().split("/")
                command_id = self.serdes.control_command.decode(value)["command_id"]
                found.setdefault(command_id, (int(partition), int(offset)))
            return found

        return self._cached("positions", len(self.commands), build)

    def evidence(self, holdings: Holdings) -> state.Evidence:
        acks, coverage = self.acks_by_command()
        return state.Evidence(acks, coverage, holdings, self.positions(), self.confirmed())

    def confirmed(self) -> dict[str, dict[str, Any]]:
        def build() -> dict[str, dict[str, Any]]:
            return {k.decode(): json.loads(v) for k, v in self.confirmations.items()}

        return self._cached("confirmations", len(self.confirmations), build)

    # -- blocking work off the event loop ----------------------------------------------------

    async def kafka(self, func: Callable[..., T], *args: Any) -> T:
        """Run a blocking Kafka call (a read to a topic's end, an acknowledged write) off the
        event loop: for this plane's views and those of other areas (guardrails, canary)."""
        return await asyncio.get_running_loop().run_in_executor(self._kafka_pool, func, *args)

    async def _stopping(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._stop_pool, func, *args)

    async def live(self, max_age_s: float = LIVE_MAX_AGE_S) -> Holdings:
        """Who holds which partition of the gate and dispatcher topics, as `estop stop` asks;
        raises when a group cannot be described (never "nobody" standing for "unknown")."""
        if self._live_lock is None:
            self._live_lock = asyncio.Lock()
        async with self._live_lock:
            if time.monotonic() - self._live_at > max_age_s:
                self._live = await self.kafka(
                    functools.partial(holdings, self.settings, self._admin))
                self._live_at = time.monotonic()
                LIVE_PROCESSES.set(len(self._live.live))
        return self._live

    async def live_or_last(self) -> Holdings:
        """For answers: the holdings now, or the last known when Kafka cannot say right now."""
        try:
            return await self.live()
        except (KafkaException, TimeoutError) as exc:
            log.warning("cannot describe the gate and dispatcher groups (%s); answering with "
                        "what they were %.1fs ago", exc, time.monotonic() - self._live_at)
            return self._live

    async def _in_store(self, func: Callable[..., T], *args: Any) -> T:
        """``func(store, *args)`` on the store's one thread (the connection is not shared)."""
        def call() -> T:
            if self._store is None:
                self._store = open_store(self.settings)
            return func(self._store, *args)

        return await asyncio.get_running_loop().run_in_executor(self._store_pool, call)

    @staticmethod
    def _reports(store: OutcomeStore, campaign_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        """What the analytics store holds of each campaign (``stored_outcomes``); None for a
        campaign it has not seen."""
        reports: dict[str, dict[str, Any] | None] = {}
        for campaign_id in campaign_ids:
            try:
                reports[campaign_id] = stored_outcomes(store, campaign_id)
            except UnknownCampaignError:
                reports[campaign_id] = None
        return reports

    async def reports(self, campaign_ids: list[str]) -> dict[str, dict[str, Any] | None]:
        try:
            return await self._in_store(self._reports, campaign_ids)
        except EstopError as exc:  # the store is unreachable: state without counts
            log.warning("analytics store unavailable: %s", exc)
            return dict.fromkeys(campaign_ids)

    # -- answers -----------------------------------------------------------------------------

    def campaign_ids(self) -> list[str]:
        return sorted(set(self.statuses()) | self.view()[1])

    async def campaign(self, campaign_id: str) -> dict[str, Any] | None:
        status = self.statuses().get(campaign_id)
        view, stopped = self.view()
        if status is None and campaign_id not in stopped:
            return None
        live = await self.live_or_last()
        report = (await self.reports([campaign_id]))[campaign_id]
        return state.campaign_detail(campaign_id, status, view, self.evidence(live), report,
                                     now_ms(), self._timeout_ms)

    async def campaign_list(self) -> list[dict[str, Any]]:
        ids = self.campaign_ids()
        live = await self.live_or_last()
        reports = await self.reports(ids)
        statuses, (view, _), evidence = self.statuses(), self.view(), self.evidence(live)
        now = now_ms()
        return [state.campaign_summary(state.campaign_detail(
            campaign_id, statuses.get(campaign_id), view, evidence, reports[campaign_id], now,
            self._timeout_ms))
            for campaign_id in ids]

    async def _audit(self, entry: dict[str, Any], throttled: bool = False) -> None:
        """Write an audit event on the audit thread; a ``throttled`` one (a refused or rejected
        attempt) only when it is the first of its kind in its window (``audit.Throttle``)."""
        if throttled and not self._throttle.admit(entry, time.monotonic()):
            return
        if throttled:
            log.warning("%s %s by %s from %s: %s", entry["action"], entry["outcome"],
                        entry["actor"], entry["source"], entry["detail"])
        problem = await asyncio.get_running_loop().run_in_executor(
            self._audit_pool, self.trail.write, entry)
        if problem:
            log.warning("%s", problem)

    def _audit_soon(self, entry: dict[str, Any]) -> None:
        """``_audit`` (throttled) from code that cannot await (an agent's handler)."""
        asyncio.get_running_loop().create_task(self._audit(entry, throttled=True))

    async def _on_refused(self, action: str, who: auth.Identity | None, request: web.Request,
                          status: int, why: str) -> None:
        """A request the auth middleware refused (401/403) on an audited route."""
        actor = audit.Actor(who.name if who else "unauthenticated", "http", auth.source_of(request),
                            who.role if who else None)
        campaign_id = request.match_info.get("campaign_id", "")
        await self._audit(audit.event(self.settings, actor, action, audit.REFUSED, campaign_id,
                                      detail=f"{status}: {why}"), throttled=True)

    async def rejected(self, action: str, who: auth.Identity, campaign_id: str, problem: str,
                       status: int = 400) -> None:
        """A request of an audited route refused for what it holds (400, 413): audited too."""
        await self._audit(audit.event(self.settings, auth.actor(who), action, audit.REJECTED,
                                      campaign_id, detail=f"{status}: {problem}"), throttled=True)

    async def audit_trail(self, campaign_id: str | None, limit: int,
                          before: tuple[int, str] | None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of audit events from the analytics store (the sink stores them from the audit
        topic), oldest first: the latest ``limit`` before the cursor ``before``; with the
        cursor of the page before it, or None when there is none."""
        page = await self._in_store(lambda store: store.audit(campaign_id, limit + 1, before))
        older = len(page) > limit
        page = page[-limit:]
        return page, (f"{page[0]['at']}:{page[0]['audit_id']}" if older and page else None)

    async def stop(self, campaign_id: str, reason: str, channels: list[str], force: bool,
                   who: auth.Identity) -> StopResult:
        """Issue a stop exactly as `estop stop` does, as ``who``, without waiting for
        confirmation; audited whatever the outcome. Raises InvalidStopError (the reason or the
        channels; CampaignNotStoppableError: a campaign not Sending or Finished without
        ``force``) and KafkaUnreachableError (Kafka did not take it)."""
        try:
            validate(reason, channels)  # the CLI's own checks: reason, channels
        except InvalidStopError as exc:
            await self.rejected(audit.STOP, who, campaign_id, str(exc))
            raise
        try:
            result = await self._stopping(audited_stop, self.settings, self.serdes, auth.actor(who),
                                          campaign_id, reason, channels, 0.0, force, self.trail)
        except InvalidStopError:
            raise
        except EstopError as exc:  # Kafka unreachable or refusing: nothing confirmed written
            raise KafkaUnreachableError(str(exc)) from exc
        if result.audit_problem:
            log.warning("%s", result.audit_problem)
        return result

    async def canary(self, campaign_id: str) -> Canary | None:
        """The campaign's canary (None: it was launched without one). Raises
        KafkaUnreachableError."""
        try:
            return await self.kafka(read_canary, self.settings, self.serdes, campaign_id)
        except EstopError as exc:
            raise KafkaUnreachableError(str(exc)) from exc

    async def release(self, campaign_id: str, who: auth.Identity) -> Canary:
        """Release the rest of a canary that is holding, as ``who`` (what `estop release` does);
        audited once written. Raises CanaryNotHoldingError (nothing written) and
        KafkaUnreachableError."""
        try:
            state = await self.kafka(release_canary, self.settings, self.serdes, campaign_id,
                                      who.name)
        except CanaryError:
            raise
        except EstopError as exc:
            raise KafkaUnreachableError(str(exc)) from exc
        await self._audit(audit.event(self.settings, auth.actor(who), audit.RELEASE,
                                      audit.ACCEPTED, campaign_id, channels=sorted(state["cohort"]),
                                      detail="the rest of the canary released"))
        return state

    async def stop_preview(self, campaign_id: str, channels: list[str]) -> dict[str, Any]:
        """What a stop would halt now (`estop stop --dry-run`); nothing written. Raises
        InvalidStopError, UnknownCampaignError (user mistakes) and KafkaUnreachableError."""
        report = (await self.reports([campaign_id]))[campaign_id]
        try:
            impact = await self.kafka(preview_stop, self.settings, self.serdes, campaign_id,
                                       channels, report)
        except UsageError:
            raise
        except EstopError as exc:
            raise KafkaUnreachableError(str(exc)) from exc
        return impact.as_dict()

    async def stop_all(self, reason: str, who: auth.Identity) -> list[StopResult]:
        """The kill switch: every campaign Sending or Finished, as `estop stop --all` does, as
        ``who``, without waiting for confirmation; audited. One result per campaign (its
        ``error`` set for one it could not stop); raises InvalidStopError (the reason) and
        KafkaUnreachableError."""
        try:
            return await self._stopping(audited_stop_all, self.settings, self.serdes,
                                        auth.actor(who), reason, 0.0, self.trail)
        except InvalidStopError:
            raise
        except EstopError as exc:
            raise KafkaUnreachableError(str(exc)) from exc

    async def timeline(self, campaign_id: str) -> dict[str, Any] | None:
        """Outcomes over time (the console's chart) with the campaign's stops marked."""
        if campaign_id not in self.campaign_ids():
            return None
        try:
            series = await self._in_store(campaign_timeline, campaign_id)
        except UnknownCampaignError:
            series = {"campaign_id": campaign_id, "start": None, "slice_ms": 0, "points": []}
        view, _ = self.view()
        series["stops"] = [{"command_id": s.command_id, "at": s.requested_at,
                            "requested_by": s.requested_by}
                           for s in view.stops(campaign_id)]
        return series

    async def export_csv(self, campaign_id: str, outcome: str, channel: str | None,
                         who: auth.Identity) -> str:
        """The CSV `estop export` writes, as text, audited under ``who``; raises
        UnknownCampaignError."""
        def build(store: OutcomeStore) -> tuple[str, int]:
            text = io.StringIO()
            rows = list(export_rows(store, campaign_id, outcome, channel))
            csv.writer(text).writerows(rows)
            return text.getvalue(), len(rows) - 1

        text, rows = await self._in_store(build)
        await self._audit(audit.event(self.settings, auth.actor(who), audit.EXPORT, audit.ACCEPTED,
                                      campaign_id, channels=[channel] if channel else [],
                                      detail=f"{rows:,} {outcome} row(s)"), throttled=True)
        return text

    async def relaunch(self, source: str, new_id: str, who: auth.Identity,
                       canary: float | None = None) -> dict[str, Any]:
        """Queue the unsent audience of ``source`` as campaign ``new_id`` (as `estop relaunch`),
        as ``who``: checked first (UnknownCampaignError, RelaunchError: nothing written), then
        launched in the background; the relaunch as ``relaunch_state`` answers it, which follows
        it to its end, failure included. Audited either way."""
        known = set(self.campaign_ids()) | set(self._relaunches)
        try:
            plan = await self._in_store(plan_relaunch, source, new_id, known)
        except (UnknownCampaignError, RelaunchError) as exc:
            await self._audit(audit.event(self.settings, auth.actor(who), audit.RELAUNCH, audit.REJECTED,
                                          source, detail=f"as {new_id}: {exc}"), throttled=True)
            raise
        job: dict[str, Any] = {
            "campaign_id": plan.campaign_id, "source": plan.source, "state": RELAUNCH_QUEUEING,
            "recipients": plan.recipients, "channels": {c: len(r) for c, r in plan.audience.items()},
            "requested_by": who.name, "queued": None, "error": None, "canary": canary,
            "status_url": f"/campaigns/{plan.campaign_id}/relaunch"}
        self._relaunches[plan.campaign_id] = job

        def note(outcome: str, detail: str) -> None:
            problem = self.trail.write(audit.event(
                self.settings, auth.actor(who), audit.RELAUNCH, outcome, plan.source,
                channels=sorted(plan.audience), detail=f"as {plan.campaign_id}: {detail}"))
            if problem:
                log.warning("%s", problem)

        def run() -> None:
            note(audit.ACCEPTED, f"{plan.recipients:,} notSent recipient(s)")
            try:
                result = relaunch(self.settings, self.serdes, plan, canary=canary)
            except Exception as exc:  # reported to the caller (relaunch_state) and audited
                if not isinstance(exc, EstopError):
                    log.exception("relaunch of %s as %s failed", plan.source, plan.campaign_id)
                error = str(exc) if isinstance(exc, EstopError) else f"unexpected error: {exc!r}"
                self._relaunches[plan.campaign_id] = {**job, "state": RELAUNCH_FAILED,
                                                      "error": error}
                note(audit.FAILED, error)
                return
            self._relaunches[plan.campaign_id] = {**job, "state": RELAUNCH_DONE,
                                                  "queued": result.queued,
                                                  "lifecycle": result.state}

        threading.Thread(target=run, name=f"relaunch-{plan.campaign_id}", daemon=True).start()
        return job

    def relaunch_state(self, campaign_id: str) -> dict[str, Any] | None:
        """A relaunch this service started as ``campaign_id``: queueing, done or failed (why)."""
        return self._relaunches.get(campaign_id)

    # -- start-up and the periodic confirmation check ------------------------------------------

    async def _catch_up(self) -> None:
        """Ready once every record present on the source topics at start-up is in the tables
        (recovered from a changelog, or consumed now)."""
        while True:
            try:
                last = await self.kafka(last_record_offsets, self.settings, self.source_topics)
                committed = await self.kafka(committed_offsets, self.settings, self.app_id,
                                              list(last))
                break
            except Exception as exc:  # the broker is away: try again, never answer stale
                log.warning("control service cannot read its topics yet: %s", exc)
                await asyncio.sleep(1.0)
        pending = {tp: offset for tp, offset in last.items() if committed.get(tp, -1) <= offset}
        await self.app.tables.recovery.completed.wait()  # type: ignore[attr-defined]
        while any(self._positions.get(tp, -1) < offset for tp, offset in pending.items()):
            await asyncio.sleep(0.05)
        while True:
            try:
                await self.live(max_age_s=0)
                break
            except (KafkaException, TimeoutError) as exc:
                log.warning("cannot describe the gate and dispatcher groups yet: %s", exc)
                await asyncio.sleep(1.0)
        self.ready = True
        await self._tick()
        log.info("control service ready: %d campaigns, %d commands, %d acks",
                 len(self.campaigns), len(self.commands), len(self.acks))
        if self.on_ready is not None:
            self.on_ready(self)

    async def _tick(self) -> None:
        """Record stops newly confirmed and export the stops still waiting for confirmation;
        write the audit summaries of refused attempts whose window ended; restate the stops and
        statuses that records refused since the last tick would have erased."""
        if not self.ready:
            return
        for summary in self._throttle.due(time.monotonic()):
            await self._audit(summary)
        await self._repair()
        try:
            live = await self.live()
        except (KafkaException, TimeoutError) as exc:
            # Unknown is not empty: nothing is recorded confirmed from a failed read.
            log.warning("cannot describe the gate and dispatcher groups: %s", exc)
            return
        view, campaign_ids = self.view()
        evidence = self.evidence(live)
        confirmed = evidence.confirmations
        now = now_ms()
        window_ms = int(self.settings.ack_recent_s * 1000)
        waiting: list[int] = []
        for campaign_id in sorted(campaign_ids):
            for stop in view.stops(campaign_id):
                if stop.command_id in confirmed:
                    continue
                result = state.confirmation(stop, evidence)
                if result.confirmed:
                    if stop.command_id not in self._confirm_sent:
                        record = {"confirmed_at": result.confirmed_at or now,
                                  "live": list(result.expected)}
                        await self.confirm_topic.send(key=stop.command_id.encode(),
                                                      value=json.dumps(record).encode())
                        self._confirm_sent.add(stop.command_id)
                elif now - stop.requested_at <= window_ms:
                    # Older stops are confirmed as soon as every partition is held again; the
                    # gauge follows the recent ones, which an operator is waiting for.
                    waiting.append(now - stop.requested_at)
        STOPS_UNCONFIRMED.set(len(waiting))
        STOP_UNCONFIRMED_SECONDS.set(max(waiting) / 1000 if waiting else 0)
        statuses = self.statuses()
        by_state = dict.fromkeys((STATE_SENDING, STATE_FINISHED, STATE_STOPPED), 0)
        for campaign_id in set(statuses) | campaign_ids:
            current = effective_state(statuses.get(campaign_id), view, campaign_id) or "unknown"
            by_state[current] = by_state.get(current, 0) + 1
        for name, count in by_state.items():
            CAMPAIGNS.labels(name).set(count)

    async def _repair(self) -> None:
        """Restate the stop in force of every stopped campaign whose latest control record is
        not a stop of all its stopped channels, and the last status of every campaign whose
        latest status record is not one: compaction keeps only a key's latest record."""
        if not self._suspects and not self._status_repairs:
            return
        view, _ = self.view()
        stops: list[tuple[dict[str, Any], str]] = []
        for campaign, (covered, where, what) in self._suspects.items():
            stopped = view.channels_stopped(campaign)
            command = restatement(view, campaign)
            if stopped and not stopped <= covered and command is not None:
                stops.append((command, f"its latest record, {what} at {where}, would have lifted "
                                       f"its stop of {', '.join(sorted(stopped))} once compacted"))
        statuses = list(self._status_repairs.items())
        self._suspects.clear()
        self._status_repairs.clear()
        if stops or statuses:
            await asyncio.get_running_loop().run_in_executor(
                self._audit_pool, self._restate, stops, statuses)

    def _restate(self, stops: list[tuple[dict[str, Any], str]], statuses: list[tuple[str, bytes]]) -> None:
        """On the audit thread: write the restatements, then audit each restated stop."""
        if self._repairs is None:
            self._repairs = producer(self.settings, **{"linger.ms": 0})
        out, topics = self._repairs, self.settings.topics
        failed: dict[tuple[str, str], str] = {}

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                key = message.key() or b""
                failed[(message.topic() or "", key.decode(errors="replace"))] = error.str()

        try:
            for command, _why in stops:
                out.produce(topics.control, key=command["campaign_id"].encode(),
                            value=self.serdes.control_command.encode(command), on_delivery=delivered)
            for campaign, value in statuses:
                out.produce(topics.status, key=campaign.encode(), value=value, on_delivery=delivered)
            out.flush(self.settings.admin_timeout_s)
        except (KafkaException, BufferError) as exc:
            for command, _why in stops:
                failed.setdefault((topics.control, command["campaign_id"]), str(exc))
        for campaign, _value in statuses:
            if (topics.status, campaign) in failed:
                log.warning("could not restate the status of %r: %s", campaign,
                            failed[(topics.status, campaign)])
        for command, why in stops:
            problem = failed.get((topics.control, command["campaign_id"]))
            log.warning("%s the stop of %r: %s%s", "could not restate" if problem else "restated",
                        command["campaign_id"], why, f" ({problem})" if problem else "")
            written = self.trail.write(audit.event(
                self.settings, self._itself, audit.CONTROL_RECORD,
                audit.FAILED if problem else audit.REPAIRED, command["campaign_id"],
                command_id=command["command_id"], reason=command["reason"],
                channels=command["channels"],
                detail=f"{why}: " + (f"could not restate the stop in force: {problem}" if problem
                                     else "restated the stop in force")))
            if written:
                log.warning("%s", written)

    def ready_line(self) -> str:
        _view, stopped = self.view()
        return (f"ready {self.process_id} roles=control control_port={self.settings.control_port} "
                f"metrics_port={self.settings.control_port} campaigns={len(self.campaign_ids())} "
                f"stopped_campaigns={len(stopped)}")

    def close(self) -> None:
        # A Kafka call still running (each bounded by the admin timeout) ends before its
        # client is destroyed under it.
        self._kafka_pool.shutdown(wait=True, cancel_futures=True)
        self._stop_pool.shutdown(wait=True, cancel_futures=True)
        self._audit_pool.shutdown(wait=True, cancel_futures=True)
        self.trail.close()
        if self._repairs is not None:
            self._repairs.flush(self.settings.admin_timeout_s)
        self._closing.close()
        self._store_pool.shutdown(wait=True, cancel_futures=True)
        if self._store is not None:
            self._store.close()


def _record_audit_id(outcome: str, where: str) -> str:
    """The audit id of what the control plane did about one control record: the same every
    time the record is read again (a restart), so the trail holds it once."""
    return hashlib.sha256(f"{outcome}:{where}".encode()).hexdigest()[:32]


def _credentials(settings: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    protocol = settings.security_protocol.upper()
    if protocol == "PLAINTEXT":
        return None
    context = (ssl.create_default_context(cafile=settings.ssl_ca_location)
               if protocol.endswith("SSL") else None)
    if protocol.startswith("SASL"):
        password = settings.sasl_password.get_secret_value() if settings.sasl_password else None
        return faust.SASLCredentials(username=settings.sasl_username, password=password,
                                     mechanism=settings.sasl_mechanism or "PLAIN",
                                     ssl_context=context)
    return faust.SSLCredentials(context)

