"""The same consume-and-forward job as a Faust agent (faust-streaming on aiokafka), batched with
``take`` as Faust's documentation suggests. Runs until SIGTERM.

    python -m streams.lab.bench.faust_forward BOOTSTRAP SOURCE TARGET APP_ID PARTITIONS

Faust only assigns a source topic whose partition count matches ``topic_partitions``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import faust


def build(bootstrap: str, source: str, target: str, app_id: str, partitions: int) -> faust.App:
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", value_serializer="raw",
                    key_serializer="raw", web_enabled=False, topic_partitions=partitions,
                    producer_linger_ms=5, stream_wait_empty=False)
    src = app.topic(source, value_type=bytes, key_type=bytes, value_serializer="raw")
    dst = app.topic(target, value_type=bytes, key_type=bytes, value_serializer="raw")

    @app.agent(src)
    async def forward(stream: Any) -> None:
        async for values in stream.take(2000, within=0.1):
            for value in values:
                await dst.send(value=value)

    return app


if __name__ == "__main__":
    bootstrap, source, target, app_id, partitions = sys.argv[1:6]
    application = build(bootstrap, source, target, app_id, int(partitions))
    level = os.environ.get("ESTOP_FAUST_LOGLEVEL", "warn")
    sys.argv = [sys.argv[0], "worker", "--loglevel", level, "--without-web"]
    application.main()
