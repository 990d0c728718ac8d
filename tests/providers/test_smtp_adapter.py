"""The SMTP adapter against the real private Postfix: pipelined submission with queue ids,
deliveries learned from Postfix's log, messages in doubt found again, and cancellation that
deletes only the message a queue id still carries."""

from __future__ import annotations

import re

import pytest

from streams.mta.local import LocalMta
from streams.providers import open_provider
from streams.providers.base import CancelStatus, Delivery, Handoff, SubmitStatus
from streams.providers.exceptions import ProviderConfigError, ProviderUnavailableError
from streams.providers.smtp import MAYBE_SENT, SmtpAdapter
from streams.settings import Settings, load_settings
from tests.support import free_port, wait_for


def handoffs(campaign: str, count: int, payload: str = "Hello") -> list[Handoff]:
    return [Handoff(f"{campaign}:email:{i}", campaign, "email", f"r{i:08d}", payload)
            for i in range(count)]


def adapter(mta: LocalMta) -> SmtpAdapter:
    settings = load_settings(mta_dir=mta.postfix.home, mta_port=mta.postfix.port,
                             email_provider=mta.provider_url)
    opened = open_provider(settings, "email")
    assert isinstance(opened, SmtpAdapter)
    return opened


def test_submitted_mail_is_queued_delivered_and_learned_from_the_log(receiver_up: LocalMta) -> None:
    smtp = adapter(receiver_up)
    try:
        # A line starting with "." must survive SMTP's dot-stuffing; a bad id is refused alone.
        batch = [*handoffs("adapter-ok", 40, "Hello\n.a line with a dot\n"),
                 Handoff("bad id", "adapter-ok", "email", "r1", "x")]
        answers = smtp.submit(batch)
        assert [a.message_id for a in answers] == [h.message_id for h in batch]
        assert answers[-1].status == SubmitStatus.REFUSED
        accepted = {a.message_id: a.provider_id for a in answers[:-1]}
        assert all(a.status == SubmitStatus.ACCEPTED for a in answers[:-1])
        assert len(set(accepted.values())) == 40  # one queue id each
        delivered: dict[str, str] = {}

        def all_delivered() -> bool:
            delivered.update((d.message_id, d.provider_id) for d in smtp.deliveries() if d.delivered)
            return set(accepted) <= set(delivered)

        wait_for(all_delivered, "Postfix's log to report every delivery")
        assert {m: delivered[m] for m in accepted} == accepted
        arrived = receiver_up.receiver.arrivals()
        assert arrived.ids("adapter-ok") == set(accepted)
        assert arrived.twice("adapter-ok") == 0
        first = next(text for text in (p.read_bytes() for p in receiver_up.receiver.mail.iterdir())
                     if re.search(rb"X-Estop-Message-Id: adapter-ok:email:0\r?\n", text))
        assert b"\n.a line with a dot" in first
        # A message in doubt is found in the log by its own id, with its queue id.
        assert smtp.find(batch[:3]) == {h.message_id: accepted[h.message_id] for h in batch[:3]}
        assert smtp.find(handoffs("never-sent", 2)) == {}
    finally:
        smtp.close()


def test_cancel_deletes_deferred_mail_but_never_a_message_a_queue_id_no_longer_carries(
    mta: LocalMta, receiver_up: LocalMta
) -> None:
    mta.receiver_down()
    smtp = adapter(mta)
    try:
        answers = smtp.submit(handoffs("adapter-stop", 30))
        queue_ids = {a.message_id: a.provider_id or "" for a in answers}
        assert all(a.status == SubmitStatus.ACCEPTED for a in answers)
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
        # Cancelling again is too late for every one: deleted or delivered, none is queued.
        again = smtp.cancel("adapter-stop", queue_ids)
        assert set(again.values()) == {CancelStatus.TOO_LATE}
    finally:
        smtp.close()


def test_a_stop_deletes_mail_whose_end_of_data_went_unanswered_but_counts_it_as_sent(
    mta: LocalMta, receiver_up: LocalMta
) -> None:
    """A receiving server that takes each message and hangs up before answering its end of data:
    the recipient may have it, Postfix cannot tell ("may be sent more than once") and would send
    it again. The stop deletes it from the queue all the same, but answers too late and reports
    it delivered; a message that never reached the server is cancelled."""
    mta.receiver_down()
    mta.receiver.start(answer_end_of_data=False)
    smtp = adapter(mta)
    try:
        answers = smtp.submit(handoffs("adapter-hangup", 10))
        queue_ids = {a.message_id: a.provider_id or "" for a in answers}
        assert all(a.status == SubmitStatus.ACCEPTED for a in answers)
        seen: list[Delivery] = []

        def taken_and_logged() -> bool:
            seen.extend(smtp.deliveries())
            arrived = mta.receiver.arrivals().ids("adapter-hangup")
            return bool(arrived) and arrived == smtp.log.uncertain & set(queue_ids)

        wait_for(taken_and_logged, "the receiver to take messages Postfix calls uncertain")
        wait_for(lambda: mta.postfix.counts().by_queue.get("deferred", 0) == 10,
                 "every message to wait in the deferred queue")

        result = smtp.cancel("adapter-hangup", queue_ids)

        uncertain = smtp.log.uncertain & set(queue_ids)
        assert {m for m, s in result.items() if s == CancelStatus.TOO_LATE} == uncertain
        assert {m for m, s in result.items() if s == CancelStatus.CANCELLED} == set(queue_ids) - uncertain
        seen.extend(smtp.deliveries())
        ours = [d for d in seen if d.message_id in queue_ids]  # the log has earlier tests' too
        assert {d.message_id for d in ours if d.delivered} == uncertain
        assert all(d.detail == MAYBE_SENT and d.provider_id == queue_ids[d.message_id] for d in ours)
        assert mta.postfix.counts().total == 0  # deleted, uncertain or not: none goes out again
        assert mta.receiver.arrivals().ids("adapter-hangup") == uncertain
    finally:
        smtp.close()
        mta.receiver_down()  # the fixture brings back a receiver that answers


def test_a_provider_the_settings_cannot_use_is_one_clear_error(settings: Settings, mta: LocalMta) -> None:
    for url, error, words in [
        ("kumo://mta:8000", ProviderConfigError, "unknown provider"),
        ("smtp://localhost", ProviderConfigError, "needs a host and a port"),
        (f"smtp://127.0.0.1:{free_port()}", ProviderUnavailableError, "does not answer"),
    ]:
        with pytest.raises(error, match=words):
            open_provider(settings.model_copy(update={
                "email_provider": url, "mta_dir": mta.postfix.home}), "email")
    with pytest.raises(ProviderConfigError, match="does not carry sms"):
        open_provider(settings.model_copy(update={"sms_provider": mta.provider_url}), "sms")
    # Without a Postfix folder to administer, smtp:// cannot cancel or track: refused at start.
    with pytest.raises(ProviderUnavailableError, match="no Postfix instance"):
        open_provider(settings.model_copy(update={"email_provider": mta.provider_url}), "email")
