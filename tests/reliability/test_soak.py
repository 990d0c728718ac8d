"""The soak (``make soak``, not in CI): a 200,000-message campaign on four channels (50,000
recipients each), stopped once half of its messages were sent, while 10 SIGKILLs hit randomly
chosen worker processes (two gates, two dispatchers, the sink; each restarted after a random
pause). The tally: kills, restarts, outcomes, duplicates (0), lost (0), handoffs after the
confirmation (0). It is printed and written to ``.data/soak-tally.json``; docs/reliability.md
holds the one of the last run."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest

from streams.campaigns.launcher import LaunchResult, launch, message_id
from streams.dispatch.changelog import LedgerStats
from streams.lab.harness import OutcomeWatch
from streams.models import CHANNELS
from streams.serde import Serdes
from streams.settings import Settings
from tests.reliability.support import (
    Fleet,
    campaign_events,
    held_twice,
    stop,
    wait_for,
    wait_outcomes,
    wait_reported,
)
from tests.support import REPO

pytestmark = [pytest.mark.soak, pytest.mark.broker]

RECIPIENTS = 50_000  # per channel: 200,000 messages
KILLS = 10
SOAK_WAIT_S = 1800.0
ENV = {"ESTOP_PROVIDER_RATE": "4000", "ESTOP_PROVIDER_DELAY_S": "1.0"}
SLOTS = {
    "gate-a": ("--role", "gate"),
    "gate-b": ("--role", "gate"),
    "dispatcher-a": ("--role", "dispatcher"),
    "dispatcher-b": ("--role", "dispatcher"),
    "sink": ("--role", "sink"),
}


class Chaos:
    """Kills a random worker every few seconds and restarts it after a random pause."""

    def __init__(self, fleet: Fleet, rng: random.Random, phase: dict[str, str]) -> None:
        self.fleet = fleet
        self.rng = rng
        self.phase = phase
        self.log: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)
        self.started = time.monotonic()

    def _run(self) -> None:
        try:
            while len(self.log) < KILLS:
                time.sleep(self.rng.uniform(2.0, 5.0))
                name = self.rng.choice(sorted(SLOTS))
                self.fleet.kill(name)
                kill = {"at_s": round(time.monotonic() - self.started, 1), "process": name,
                        "phase": self.phase["now"]}
                pause = self.rng.uniform(0.0, 3.0)
                time.sleep(pause)
                self.fleet.restart(name)
                kill["restarted_after_s"] = round(pause, 1)
                self.log.append(kill)
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.timeout(SOAK_WAIT_S + 600)
def test_soak_random_sigkills_during_a_stopped_four_channel_campaign(settings: Settings) -> None:
    serdes = Serdes()
    seed = int(time.time())
    rng = random.Random(seed)
    campaign = "soak"
    planned = dict.fromkeys(CHANNELS, RECIPIENTS)
    total = sum(planned.values())
    fleet = Fleet(settings, **ENV)
    phase = {"now": "sending"}
    started = time.monotonic()
    try:
        for name, args in SLOTS.items():
            fleet.start(name, *args)
        chaos = Chaos(fleet, rng, phase)
        launched: list[LaunchResult] = []
        launcher = threading.Thread(target=lambda: launched.append(
            launch(settings, serdes, campaign, list(CHANNELS), RECIPIENTS)), daemon=True)
        launcher.start()
        chaos.thread.start()

        watch = OutcomeWatch(settings, campaign)
        try:
            def halfway() -> bool:
                assert chaos.error is None, chaos.error
                watch.poll(0.2)
                return watch.sent() >= total // 2

            wait_for(halfway, "half of the campaign sent", timeout_s=SOAK_WAIT_S, every_s=0)
            sent_at_stop = watch.sent()
        finally:
            watch.close()
        result = stop(settings, serdes, campaign)
        phase["now"] = "draining"
        stopped_after_s = time.monotonic() - started
        launcher.join(SOAK_WAIT_S)
        assert launched, "the launcher did not finish"

        wait_outcomes(settings, campaign, total, timeout_s=SOAK_WAIT_S)
        chaos.thread.join(SOAK_WAIT_S)
        assert chaos.error is None, chaos.error
        fleet.check()
        found = wait_reported(settings, campaign, total, timeout_s=SOAK_WAIT_S)

        events = campaign_events(settings, serdes, campaign)
        expected = {message_id(campaign, c, i) for c, n in planned.items() for i in range(n)}
        ids = events.ids()
        assert result.confirmed_at_ms is not None
        handed_after = {c: LedgerStats(settings, c).handed_after(campaign, result.confirmed_at_ms)
                        for c in CHANNELS}
        sent_ids = Counter(e["message_id"] for e in events.sent)
        stages = Counter(e["stage"] for e in events.not_sent)
        tally = {
            "seed": seed,
            "messages": total,
            "channels": list(CHANNELS),
            "processes": list(SLOTS),
            "kills": fleet.kills,
            "restarts": fleet.restarts,
            "kills_by_phase": dict(Counter(k["phase"] for k in chaos.log)),
            "kill_log": chaos.log,
            "stopped_after_s": round(stopped_after_s, 1),
            "sent_when_stop_issued": sent_at_stop,
            "outcomes": len(ids),
            "sent": len(events.sent),
            "not_sent": len(events.not_sent),
            "not_sent_by_stage": dict(stages),
            "failed": len(events.failed),
            "duplicates": sum(n - 1 for n in ids.values() if n > 1),
            "delivered_twice": sum(1 for n in sent_ids.values() if n > 1),
            "lost": len(expected - set(ids)),
            "handoffs_after_confirmation": sum(handed_after.values()),
            "held_twice_by_provider": sum(held_twice(settings, c, campaign) for c in CHANNELS),
            "resubmitted": sum(LedgerStats(settings, c).resubmitted(campaign)
                                     for c in CHANNELS),
            "report": {k: found[k] for k in ("accounted", "sent", "not_sent", "failed", "pending")},
            "stop_confirm_s": round(result.confirm_s or 0, 3),
            "wall_s": round(time.monotonic() - started, 1),
        }
        print(json.dumps(tally, indent=2))
        out = REPO / ".data" / "soak-tally.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(tally, indent=2) + "\n")

        assert tally["kills"] == KILLS and tally["restarts"] == KILLS
        assert tally["duplicates"] == 0
        assert tally["delivered_twice"] == 0
        assert tally["lost"] == 0
        assert set(ids) == expected
        assert tally["handoffs_after_confirmation"] == 0
        assert tally["held_twice_by_provider"] == 0
        assert found["accounted"] == total and found["pending"] == 0
        assert found["sent"] == len(events.sent) and found["not_sent"] == len(events.not_sent)
    finally:
        fleet.stop_all()
