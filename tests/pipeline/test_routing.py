"""The routing decision the gate and the dispatcher share (``streams.routing``), without Kafka:
each route, each reason a request is dead-lettered, and the typed records it is made from. The
stages' Kafka side is tested against the broker (test_dead_letters, test_bad_records)."""

from __future__ import annotations

from typing import Any

import pytest

from streams.control.view import Stop
from streams.kafka.deadletter import MAX_RECORD_BYTES
from streams.models import HEADER_CAMPAIGN, HEADER_CHANNEL, HEADER_RECIPIENT
from streams.routing import (
    FORWARD,
    CampaignHeader,
    Route,
    RoutingHeaders,
    SendRequest,
    decide,
    record_problem,
)
from streams.serde import SerdeError, Serdes

STOP = Stop("cmd-1", "spring-sale", frozenset({"email"}), 1_700_000_000_000, "ops", "wrong price")


def stopped(campaign_id: str, channel: str) -> Stop | None:
    """The control view of these tests: spring-sale is stopped on email only."""
    return STOP if campaign_id == STOP.campaign_id and channel in STOP.channels else None


def test_a_request_of_a_campaign_not_stopped_is_forwarded() -> None:
    assert decide("email", "autumn-sale", "email", stopped) == FORWARD
    assert decide("email", "autumn-sale", "email", stopped).route is Route.FORWARD


def test_a_request_of_a_stopped_campaign_is_held_back_with_its_stop() -> None:
    decision = decide("email", "spring-sale", "email", stopped)
    assert decision.route is Route.HOLD
    assert decision.stop is STOP


def test_a_campaign_stopped_on_another_channel_is_forwarded_on_this_one() -> None:
    assert decide("sms", "spring-sale", "sms", stopped).route is Route.FORWARD


@pytest.mark.parametrize(("record_channel", "reason"), [
    ("sms", "channel 'sms' on the email topic"),
    ("fax", "unknown channel 'fax' on the email topic"),
])
def test_a_request_for_another_channel_is_dead_lettered(record_channel: str, reason: str) -> None:
    decision = decide("email", "autumn-sale", record_channel, stopped)
    assert (decision.route, decision.reason) == (Route.DEAD_LETTER, reason)


def test_a_request_of_another_channel_is_dead_lettered_even_when_its_campaign_is_stopped() -> None:
    assert decide("email", "spring-sale", "sms", stopped).route is Route.DEAD_LETTER


def test_an_unreadable_request_is_dead_lettered_with_why() -> None:
    decision = decide("email", None, None, stopped, "corrupt SendRequest body")
    assert (decision.route, decision.reason) == (Route.DEAD_LETTER, "corrupt SendRequest body")


def test_a_problem_wins_over_a_stop() -> None:
    """An invalid campaign header is refused even where a stop would hold the request back."""
    decision = decide("email", "spring-sale", "email", stopped, "header campaign id ...")
    assert decision.route is Route.DEAD_LETTER


def test_a_request_without_campaign_or_channel_is_dead_lettered() -> None:
    assert decide("email", None, "email", stopped).route is Route.DEAD_LETTER
    assert decide("email", "autumn-sale", None, stopped).route is Route.DEAD_LETTER


def test_the_view_is_not_asked_about_a_request_that_is_refused() -> None:
    asked: list[tuple[str, str]] = []

    def lookup(campaign_id: str, channel: str) -> Stop | None:
        asked.append((campaign_id, channel))
        return None

    decide("email", "autumn-sale", "sms", lookup)
    decide("email", None, None, lookup, "empty value")
    assert asked == []
    decide("email", "autumn-sale", "email", lookup)
    assert asked == [("autumn-sale", "email")]


@pytest.mark.parametrize(("value", "key", "problem"), [
    (None, b"m-1", "empty value"),
    (b"x" * (MAX_RECORD_BYTES + 1), b"m-1", f"record of {MAX_RECORD_BYTES + 1:,} bytes"),
    (b"x", b"bad key", "key: invalid message id"),
    (b"x", b"", "key: invalid message id"),
])
def test_a_record_is_refused_before_it_is_read(value: bytes | None, key: bytes, problem: str) -> None:
    found = record_problem(value, key)
    assert found is not None and found.startswith(problem), found


def test_a_record_without_key_or_with_a_valid_one_may_be_read() -> None:
    assert record_problem(b"x", b"m-1") is None
    assert record_problem(b"x", None) is None
    assert record_problem(b"x" * MAX_RECORD_BYTES, None) is None


def test_routing_headers_are_read_as_their_producer_set_them() -> None:
    headers = [(HEADER_CAMPAIGN, b"old"), (HEADER_CAMPAIGN, b"spring-sale"), (HEADER_CHANNEL, b""),
               (HEADER_RECIPIENT, "not bytes"), ("other", b"x")]
    routing = RoutingHeaders.of(headers)  # type: ignore[arg-type]
    assert routing == RoutingHeaders(b"spring-sale", None, None)
    assert routing.count == 1
    assert RoutingHeaders.of(None) == RoutingHeaders(None, None, None)
    assert RoutingHeaders.of([(HEADER_CAMPAIGN, b"c"), (HEADER_CHANNEL, b"email"),
                              (HEADER_RECIPIENT, b"r")]).count == 3


def test_a_campaign_header_that_no_stop_could_name_is_refused() -> None:
    assert CampaignHeader.of(b"spring-sale") == CampaignHeader("spring-sale", None)
    refused = CampaignHeader.of(b"spring sale")
    assert refused.problem is not None and refused.problem.startswith("header invalid campaign id")


REQUEST: dict[str, Any] = {"message_id": "m-1", "campaign_id": "spring-sale", "channel": "email",
                           "recipient_id": "someone@example.com", "payload": "{}"}


def test_a_decoded_request_with_valid_ids_becomes_a_send_request() -> None:
    assert SendRequest.checked(REQUEST) == SendRequest("m-1", "spring-sale", "email",
                                                       "someone@example.com", "{}")


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("message_id", "", "invalid SendRequest: empty message_id"),
    ("campaign_id", "spring sale", "invalid SendRequest: invalid campaign id"),
    ("recipient_id", "", "invalid SendRequest: empty recipient_id"),
])
def test_a_decoded_request_with_an_invalid_id_is_refused(field: str, value: str, problem: str) -> None:
    with pytest.raises(SerdeError) as refused:
        SendRequest.checked({**REQUEST, field: value})
    assert refused.value.reason.startswith(problem), refused.value.reason


def test_what_the_serde_decodes_is_what_the_stages_route() -> None:
    serdes = Serdes()
    decoded = serdes.send_request.decode(serdes.send_request.encode({**REQUEST, "requested_at": 1}))
    request = SendRequest.checked(decoded)
    assert decide("email", request.campaign_id, request.channel, stopped).route is Route.HOLD
