"""The gate job as a quixstreams application: campaign-control read into a dict by a thread (the
library has no global table), each send request looked up by its ``campaign_id`` header; not
stopped: forwarded as is to the dispatch topic; stopped: routed to the notsent topic; no Avro
single-object marker: the dead-letter topic. Runs in its own virtualenv (see the package's note)
until SIGTERM.

    python quix_gate.py BOOTSTRAP GROUP exactly-once|at-least-once SOURCE CONTROL DISPATCH NOTSENT DLQ
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from quixstreams import Application

MAGIC = b"\xc3\x01"


def tail_control(bootstrap: str, topic: str, stopped: set[str], ready: threading.Event) -> None:
    """Every partition of the control topic from its start; ``ready`` once at its end."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader",
                       "enable.auto.commit": False})
    partitions = reader.list_topics(topic, timeout=30).topics[topic].partitions
    reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    ends = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in partitions}
    while True:
        for message in reader.consume(500, timeout=0.1):
            key, partition, offset = message.key(), message.partition(), message.offset()
            if message.error() or key is None or partition is None or offset is None:
                continue
            stopped.add(key.decode())
            if offset + 1 >= ends.get(partition, 0):
                ends.pop(partition, None)
        if not any(ends.values()):
            ready.set()


def main(argv: list[str]) -> None:
    bootstrap, group, guarantee, source, control, dispatch, notsent, dlq = argv
    stopped: set[str] = set()
    ready = threading.Event()
    threading.Thread(target=tail_control, args=(bootstrap, control, stopped, ready),
                     daemon=True).start()
    ready.wait()
    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      processing_guarantee=guarantee, loglevel="WARNING")
    raw = {"key_deserializer": "bytes", "value_deserializer": "bytes",
           "key_serializer": "bytes", "value_serializer": "bytes"}
    requests = app.topic(source, **raw)
    passed, halted, dead = (app.topic(name, **raw) for name in (dispatch, notsent, dlq))

    def route(value: bytes, _key: Any, _timestamp: int, headers: Any) -> Any:
        campaign = dict(headers or []).get("campaign_id")
        if campaign is None or value[:2] != MAGIC:
            return dead
        return halted if campaign.decode() in stopped else passed

    app.dataframe(requests).to_topic(route)
    app.run()


if __name__ == "__main__":
    main(sys.argv[1:])
