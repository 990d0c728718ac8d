"""The SMTP adapter against the real private Postfix and its agent: pipelined submission with
queue ids, deliveries through Kafka (the agent ships Postfix's log), messages in doubt found
again, cancellation that deletes only the message a queue id still carries; and all of it from a
"host" without Postfix's folder, over the network only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from streams.mta.agent import agent_token
from streams.mta.agent_process import AgentProcess
from streams.mta.local import LocalMta
from streams.mta.maillog import MAYBE_SENT, LogFollower, PostfixLog
from streams.providers import open_provider
from streams.providers.base import CancelStatus, Handoff, SubmitStatus
from streams.providers.exceptions import ProviderConfigError, ProviderUnavailableError
from streams.providers.smtp import SmtpAdapter
from streams.settings import Settings
from tests.providers.support import handoffs, receipts_of, submitted, times
from tests.support import free_port, wait_for

pytestmark = pytest.mark.broker


def adapter(settings: Settings) -> SmtpAdapter:
    opened = open_provider(settings, "email")
    assert isinstance(opened, SmtpAdapter)
    return opened


def test_submitted_mail_is_queued_delivered_and_its_receipts_come_through_kafka(
    smtp_settings: Settings, receiver_up: LocalMta, agent: AgentProcess
) -> None:
    smtp = adapter(smtp_settings)
    try:
        # A line starting with "." must survive SMTP's dot-stuffing; a bad id is refused alone.
        batch = [*handoffs("adapter-ok", 40, "Hello\n.a line with a dot\n"),
                 Handoff("bad id", "adapter-ok", "email", "r1", "x")]
        answers = smtp.submit(batch)
        assert [a.message_id for a in answers] == [h.message_id for h in batch]
        assert answers[-1].status == SubmitStatus.REFUSED
        accepted = {a.message_id: a.provider_id or "" for a in answers[:-1]}
        assert all(a.status == SubmitStatus.ACCEPTED for a in answers[:-1])
        assert len(set(accepted.values())) == 40  # one queue id each

        wait_for(lambda: set(times(smtp_settings, accepted)) == set(accepted),
                 "the agent to ship every delivery")
        assert {d.message_id: (d.provider_id, d.delivered) for _, d in receipts_of(smtp_settings, accepted)} \
            == {m: (q, True) for m, q in accepted.items()}
        assert smtp.deliveries() == []  # they reach the dispatcher that owns them through Kafka
        arrived = receiver_up.receiver.arrivals()
        assert arrived.ids("adapter-ok") == set(accepted)
        assert arrived.twice("adapter-ok") == 0
        first = next(text for text in (p.read_bytes() for p in receiver_up.receiver.mail.iterdir())
                     if re.search(rb"X-Estop-Message-Id: adapter-ok:email:0\r?\n", text))
        assert b"\n.a line with a dot" in first
        # A message in doubt is found by its own id, with its queue id.
        assert smtp.find(batch[:3]) == {h.message_id: accepted[h.message_id] for h in batch[:3]}
        assert smtp.find(handoffs("never-sent", 2)) == {}
    finally:
        smtp.close()


def test_cancel_deletes_deferred_mail_but_never_a_message_a_queue_id_no_longer_carries(
    smtp_settings: Settings, mta: LocalMta, receiver_up: LocalMta, agent: AgentProcess
) -> None:
    mta.receiver_down()
    smtp = adapter(smtp_settings)
    try:
        queue_ids = submitted(smtp, handoffs("adapter-stop", 30))
        wait_for(lambda: mta.postfix.counts().by_queue.get("deferred", 0) >= 30,
                 "the messages to wait in the deferred queue")
        # The stop names 20 messages by their queue ids, and one (adapter-stop:email:29) by the
        # queue id of another message (adapter-stop:email:28): a reused id must not delete it.
        names = {m: queue_ids[m] for m in list(queue_ids)[:20]}
        names["adapter-stop:email:29"] = queue_ids["adapter-stop:email:28"]
        result = smtp.cancel("adapter-stop", names)
        assert [m for m, s in result.items() if s == CancelStatus.CANCELLED] == list(queue_ids)[:20]
        assert result["adapter-stop:email:29"] == CancelStatus.TOO_LATE
        assert mta.postfix.counts().by_queue.get("hold", 0) == 0  # the other message was released
        mta.receiver_up()
        wait_for(lambda: receiver_up.receiver.arrivals().count("adapter-stop") == 10,
                 "the 10 messages not cancelled to arrive")
        wait_for(lambda: mta.postfix.counts().total == 0, "the queue to empty")
        arrived = receiver_up.receiver.arrivals()
        assert arrived.ids("adapter-stop") == set(list(queue_ids)[20:])
        # Asked again, as after an answer lost on the way: the deleted ones are still cancelled
        # (Postfix's log shows them removed undelivered), the delivered ones too late.
        again = smtp.cancel("adapter-stop", queue_ids)
        assert again == {m: CancelStatus.CANCELLED if i < 20 else CancelStatus.TOO_LATE
                         for i, m in enumerate(queue_ids)}
    finally:
        smtp.close()


def test_a_stop_deletes_mail_whose_end_of_data_went_unanswered_but_counts_it_as_sent(
    smtp_settings: Settings, mta: LocalMta, receiver_up: LocalMta, agent: AgentProcess
) -> None:
    """A receiving server that takes each message and hangs up before answering its end of data:
    the recipient may have it, Postfix cannot tell ("may be sent more than once") and would send
    it again. The stop deletes it from the queue all the same, but answers too late, and the
    agent ships its removal as its delivery; a message that never reached the server is
    cancelled."""
    mta.receiver_down()
    mta.receiver.start(answer_end_of_data=False)
    smtp = adapter(smtp_settings)
    log = PostfixLog()  # the test reads the log too, to know which ones Postfix calls uncertain
    follower = LogFollower(mta.postfix.log_path, log)
    try:
        queue_ids = submitted(smtp, handoffs("adapter-hangup", 10))

        def taken_and_logged() -> bool:
            while True:  # read the log as far as it goes now
                before = follower.position
                follower.read()
                if follower.position == before:
                    break
            arrived = mta.receiver.arrivals().ids("adapter-hangup")
            return bool(arrived) and arrived == log.uncertain & set(queue_ids)

        wait_for(taken_and_logged, "the receiver to take messages Postfix calls uncertain")
        wait_for(lambda: mta.postfix.counts().by_queue.get("deferred", 0) == 10,
                 "every message to wait in the deferred queue")

        result = smtp.cancel("adapter-hangup", queue_ids)

        uncertain = log.uncertain & set(queue_ids)
        assert {m for m, s in result.items() if s == CancelStatus.TOO_LATE} == uncertain
        assert {m for m, s in result.items() if s == CancelStatus.CANCELLED} == set(queue_ids) - uncertain
        wait_for(lambda: set(times(smtp_settings, queue_ids)) == uncertain,
                 "the agent to ship the removals of the uncertain ones")
        ours = [d for _, d in receipts_of(smtp_settings, queue_ids)]
        assert all(d.delivered and d.detail == MAYBE_SENT and d.provider_id == queue_ids[d.message_id]
                   for d in ours)
        assert mta.postfix.counts().total == 0  # deleted, uncertain or not: none goes out again
        assert mta.receiver.arrivals().ids("adapter-hangup") == uncertain
    finally:
        follower.close()
        smtp.close()
        mta.receiver_down()  # the fixture brings back a receiver that answers


def test_the_adapter_needs_nothing_of_postfix_on_its_host(
    smtp_settings: Settings, mta: LocalMta, receiver_up: LocalMta, agent: AgentProcess, tmp_path: Path
) -> None:
    """A dispatcher on another host: its MTA folder is empty (no Postfix, no log, no token file);
    it names the agent and has the token in its settings, and submits, finds and cancels."""
    token = agent_token(smtp_settings)
    elsewhere = tmp_path / "mta-on-another-host"
    elsewhere.mkdir()
    settings = smtp_settings.model_copy(update={
        "mta_dir": elsewhere, "mta_agent_token": token,
        "email_provider": f"smtp://127.0.0.1:{mta.postfix.port}?agent={agent.url}"})
    mta.receiver_down()
    smtp = adapter(settings)
    try:
        queue_ids = submitted(smtp, handoffs("adapter-remote", 10))
        assert smtp.find(handoffs("adapter-remote", 10)) == queue_ids
        wait_for(lambda: mta.postfix.counts().by_queue.get("deferred", 0) == 10, "mail to wait")
        assert smtp.cancel("adapter-remote", queue_ids) == dict.fromkeys(queue_ids, CancelStatus.CANCELLED)
        assert mta.postfix.counts().total == 0
        assert list(elsewhere.iterdir()) == []  # nothing of Postfix was looked for or made here
    finally:
        smtp.close()


def test_a_provider_the_settings_cannot_use_is_one_clear_error(
    smtp_settings: Settings, mta: LocalMta, agent: AgentProcess, tmp_path: Path
) -> None:
    smtp = f"smtp://127.0.0.1:{mta.postfix.port}"
    cases: list[tuple[str, dict[str, object], type[Exception], str]] = [
        ("kumo://mta:8000", {}, ProviderConfigError, "unknown provider"),
        ("smtp://localhost", {}, ProviderConfigError, "needs a host and a port"),
        (f"{smtp}?agent=ftp://127.0.0.1:1", {}, ProviderConfigError, "not an http:// or https:// URL"),
        (f"smtp://127.0.0.1:{free_port()}?agent={agent.url}", {}, ProviderUnavailableError,
         "the MTA at 127.0.0.1:.* does not answer"),
        (f"{smtp}?agent=http://127.0.0.1:{free_port()}", {}, ProviderUnavailableError,
         "the MTA agent at .* does not answer"),
        # The agent looked for on the SMTP host at ESTOP_MTA_AGENT_PORT; the token is wrong.
        (smtp, {"mta_agent_token": SecretStr("not-the-token")}, ProviderConfigError, "refused the token"),
        # No token set, and this host has no token file.
        (f"{smtp}?agent={agent.url}", {"mta_dir": tmp_path}, ProviderConfigError, "needs its token"),
    ]
    for url, update, error, words in cases:
        with pytest.raises(error, match=words):
            open_provider(smtp_settings.model_copy(update={"email_provider": url, **update}), "email")
    with pytest.raises(ProviderConfigError, match="does not carry sms"):
        open_provider(smtp_settings.model_copy(update={"sms_provider": mta.provider_url}), "sms")
