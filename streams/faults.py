"""Fault injection for the reliability tests: ``ESTOP_CRASH_AT=<point>`` makes a worker SIGKILL
itself the first time it reaches that point, the narrowest window a crash can hit. Points:

* ``receipts-committed``: a dispatcher committed provider outcomes (their events and ledger
  entries) to Kafka and has done nothing after;
* ``handoff-submitted``: a dispatcher's provider accepted messages and the dispatcher has not
  recorded them in its ledger yet (nor committed the input offsets);
* ``gate-produced``: a gate produced a batch's outputs in its transaction, not committed yet;
* ``sink-stored``: the sink stored a batch and has not committed its offsets yet.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from streams.settings import Settings

log = logging.getLogger(__name__)


def crash_point(settings: Settings, point: str) -> None:
    if settings.crash_at == point:
        log.critical("crash point %s reached: SIGKILL", point)
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
