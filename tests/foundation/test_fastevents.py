"""The notSent fast path writes and reads exactly fastavro's bytes: the encoder (constant part
once per stop) against ``fastavro.schemaless_writer`` through the generic serde, the decoder
against ``fastavro.schemaless_reader``, over random and edge-case events; corrupt values fail as
the generic decoder fails. No broker needed; the Confluent wire format is read and written
through the session's Apicurio Registry."""

from __future__ import annotations

import copy
import random
import struct
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from fastavro.utils import generate_many

from streams.serde import Schema, Serde, Serdes
from streams.serde.exceptions import SerdeError
from streams.serde.fastevents import FlatDecoder, NotSentEncoder
from streams.serde.registry import ConfluentRegistry
from tests.ecosystem.apicurio import ApicurioRegistry

EVENT: dict[str, Any] = {
    "event": "message.notSent",
    "message_id": "spring-sale:email:42",
    "campaign_id": "spring-sale",
    "channel": "email",
    "recipient_id": "r-42",
    "stage": "provider",
    "reason": "held before handoff: campaign stopped: wrong code",
    "stop_command_id": "6f1c0e5d9b2a4c8e",
    "stop_requested_at": 1_732_600_000_000,
    "occurred_at": 1_732_600_000_123,
}


def edge_cases() -> list[dict[str, Any]]:
    """Lengths around every varint boundary, non-ASCII text, null unions, extreme longs."""
    cases = [EVENT, {**EVENT, "stop_command_id": None, "stop_requested_at": None},
             {**EVENT, "recipient_id": "récipient-ünïcödé-✓", "reason": "Grund: falscher Rabatt €"},
             {**EVENT, "occurred_at": 0, "stop_requested_at": -1},
             {**EVENT, "occurred_at": 2**63 - 1, "stop_requested_at": -(2**63)}]
    for size in (0, 1, 63, 64, 127, 128, 255, 256, 8191, 8192, 20000):
        cases.append({**EVENT, "message_id": "m" * size, "recipient_id": "r" * size,
                      "campaign_id": "c" * size, "reason": "x" * size})
    return cases


def encoder_for(serde: Serde, event: dict[str, Any]) -> NotSentEncoder:
    return NotSentEncoder(serde, event["event"], event["campaign_id"], event["channel"],
                          event["stage"], event["reason"], event["stop_command_id"],
                          event["stop_requested_at"])


def random_events(serde: Serde, count: int) -> list[dict[str, Any]]:
    return list(generate_many(serde.schema.parsed, count))


def test_the_encoder_writes_fastavros_bytes() -> None:
    serde = Serdes().not_sent
    events = [*edge_cases(), *random_events(serde, 300)]
    for event in events:
        expected = serde.encode(event)
        encoder = encoder_for(serde, event)
        assert encoder.encode(event["message_id"], event["recipient_id"],
                              event["occurred_at"]) == expected, event
        # The ids as the key and header bytes a held-back request carries.
        assert encoder.encode(event["message_id"].encode(), event["recipient_id"].encode(),
                              event["occurred_at"]) == expected, event


def test_one_encoder_serves_every_message_of_a_stop() -> None:
    serde = Serdes().not_sent
    encoder = encoder_for(serde, EVENT)
    rng = random.Random(7)
    for index in range(500):
        event = {**EVENT, "message_id": f"spring-sale:email:{index}",
                 "recipient_id": f"r{rng.randrange(10**12)}", "occurred_at": rng.randrange(2**45)}
        assert encoder.encode(event["message_id"], event["recipient_id"],
                              event["occurred_at"]) == serde.encode(event)


def test_many_events_at_once_are_the_same_bytes_as_one_by_one() -> None:
    serde = Serdes().not_sent
    for event in edge_cases():
        encoder = encoder_for(serde, event)
        ids = [(f"{event['message_id']}{index}".encode(), f"{event['recipient_id']}é{index}".encode(),
                None) for index in range(3)]
        assert encoder.records(ids, event["occurred_at"]) == [
            (mid, serde.encode({**event, "message_id": mid.decode(), "recipient_id": rid.decode()}))
            for mid, rid, _ in ids]


# The decoder reads each record in full, or remembers the ends shared by a stop's events.
DECODERS = [None, "stage", "occurred_at"]


@pytest.mark.parametrize("shared_from", DECODERS)
def test_the_decoder_reads_what_fastavro_wrote(shared_from: str | None) -> None:
    serde = Serdes().not_sent
    decoder = FlatDecoder(serde, shared_from)
    events = [*edge_cases(), *random_events(serde, 300)]
    for event in [*events, *events]:  # the second time, the ends are remembered
        value = serde.encode(event)
        assert decoder.decode(value) == serde.decode(value) == event


def test_remembered_ends_are_only_what_the_bytes_say() -> None:
    """Events of one stop share their end; ids before it and a changed end are read anew."""
    serde = Serdes().not_sent
    decoder = FlatDecoder(serde, "stage")
    encoder = encoder_for(serde, EVENT)
    for index in range(50):
        at = EVENT["occurred_at"] + index // 10
        value = encoder.encode(f"m{index}", f"r{index}", at)
        assert decoder.decode(value) == {**EVENT, "message_id": f"m{index}",
                                         "recipient_id": f"r{index}", "occurred_at": at}
    other = {**EVENT, "reason": "another stop", "stop_command_id": None, "stop_requested_at": None}
    assert decoder.decode(serde.encode(other)) == other


def test_an_array_cannot_be_a_remembered_end() -> None:
    with pytest.raises(SerdeError, match="shared"):
        FlatDecoder(Serdes().control_command, "channels")


def test_the_decoder_reads_control_commands_as_fastavro_does() -> None:
    serde = Serdes().control_command
    decoder = FlatDecoder(serde)
    command = {"command_id": "c-1", "campaign_id": "spring-sale", "action": "stop",
               "channels": ["email", "sms"], "reason": "wrong code", "requested_by": "ops",
               "requested_at": 1_732_600_000_000}
    for record in [command, {**command, "channels": []}, {**command, "channels": ["é" * 300] * 70},
                   *generate_many(serde.schema.parsed, 300)]:
        value = serde.encode(record)
        assert decoder.decode(value) == serde.decode(value) == record


def test_with_a_registry_both_use_the_confluent_wire_format(schema_registry: ApicurioRegistry,
                                                           subject_prefix: str) -> None:
    """Against the session's Apicurio Registry: the encoder writes the id the registry gave the
    subject, and a decoder of another process reads it (by the fast path once the id is known)."""
    serde = Serdes(ConfluentRegistry(schema_registry.ccompat_url), subject_prefix).not_sent
    value = encoder_for(serde, EVENT).encode(EVENT["message_id"], EVENT["recipient_id"],
                                             EVENT["occurred_at"])
    assert value == serde.encode(EVENT)
    registered = SchemaRegistryClient({"url": schema_registry.ccompat_url}).get_latest_version(
        f"{subject_prefix}estop.NotSentEvent")
    assert value[:5] == b"\x00" + struct.pack(">I", registered.schema_id)
    assert FlatDecoder(serde).decode(value) == EVENT
    reader = Serdes(ConfluentRegistry(schema_registry.ccompat_url), subject_prefix).not_sent
    decoder = FlatDecoder(reader)
    assert decoder.decode(value) == EVENT  # looked up in the registry
    assert reader.own_body_offset(value) == 5
    assert decoder.decode(value) == EVENT  # the generated reader, from byte 5


@pytest.mark.parametrize("shared_from", DECODERS)
@pytest.mark.parametrize("cut", [1, 5, 20])
def test_a_cut_or_padded_value_is_refused_like_the_generic_decoder_does(
        cut: int, shared_from: str | None) -> None:
    serde = Serdes().not_sent
    decoder = FlatDecoder(serde, shared_from)
    decoder.decode(serde.encode(EVENT))  # its end remembered: a padded copy must still fail
    value = serde.encode(EVENT)
    for bad in (value[:-cut], value + b"\x00" * cut):
        with pytest.raises(SerdeError, match="corrupt NotSentEvent body"):
            decoder.decode(bad)
        with pytest.raises(SerdeError, match="corrupt NotSentEvent body"):
            serde.decode(bad)
    with pytest.raises(SerdeError, match="empty value"):
        decoder.decode(b"")


def test_a_changed_schema_is_refused_not_miswritten() -> None:
    definition = copy.deepcopy(Serdes().not_sent.schema.definition)
    definition["fields"].insert(3, {"name": "tenant", "type": "string"})
    serde = Serde(Schema(definition))
    with pytest.raises(SerdeError, match="changed"):
        encoder_for(serde, EVENT)
    definition["fields"].append({"name": "tags", "type": {"type": "map", "values": "string"}})
    with pytest.raises(SerdeError, match="not flat"):
        FlatDecoder(Serde(Schema(definition)))
