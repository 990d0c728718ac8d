"""Wall-clock time as every estop record carries it: milliseconds since the epoch."""

from __future__ import annotations

import datetime as dt
import time


def now_ms() -> int:
    return int(time.time() * 1000)


def when(ms: int) -> str:
    """A Kafka timestamp (ms since the epoch) as UTC to the millisecond."""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
