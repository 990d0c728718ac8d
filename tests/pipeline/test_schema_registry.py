"""A campaign launched with a schema registry whose compatibility rule refuses estop's schema: one
line, exit code 2, and nothing on the topics (the schemas are registered before the first
write). Against the real broker and the session's Apicurio Registry (rule BACKWARD)."""

from __future__ import annotations

import copy

from confluent_kafka import Message

from streams.kafka.reader import read_topic
from streams.serde import Schema, load_schema
from streams.serde.registry import ConfluentRegistry
from streams.settings import Settings
from tests.ecosystem.apicurio import ApicurioRegistry
from tests.pipeline.support import cli_env
from tests.support import run_estop


def test_a_launch_whose_schema_the_registry_refuses_writes_nothing(
        settings: Settings, schema_registry: ApicurioRegistry) -> None:
    # The subject already holds a SendRequest without `payload`: estop's SendRequest, whose
    # payload has no default, cannot read what was written with it, so BACKWARD refuses it.
    older = copy.deepcopy(load_schema("SendRequest").definition)
    older["fields"] = [f for f in older["fields"] if f["name"] != "payload"]
    subject = f"{settings.topic_prefix}estop.SendRequest"
    ConfluentRegistry(schema_registry.ccompat_url).register(subject, Schema(older))

    result = run_estop("launch", "--campaign", "spring-sale", "--channel", "email",
                       "--recipients", "10", env={**cli_env(settings),
                                                  "ESTOP_SCHEMA_REGISTRY_URL": schema_registry.ccompat_url})

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"estop: the schema registry at {schema_registry.ccompat_url} refused SendRequest as a new "
        f"version of subject {subject} (compatibility BACKWARD): "), lines[0]
    written: list[Message] = []
    for topic in (settings.topics.status, settings.topics.send_requests("email"), settings.topics.notsent):
        read_topic(settings, topic, written.append)
    assert written == []
