"""Fault injection for the reliability tests: ``ESTOP_CRASH_AT=<point>`` makes a worker SIGKILL
itself the first time it reaches that point, the narrowest window a crash can hit. Points:

* ``receipts-committed``: a dispatcher committed provider outcomes (their events and ledger
  entries) to Kafka and has done nothing after;
* ``handoff-submitted``: a dispatcher's provider accepted messages and the dispatcher has not
  recorded them in its ledger yet (nor committed the input offsets);
* ``gate-produced``: a gate produced a batch's outputs in its transaction, not committed yet;
* ``sink-stored``: the sink stored a batch and has not committed its offsets yet.

``ESTOP_PAUSE_AT=<point>:<seconds>`` makes a worker wait that long each time it reaches a point,
so a test can act while it is there:

* ``dispatcher-restored``: a dispatcher restored the ledger of partitions just assigned to it and
  has not cancelled anything for them nor marked them ready (a rebalance under way).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from streams.settings import Settings

log = logging.getLogger(__name__)


def crash_point(settings: Settings, point: str) -> None:
    if settings.crash_at == point:
        log.critical("crash point %s reached: SIGKILL", point)
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def pause_point(settings: Settings, point: str) -> None:
    if settings.pause_at is None:
        return
    name, _, seconds = settings.pause_at.rpartition(":")
    if name == point:
        log.warning("pause point %s reached: waiting %ss", point, seconds)
        time.sleep(float(seconds))
