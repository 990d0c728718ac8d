"""The provider stage scaled out, as a platform team runs it: several dispatcher processes per
channel, each with a data folder of its own (a pod's emptyDir), sharing the channel's partitions.
A campaign waits at the provider; then one dispatcher is scaled down (SIGTERM) and one is
SIGKILLed, each losing its folder, one is added with an empty folder, and the campaign is
stopped. Whatever a dispatcher that is gone had handed over is cancelled by the one that holds
its partitions now: nothing arrives after the confirmation, every message has one outcome, the
report is exact and agrees with what the provider says it dropped."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streams.campaigns.launcher import launch
from streams.control.stop import StopResult, issue_stop
from streams.models import REASON_CANCELLED, STATE_FINISHED
from streams.serde import Serdes
from streams.settings import Settings
from tests.reliability.support import Events, Fleet, Proc, assert_exact, wait_for
from tests.support import holders

DISPATCHERS = 3


def dispatcher_holders(settings: Settings, channel: str) -> set[str]:
    return holders(settings, "dispatcher", channel)


@dataclass
class ScaleOut:
    """The fleet of one test: a front process (gate and analytics sink, the test's data folder)
    and dispatchers, each with a data folder of its own under ``folders``."""

    settings: Settings
    channel: str
    folders: Path
    env: dict[str, str]

    def __post_init__(self) -> None:
        self.fleet = Fleet(self.settings, **self.env)

    def start_front(self) -> None:
        self.fleet.start("front", "--role", "gate", "--role", "sink", "--channel", self.channel)

    def start_dispatcher(self, name: str) -> Proc:
        folder = self.folders / name
        folder.mkdir(parents=True)
        self.fleet.env = {**self.fleet.env, "ESTOP_DATA_DIR": str(folder)}
        try:
            return self.fleet.start(name, "--role", "dispatcher", "--channel", self.channel)
        finally:
            self.fleet.env.pop("ESTOP_DATA_DIR")

    def scale_down(self, name: str) -> int:
        """SIGTERM, as Kubernetes does; the pod's folder goes with it. Returns the exit code."""
        process = self.fleet.procs[name].process
        assert process is not None
        code = process.stop()
        self.fleet.down.add(name)
        shutil.rmtree(self.folders / name)
        return code

    def crash(self, name: str) -> None:
        """SIGKILL; the folder goes too."""
        self.fleet.kill(name)
        shutil.rmtree(self.folders / name)


def stop_a_scaled_out_campaign(
        scale: ScaleOut, serdes: Serdes, campaign: str, planned: int,
        taken_by_provider: Callable[[], int], held_at_provider: Callable[[], int],
        release: Callable[[], None]) -> tuple[StopResult, Events, dict[str, object]]:
    """The scenario of the module's note. ``taken_by_provider``: how many messages of the
    campaign the provider took, whatever became of them; ``held_at_provider``: how many it holds
    now; ``release``: make it deliver whatever it still holds (its recipients come online), so
    anything the stop left there arrives now."""
    settings, channel = scale.settings, scale.channel
    scale.start_front()
    names = [f"dispatcher-{n}" for n in range(1, DISPATCHERS + 1)]
    for name in names:
        scale.start_dispatcher(name)
    ids = {scale.fleet.procs[n].process_id for n in names}
    wait_for(lambda: dispatcher_holders(settings, channel) == ids,
             "every dispatcher to hold partitions")

    launched = launch(settings, serdes, campaign, [channel], planned)
    assert launched.state == STATE_FINISHED
    wait_for(lambda: taken_by_provider() == planned, "every message at the provider")
    assert held_at_provider() > 0

    assert scale.scale_down(names[0]) == 0  # a clean handover: SIGTERM
    scale.crash(names[1])
    added = scale.start_dispatcher(f"dispatcher-{DISPATCHERS + 1}")

    result = issue_stop(settings, serdes, campaign, "wrong discount code", [],
                        by="test operator", timeout_s=180)
    assert result.confirmed, result.as_dict()
    assert result.confirmed_at_ms is not None
    # The dispatcher that stayed and the one added hold the partitions now.
    wait_for(lambda: dispatcher_holders(settings, channel) == {
        scale.fleet.procs[names[2]].process_id, added.process_id}, "the partitions to settle")

    events, found = assert_exact(settings, serdes, campaign, {channel: planned}, result)
    # What the provider still held of the campaign was cancelled there: nothing is left.
    assert held_at_provider() == 0
    release()
    assert sum(1 for e in events.not_sent if e["reason"].startswith(REASON_CANCELLED)) > 0
    return result, events, found
