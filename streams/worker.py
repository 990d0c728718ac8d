"""``estop worker``: the data plane in one process (every gate and dispatcher and the analytics
sink, the embedded default) or split by ``--role`` and ``--channel`` into processes that scale
out as consumer group members. The control view is read to its end before any request is
handled. Every worker serves Prometheus metrics."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from streams.control.feed import ControlFeed
from streams.control.view import ControlView
from streams.dispatch.dispatcher import Dispatcher
from streams.gate.gate import Gate
from streams.guardrails.processor import Judge, Tally
from streams.kafka.clients import process_id, wait_for_broker
from streams.metrics import UP, init_labels, serve_metrics
from streams.providers import open_provider
from streams.security.refusals import stage_refusal
from streams.serde import serdes_for
from streams.settings import Settings
from streams.sink.sink import Sink
from streams.sink.store import open_store

log = logging.getLogger(__name__)

ROLES = ("gate", "dispatcher", "sink")
# Run only when asked (`--role guardrail`): it stops campaigns by itself (docs/guardrails.md).
GUARDRAIL_ROLE = "guardrail"
# `--role control` runs the control plane (streams.controlplane, a Faust app) in a process of its
# own: it is not one of the default roles.
CONTROL_ROLE = "control"


class Worker:
    def __init__(self, settings: Settings, roles: tuple[str, ...], channels: tuple[str, ...]) -> None:
        self.settings = settings
        self.process_id = process_id("worker")
        self.serdes = serdes_for(settings)
        self.view = ControlView()
        # Roles that must acknowledge stops (the sink carries no message to a provider).
        self.role_names = [f"{r}.{c}" for r in roles if r in ("gate", "dispatcher") for c in channels]
        self.feed = ControlFeed(settings, self.view, self.serdes, self.process_id, self.role_names)
        self.sink: Sink | None = None
        if "sink" in roles:
            self.sink = Sink(settings, self.serdes, open_store(settings), self.process_id)
        self.roles = roles
        self.guardrail: tuple[Tally, Judge] | None = None
        if GUARDRAIL_ROLE in roles:
            self.guardrail = (Tally(settings, self.serdes, self.process_id),
                              Judge(settings, self.serdes, self.process_id))
        self.metrics_port: int | None = None
        self.running = threading.Event()  # stages loop while set
        self.stopping = threading.Event()  # a signal or a failed stage asks for shutdown
        self.gates = [Gate(settings, c, self.view, self.serdes, self.process_id, self.feed)
                      for c in channels] if "gate" in roles else []
        self.dispatchers: list[Dispatcher] = []
        if "dispatcher" in roles:
            for channel in channels:
                # An unknown or unreachable provider stops the worker here, before it starts.
                provider = open_provider(settings, channel)
                dispatcher = Dispatcher(settings, channel, self.view, self.serdes,
                                        self.process_id, provider, settings.provider_rate, self.feed)
                self.feed.add_hook(dispatcher.on_stop)
                self.dispatchers.append(dispatcher)
        # What an acknowledgement says this process holds: the partitions each stage prepared.
        self.feed.held = lambda: [tp for stage in [*self.gates, *self.dispatchers]
                                  for tp in stage.ready_partitions()]
        # Every stage by the name its thread, its `up` series and /health use.
        self.stages: dict[str, Gate | Dispatcher | Sink | Tally | Judge] = {
            **{f"gate.{g.channel}": g for g in self.gates},
            **{f"dispatcher.{d.channel}": d for d in self.dispatchers},
            **({"sink": self.sink} if self.sink else {}),
            **({"guardrail.counter": self.guardrail[0], "guardrail.judge": self.guardrail[1]}
               if self.guardrail else {}),
        }
        self._threads: list[threading.Thread] = []
        self.failed = False
        # Every series this process counts in exists from the start, at 0 (see init_labels).
        init_labels(channels, [*(g.source for g in self.gates), *(d.source for d in self.dispatchers),
                               *(self.sink.topics if self.sink else [])])

    def start(self) -> None:
        wait_for_broker(self.settings)
        if self.role_names:
            self.feed.bootstrap()  # before the first request: the GlobalKTable guarantee
            self.feed.start()
        self.metrics_port = serve_metrics(self.settings.metrics_port, self.health)
        self.running.set()
        for name, stage in self.stages.items():
            thread = threading.Thread(target=self._guard, args=(name, stage.run), name=name,
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while every stage thread and the control feed run and each passed through its
        loop within ``health_stall_s``: a stage stuck on a provider or a broker is unhealthy."""
        now = time.monotonic()
        loops = {name: stage.last_pass for name, stage in self.stages.items()}
        if self.role_names:
            loops["control-feed"] = self.feed.last_pass
        alive = {t.name for t in self._threads if t.is_alive()}
        if self.feed.tailing:
            alive.add("control-feed")
        stages = {name: {"running": name in alive,
                         "last_loop_s_ago": round(now - last, 3)} for name, last in loops.items()}
        unhealthy = sorted(name for name, s in stages.items()
                           if not s["running"] or s["last_loop_s_ago"] > self.settings.health_stall_s)
        return not unhealthy and not self.stopping.is_set(), {
            "process": self.process_id, "stopped_campaigns": len(self.view),
            "unhealthy": unhealthy, "stages": stages}

    def _guard(self, name: str, run: Callable[[threading.Event], None]) -> None:
        UP.labels(name).set(1)
        try:
            run(self.running)
        except Exception as exc:
            denied = stage_refusal(self.settings, exc, name)
            if denied is not None:
                # A missing ACL is a deployment mistake, not a bug: one line, no traceback.
                log.error("%s failed: %s; stopping the worker", name, denied)
                self.failed = True
                self.stopping.set()
                return
            log.exception("%s failed; stopping the worker so a supervisor restarts it", name)
            self.failed = True
            self.stopping.set()
            raise
        finally:
            UP.labels(name).set(0)

    def wait(self) -> None:
        # Wake up now and then: a signal the kernel delivers to another thread is only handled
        # when the main thread runs Python code, and a bare wait() could sleep through it.
        while not self.stopping.wait(0.5):
            pass

    def stop(self) -> None:
        self.running.clear()
        for thread in self._threads:
            thread.join(timeout=30)
        if self.role_names:
            self.feed.close()
        if self.sink is not None:
            self.sink.store.close()


def run_worker(settings: Settings, roles: tuple[str, ...], channels: tuple[str, ...],
               announce: Callable[[str], None]) -> int:
    worker = Worker(settings, roles, channels)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        announce(f"received signal {signum}; shutting down")
        worker.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    running = [*worker.role_names, *(["sink"] if worker.sink else []),
               *([GUARDRAIL_ROLE] if worker.guardrail else [])]
    announce(f"ready {worker.process_id} roles={','.join(running)} metrics_port={worker.metrics_port} "
             f"stopped_campaigns={len(worker.view)}")
    worker.wait()
    worker.stop()
    announce("stopped")
    return 1 if worker.failed else 0
