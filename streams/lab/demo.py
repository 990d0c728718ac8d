"""``estop demo``: the reference scenario on the embedded defaults. A 500,000-recipient email
campaign is queued, the providers work through it, an operator stops it once about 50,000 are
sent, and every message ends as exactly one outcome."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from streams.campaigns.launcher import LaunchResult, launch, recipient_id
from streams.campaigns.status import OutcomeCounter
from streams.control.stop import StopResult, issue_stop
from streams.dispatch.changelog import LedgerStats
from streams.exceptions import EstopError
from streams.kafka.topics import create_topics
from streams.lab.broker import BrokerHandle, acquire_broker
from streams.lab.harness import OutcomeWatch, WorkerProcess
from streams.lab.standins.local import LocalStandIns, Pace
from streams.models import STAGE_PROVIDER, STAGE_SENDING, STAGES
from streams.mta.local import LocalMta
from streams.serde import serdes_for
from streams.settings import Settings
from streams.sink.exceptions import UnknownCampaignError
from streams.sink.report import campaign_report
from streams.sink.store import open_store


@dataclass
class ChannelFigures:
    """One channel of a demo through real protocols (``--provider real``): its outcomes and what
    its receiving server counted (arrivals after the stop's confirmation must be 0)."""

    channel: str
    provider: str
    sent: int
    at_sending: int
    cancelled: int  # accepted by the provider, cancelled there by the stop
    held_back: int  # still in the dispatcher's hands at the stop
    arrived: int
    arrived_after_confirmation: int | None  # None where the receiver keeps no arrival times


@dataclass
class DemoResult:
    campaign_id: str
    planned: int
    sent: int = 0
    not_sent: dict[str, int] = field(default_factory=dict)
    failed: int = 0  # never accepted by a provider within the retry budget (provider faults)
    stop: StopResult | None = None
    launch: LaunchResult | None = None
    handoffs_after_confirmation: int = 0
    outcomes_complete_s: float | None = None
    broker: str = ""
    state_at_stop: str | None = None
    analytics: dict[str, Any] | None = None  # `estop report` of the campaign at the end
    # Through the private MTA (--provider smtp): messages of the campaign its receiver got, and
    # how many waited in Postfix's queue when the stop came.
    received: int | None = None
    queued_at_stop: int | None = None
    channels: list[ChannelFigures] = field(default_factory=list)  # with --provider real

    @property
    def total(self) -> int:
        return self.sent + sum(self.not_sent.values()) + self.failed

    @property
    def adds_up(self) -> bool:
        """Every planned message has one outcome, nothing was handed to a provider after the
        stop's confirmation, and the receivers got exactly what was sent."""
        return not (
            self.total != self.planned or self.handoffs_after_confirmation
            or (self.received is not None and not self.channels and self.received != self.sent)
            or any(row.arrived_after_confirmation or row.arrived != row.sent
                   for row in self.channels))

    def lines(self, channels: list[str]) -> list[str]:
        """The table `estop demo` prints: outcomes, the stop, and per channel what its
        receiving server counted."""
        stop_line = (f"{self.stop.confirm_s:.3f}s by {len(self.stop.acks)} process(es)"
                     if self.stop and self.stop.confirmed else "NOT confirmed")
        lines = [
            f"campaign {self.campaign_id} ({', '.join(channels)}), stopped while {self.state_at_stop}",
            f"  planned                      {self.planned:>10,}",
            f"  sent                         {self.sent:>10,}",
            f"  notSent, stage sending       {self.not_sent.get('sending', 0):>10,}",
            f"  notSent, stage provider      {self.not_sent.get('provider', 0):>10,}",
        ]
        if self.failed:
            lines.append(f"  failed at the provider       {self.failed:>10,}")
        lines += [
            f"  total outcomes               {self.total:>10,}",
            f"  stop confirmed in            {stop_line}",
            f"  all outcomes in after stop   {self.outcomes_complete_s or 0:.1f}s",
            f"  handoffs after confirmation  {self.handoffs_after_confirmation:>10,}",
        ]
        if self.analytics:
            lines.append(f"  analytics store accounts for {self.analytics['accounted']:>10,}   "
                         f"(estop report {self.campaign_id})")
        if self.received is not None and self.analytics and not self.channels:
            lines += [
                f"  waiting in Postfix at stop   {self.queued_at_stop or 0:>10,}",
                f"  cancelled at the provider    {self.analytics['cancelled_at_provider']:>10,}",
                f"  arrived at the receiver      {self.received:>10,}   (must equal sent)",
            ]
        if self.channels:
            lines += ["", f"  {'channel':<8} {'provider':<26} {'sent':>7} {'@sending':>9} "
                          f"{'cancelled':>10} {'held back':>10} {'arrived':>8} {'after stop':>10}"]
            for row in self.channels:
                after = ("-" if row.arrived_after_confirmation is None
                         else f"{row.arrived_after_confirmation:,}")
                lines.append(f"  {row.channel:<8} {row.provider:<26} {row.sent:>7,} "
                             f"{row.at_sending:>9,} {row.cancelled:>10,} {row.held_back:>10,} "
                             f"{row.arrived:>8,} {after:>10}")
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id,
            "planned": self.planned,
            "sent": self.sent,
            "not_sent": self.not_sent,
            "not_sent_total": sum(self.not_sent.values()),
            "failed": self.failed,
            "total": self.total,
            "stop_confirmed": bool(self.stop and self.stop.confirmed),
            "stop_confirm_s": self.stop.confirm_s if self.stop else None,
            "stop": self.stop.as_dict() if self.stop else None,
            "campaign_state_at_stop": self.state_at_stop,
            "handoffs_after_confirmation": self.handoffs_after_confirmation,
            "outcomes_complete_s": self.outcomes_complete_s,
            "broker": self.broker,
            "report": self.analytics,
            "received": self.received,
            "queued_at_stop": self.queued_at_stop,
            "channels": [vars(c) for c in self.channels],
        }


def _await_analytics(settings: Settings, campaign_id: str, planned: int,
                     deadline: float) -> dict[str, Any]:
    """The worker's sink stores outcomes a moment after they are published: wait until the
    analytics store accounts for every planned message, so `estop report` shows the split."""
    store = open_store(settings)
    try:
        while True:
            try:
                report = campaign_report(store, campaign_id)
            except UnknownCampaignError:
                report = {"accounted": 0}
            if report["accounted"] >= planned or time.monotonic() > deadline:
                return report
            time.sleep(0.2)
    finally:
        store.close()


def start_mta(settings: Settings, say: Any) -> LocalMta:
    """The private Postfix, its receiver and its agent, the agent shipping Postfix's log to this
    broker (the demo leaves them running: `estop mta stop`)."""
    mta = LocalMta(settings)
    mta.start()
    say(f"email: Postfix at {mta.status().smtp}, its agent at {mta.agent.url} shipping its log to "
        f"{settings.topics.receipts('email')}")
    return mta


def start_stand_ins(settings: Settings, channels: list[str], recipients: int, say: Any) -> LocalStandIns:
    """The local stand-ins of the SMSC, the web push service and FCM for ``--provider real``."""
    stand_ins = LocalStandIns(settings.data_dir / "stand-ins", [c for c in channels if c != "email"],
                              [recipient_id(i) for i in range(recipients)], Pace()).start()
    for channel in channels:
        if channel != "email":
            say(f"{channel}: {describe(channel, stand_ins)} (local stand-in)")
    return stand_ins


def describe(channel: str, stand_ins: LocalStandIns | None) -> str:
    """One line naming the protocol and server a channel goes through."""
    def port(server: Any) -> int:
        return int(server.port) if server is not None else 0

    if channel == "email" or stand_ins is None:
        return "SMTP, Postfix"
    if channel == "sms":
        return f"SMPP 3.4, SMSC :{port(stand_ins.smsc)}"
    if channel == "webpush":
        return f"Web Push, service :{port(stand_ins.push_service)}"
    return f"FCM HTTP v1 :{port(stand_ins.fcm)}"


def channel_figures(settings: Settings, campaign_id: str, channels: list[str], counter: OutcomeCounter,
                    confirmed_at_ms: int | None, received: int | None,
                    stand_ins: LocalStandIns) -> list[ChannelFigures]:
    rows = []
    for channel in channels:
        counts = counter.channel(channel)
        cancelled = LedgerStats(settings, channel).cancelled(campaign_id)
        if channel == "email":
            arrived, after = received or 0, None  # the receiver keeps no arrival times
        else:
            arrivals = stand_ins.arrivals(channel)
            arrived = arrivals.count(campaign_id)
            after = None if confirmed_at_ms is None else arrivals.count(campaign_id, confirmed_at_ms)
        rows.append(ChannelFigures(
            channel, describe(channel, stand_ins), counts.sent, counts.not_sent.get(STAGE_SENDING, 0),
            cancelled, counts.not_sent.get(STAGE_PROVIDER, 0) - cancelled, arrived, after))
    return rows


class RemainingOrStateColumn(ProgressColumn):
    """Time remaining while a bar moves; once its count can no longer grow (the campaign was
    stopped, everything is accounted) the reason instead, so no bar promises an ETA that will
    never come."""

    def __init__(self) -> None:
        super().__init__()
        self._remaining = TimeRemainingColumn()

    def render(self, task: Task) -> Text:
        state = task.fields.get("state")
        if state:
            return Text(str(state), style="bold")
        if task.finished:
            return Text("done")
        return self._remaining.render(task)


def demo_progress(transient: bool) -> Progress:
    """The demo's bars: what, how far (N of M and %), and time remaining or why it ended."""
    return Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), RemainingOrStateColumn(), transient=transient)


def run_demo(settings: Settings, recipients: int, stop_after: int, channels: list[str],
             say: Any, progress: Any, through_mta: bool = False, outage_s: float = 0.0,
             real: bool = False) -> DemoResult:
    """With ``through_mta`` (email through the private Postfix, started here with its receiver
    and agent unless they run), the receiver goes down once ``stop_after`` messages were sent, so
    mail waits in Postfix's deferred queue for ``outage_s`` seconds before the stop; it comes back
    once the stop is confirmed. With ``real``, SMS, web push and mobile push go over their
    protocols to local stand-ins of their services."""
    handle: BrokerHandle = acquire_broker(settings, say)
    settings = settings.model_copy(update={"bootstrap_servers": handle.bootstrap_servers})
    say(f"broker: {handle.origin} at {handle.bootstrap_servers}")
    create_topics(settings, say=lambda _: None)
    mta = start_mta(settings, say) if through_mta else None
    stand_ins = start_stand_ins(settings, channels, recipients, say) if real else None
    try:
        return _run(settings, recipients, stop_after, channels, say, progress, handle, mta, outage_s,
                    stand_ins)
    finally:
        if stand_ins is not None:
            stand_ins.stop()


def _run(settings: Settings, recipients: int, stop_after: int, channels: list[str], say: Any,
         progress: Any, handle: BrokerHandle, mta: LocalMta | None, outage_s: float,
         stand_ins: LocalStandIns | None) -> DemoResult:
    serdes = serdes_for(settings)
    worker = WorkerProcess(settings, env=stand_ins.env() if stand_ins else None)
    campaign_id = f"promo-{time.strftime('%Y%m%d-%H%M%S')}"
    result = DemoResult(campaign_id, recipients * len(channels), broker=handle.bootstrap_servers)
    watch: OutcomeWatch | None = None
    try:
        say(f"worker {worker.wait_ready()} ready (gates and dispatchers for every channel)")
        pace = "handed to each channel's provider at" if stand_ins else "providers deliver"
        say(f"launching {campaign_id}: {recipients:,} recipients on {', '.join(channels)}; "
            f"{pace} {settings.provider_rate:,.0f} msg/s per channel")
        launched: dict[str, LaunchResult] = {}
        queue_task = progress.add_task("queued", total=result.planned)
        sent_task = progress.add_task("sent", total=result.planned)
        launcher = threading.Thread(target=lambda: launched.setdefault("r", launch(
            settings, serdes, campaign_id, channels, recipients,
            progress=lambda n: progress.advance(queue_task, n))), daemon=True)
        launcher.start()
        watch = OutcomeWatch(settings, campaign_id)
        # Through real protocols each channel delivers at its own pace: stop once every channel
        # delivered something too, so the stop meets each one part-way.
        while watch.sent() < stop_after or (
                stand_ins is not None and any(watch.counter.channel(c).sent == 0 for c in channels)):
            worker.check()
            watch.poll()
            progress.update(sent_task, completed=watch.sent())
            if not launcher.is_alive() and not launched:
                raise EstopError("the launcher failed")
        if mta is not None:
            mta.receiver_down()
            say(f"the receiver (the internet) is down for {outage_s:.0f}s: mail waits in Postfix")
            outage_ends = time.monotonic() + outage_s
            while time.monotonic() < outage_ends:
                worker.check()
                watch.poll()
            result.queued_at_stop = mta.postfix.counts().total
        result.state_at_stop = "Finished" if not launcher.is_alive() else "Sending"
        progress.update(sent_task, state="campaign stopped")
        if launcher.is_alive():
            progress.update(queue_task, state="campaign stopped")
        say(f"stopping after {watch.sent():,} sent (campaign {result.state_at_stop})"
            + (f"; {result.queued_at_stop:,} messages wait in Postfix's queue" if mta else ""))
        stop = issue_stop(settings, serdes, campaign_id, "incorrect discount code in the email",
                          [], by="demo operator", timeout_s=60)
        result.stop = stop
        stopped_at = time.monotonic()
        say(f"stop {stop.command_id} {'confirmed' if stop.confirmed else 'NOT confirmed'} "
            f"in {stop.confirm_s:.3f}s by {len(stop.acks)} process(es)")
        if mta is not None:
            mta.receiver_up()
            say("the receiver is back: Postfix delivers whatever it still holds")
        launcher.join()
        result.launch = launched.get("r")
        all_task = progress.add_task("accounted", total=result.planned)
        deadline = time.monotonic() + 600
        while watch.counter.total < result.planned and time.monotonic() < deadline:
            worker.check()
            watch.poll()
            progress.update(all_task, completed=watch.counter.total)
            progress.update(sent_task, completed=watch.sent())
        result.outcomes_complete_s = time.monotonic() - stopped_at
        progress.update(all_task, state="all accounted" if watch.counter.total >= result.planned
                        else "not all accounted")
        result.sent = watch.sent()
        result.failed = sum(c.failed for c in watch.counter.counts.values())
        result.not_sent = {stage: sum(c.not_sent.get(stage, 0) for c in watch.counter.counts.values())
                           for stage in STAGES}
        if stop.confirmed_at_ms is not None:
            result.handoffs_after_confirmation = sum(
                LedgerStats(settings, c).handed_after(campaign_id, stop.confirmed_at_ms)
                for c in channels)
        result.analytics = _await_analytics(settings, campaign_id, result.planned, deadline)
        if mta is not None:
            while mta.postfix.counts().total and time.monotonic() < deadline:
                time.sleep(0.2)
            result.received = mta.receiver.arrivals().count(campaign_id)
        if stand_ins is not None:
            result.channels = channel_figures(settings, campaign_id, channels, watch.counter,
                                              stop.confirmed_at_ms, result.received, stand_ins)
    finally:
        if watch is not None:
            watch.close()
        worker.stop()
    return result
