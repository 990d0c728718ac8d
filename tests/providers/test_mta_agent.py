"""The MTA agent beside the real private Postfix, against the real broker: every delivery in
Postfix's log reaches dispatch.email.receipts on the partition its message's request has on
dispatch.email; a SIGKILLed agent restarted later ships what was delivered meanwhile and nothing
twice; it waits for Kafka (its topic missing) while serving the API, and follows a rotated log;
find and cancel over HTTP, with the token and a bounded body."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from streams.kafka.topics import create_topics
from streams.mta.agent import agent_token
from streams.mta.agent_api import CANCEL, FIND, HEALTH, MAX_BODY_BYTES
from streams.mta.agent_process import AgentProcess
from streams.mta.local import LocalMta
from streams.mta.postfix import POSTFIX
from streams.processes import alive
from streams.providers import open_provider
from streams.providers.base import CancelStatus, ProviderAdapter
from streams.settings import Settings
from tests.providers.conftest import through
from tests.providers.support import dispatch_partitions, handoffs, receipts_of, submitted, times
from tests.support import wait_for

pytestmark = pytest.mark.broker


def shipped_and_saved(agent: AgentProcess) -> bool:
    """Everything the agent read is shipped, and its position file says so."""
    health = agent.health()
    saved = json.loads(agent.files.position(health["receipts_topic"]).read_text()) if health else {}
    return (health is not None and health["unshipped"] == 0
            and {k: saved.get(k) for k in ("inode", "offset")} == health["read_to"])


def test_every_delivery_lands_on_its_messages_partition_and_a_killed_agent_loses_none(
    smtp_settings: Settings, receiver_up: LocalMta, agent: AgentProcess
) -> None:
    settings = smtp_settings
    smtp = open_provider(settings, "email")
    try:
        first = submitted(smtp, handoffs("agent-ship-1", 60))
        wait_for(lambda: set(times(settings, first)) == set(first), "a receipt of every message")
        placed = dispatch_partitions(settings, list(first))
        assert len(set(placed.values())) == settings.partitions  # the ids spread over all three
        assert {d.message_id: (p, d.provider_id, d.delivered) for p, d in receipts_of(settings, first)} \
            == {m: (placed[m], first[m], True) for m in first}

        # SIGKILLed once it saved how far it shipped; mail is delivered while it is down.
        wait_for(lambda: shipped_and_saved(agent), "the agent to save its position")
        pid = agent.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), "the agent to die")
        second = submitted(smtp, handoffs("agent-ship-2", 60))  # SMTP needs no agent
        wait_for(lambda: receiver_up.receiver.arrivals().count("agent-ship-2") == 60,
                 "the second campaign to arrive")
        assert not times(settings, second)
        # A cancel the agent cannot answer is unconfirmed (asked again, then unknown).
        assert smtp.cancel("agent-ship-2", second) == dict.fromkeys(second, CancelStatus.UNKNOWN)

        agent.start()
        wait_for(lambda: set(times(settings, second)) == set(second), "the receipts of the second")
        wait_for(lambda: shipped_and_saved(agent), "the restarted agent to ship all it read")
        assert times(settings, {**first, **second}) == dict.fromkeys([*first, *second], 1)
        assert all(d.delivered and d.provider_id == second[d.message_id]
                   for _, d in receipts_of(settings, second))
    finally:
        smtp.close()


def test_the_agent_waits_for_kafka_serves_meanwhile_and_follows_a_rotated_log(
    bare_settings: Settings, mta: LocalMta, receiver_up: LocalMta
) -> None:
    settings = through(bare_settings, mta)  # its receipts topic does not exist yet
    agent = AgentProcess(settings)
    agent.start()
    smtp: ProviderAdapter | None = None
    try:
        missing = f"topic {settings.topics.receipts('email')} does not exist"
        wait_for(lambda: missing in ((agent.health() or {}).get("kafka_error") or ""),
                 "the agent to say that its topic is missing")
        smtp = open_provider(settings, "email")  # the agent answers: its API needs no Kafka
        before = submitted(smtp, handoffs("agent-rotate-1", 30))
        wait_for(lambda: mta.receiver.arrivals().count("agent-rotate-1") == 30, "the first mail")
        assert smtp.find(handoffs("agent-rotate-1", 3)) == {m: before[m] for m in list(before)[:3]}

        # `postfix logrotate`: the log is renamed and compressed, a new one begins.
        mta.postfix.command(POSTFIX, "logrotate")
        after = submitted(smtp, handoffs("agent-rotate-2", 30))
        wait_for(lambda: mta.receiver.arrivals().count("agent-rotate-2") == 30, "the second mail")
        assert not list(mta.postfix.log_path.parent.glob("postfix.log.*[!z]"))  # compressed

        create_topics(settings, say=lambda _: None)  # Kafka takes the receipts now
        wait_for(lambda: set(times(settings, {**before, **after})) == {*before, *after},
                 "every receipt, from both sides of the rotation")
        assert times(settings, {**before, **after}) == dict.fromkeys([*before, *after], 1)
        output = agent.files.log.read_text()
        assert f"receipts not shipped: {missing}" in output
        assert "Postfix's log was rotated" in output
    finally:
        if smtp is not None:
            smtp.close()
        agent.stop()


def call(agent: AgentProcess, path: str, body: Any, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(f"{agent.url}{path}", json=body, headers=headers, timeout=60)


def test_find_and_cancel_over_http_with_the_token_and_a_bounded_body(
    smtp_settings: Settings, mta: LocalMta, receiver_up: LocalMta, agent: AgentProcess
) -> None:
    token = agent_token(smtp_settings)
    assert token is not None
    secret = token.get_secret_value()
    smtp = open_provider(smtp_settings, "email")
    try:
        sent = submitted(smtp, handoffs("agent-api-sent", 5))
        wait_for(lambda: mta.receiver.arrivals().count("agent-api-sent") == 5, "the mail to arrive")
        mta.receiver_down()
        held = submitted(smtp, handoffs("agent-api-held", 5))
        wait_for(lambda: mta.postfix.counts().by_queue.get("deferred", 0) == 5, "mail to wait")
    finally:
        smtp.close()
    both = {**sent, **held}

    # Refused: no token, a wrong one; nothing is cancelled.
    for given in (None, "not-the-token"):
        refused = call(agent, CANCEL, {"messages": held}, given)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert "bearer token" in refused.json()["error"]
    assert mta.postfix.counts().by_queue.get("deferred", 0) == 5
    # Bad bodies: one line each, nothing done.
    too_large = b'{"message_ids": ["' + b"x" * MAX_BODY_BYTES + b'"]}'
    bad_queue_id = {"messages": {"agent-api-held:email:0": "ABC\nDEF"}}
    bodies: list[tuple[bytes | Iterator[bytes], int, str]] = [
        (too_large, 413, f"over {MAX_BODY_BYTES:,} bytes"),
        (iter([too_large]), 413, f"over {MAX_BODY_BYTES:,} bytes"),  # chunked: no Content-Length
        (b"{not json", 400, "not JSON"),
        (json.dumps(bad_queue_id).encode(), 400, "queue ids"),
        (b'{"messages": ["agent-api-held:email:0"]}', 400, "messages must map"),
    ]
    for data, status, words in bodies:
        answer = requests.post(f"{agent.url}{CANCEL}", data=data, timeout=60,
                               headers={"Authorization": f"Bearer {secret}"})
        assert answer.status_code == status, answer.text
        assert words in answer.json()["error"] and "\n" not in answer.json()["error"]
    assert mta.postfix.counts().by_queue.get("deferred", 0) == 5
    health = requests.get(f"{agent.url}{HEALTH}", timeout=10)  # a probe needs no token
    assert health.status_code == 200 and health.json()["status"] == "ok"

    found = call(agent, FIND, {"message_ids": [*both, "agent-api-never:email:0"]}, secret)
    assert found.status_code == 200 and found.json() == {"queued": both}
    cancelled = call(agent, CANCEL, {"messages": both}, secret)
    assert cancelled.status_code == 200
    assert cancelled.json() == {"results": {**dict.fromkeys(sent, "too_late"),
                                            **dict.fromkeys(held, "cancelled")}}
    assert mta.postfix.counts().total == 0
    # Asked again (an answer lost on the way back): the same answers.
    assert call(agent, CANCEL, {"messages": both}, secret).json() == cancelled.json()

