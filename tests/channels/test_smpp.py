"""The SMPP adapter against the stand-in SMSC over real TCP: binds, submit_sm with receipts and
validity, cancel_sm while held and too late, receipts sent again after a lost bind; and the
truthful cancellation: every cancel_sm answer verified with query_sm, against an SMSC that answers
as SMPPSim does (OK to the cancel of a message it already delivered)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from streams.lab.standins.smsc import (
    CANCELLED,
    DELIVERED,
    EXPIRED,
    HELD,
    SMPPSIM,
    SmscQuirks,
    StandInSmsc,
)
from streams.providers import open_provider
from streams.providers import smpp_pdus as pdus
from streams.providers.base import CancelStatus, Delivery, Handoff, SubmitStatus
from streams.providers.exceptions import ProviderConfigError, ProviderUnavailableError
from streams.providers.smpp import SmppAdapter, SmppConfig, verdict
from streams.providers.smpp_pdus import CommandId, CommandStatus, MessageState, operations
from streams.settings import Settings
from tests.support import free_port, wait_for

PASSWORD = "secret"


def handoffs(campaign: str, count: int) -> list[Handoff]:
    return [Handoff(f"{campaign}:sms:{i}", campaign, "sms", f"+4477009{i:05d}", f"{campaign}: offer")
            for i in range(count)]


def open_adapter(smsc: StandInSmsc, **config: object) -> SmppAdapter:
    return SmppAdapter(SmppConfig("127.0.0.1", smsc.port, "estop", PASSWORD, **config))  # type: ignore[arg-type]


def collect(adapter: SmppAdapter, count: int) -> list[Delivery]:
    found: list[Delivery] = []

    def enough() -> bool:
        found.extend(adapter.deliveries())
        return len(found) >= count

    wait_for(enough, f"{count} delivery receipts", timeout_s=60)
    return found


@pytest.fixture
def smsc() -> Iterator[StandInSmsc]:
    server = StandInSmsc(0, "estop", PASSWORD, hold_s=600).start()  # holds until told otherwise
    try:
        yield server
    finally:
        server.stop()


def release(smsc: StandInSmsc) -> None:
    """The handsets come in reach: everything held is due now."""
    def due(server: StandInSmsc) -> None:
        server.hold_ms = 0
        for message in server.messages.values():
            message.due_ms = 0
        server._due = sorted((0, m) for m in server.messages)
    smsc.query(due)


def test_submit_cancel_and_receipts(smsc: StandInSmsc) -> None:
    adapter = open_adapter(smsc, validity_s=120)
    try:
        answers = adapter.submit(handoffs("c1", 6))
        assert [a.status for a in answers] == [SubmitStatus.ACCEPTED] * 6
        ids = {a.message_id: str(a.provider_id) for a in answers}
        assert len(set(ids.values())) == 6 and all(a.provider_id for a in answers)
        held = smsc.query(lambda s: [
            (m.destination, m.wants_receipt, (m.expires_ms or 0) - m.submitted.timestamp() * 1000)
            for m in s.messages.values()])
        assert {d for d, _, _ in held} == {f"4477009{i:05d}" for i in range(6)}  # "+" dropped
        assert all(wants for _, wants, _ in held)  # registered_delivery asked for a receipt
        assert all(119_000 <= validity <= 121_000 for _, _, validity in held)  # validity_period

        cancelled = adapter.cancel("c1", {m: ids[m] for m in list(ids)[:3]})
        assert set(cancelled.values()) == {CancelStatus.CANCELLED}
        release(smsc)
        receipts = collect(adapter, 3)
        assert {d.message_id for d in receipts} == set(list(ids)[3:])
        assert all(d.delivered and d.detail == "DELIVRD" and d.provider_id == ids[d.message_id]
                   for d in receipts)
        # Delivered already: cancel_sm is refused with ESME_RCANCELFAIL.
        late = adapter.cancel("c1", {m: ids[m] for m in list(ids)[3:]})
        assert set(late.values()) == {CancelStatus.TOO_LATE}
        assert smsc.states("c1") == {CANCELLED: 3, DELIVERED: 3}
        assert smsc.arrivals.count("c1") == 3
        assert (smsc.counts.cancelled, smsc.counts.cancel_refused) == (3, 3)
    finally:
        adapter.close()


def test_an_expired_message_is_reported_undelivered(smsc: StandInSmsc) -> None:
    adapter = open_adapter(smsc, validity_s=1)
    try:
        [answer] = adapter.submit(handoffs("c2", 1))
        expires_ms = smsc.query(lambda s: s.messages[str(answer.provider_id)].expires_ms)
        assert expires_ms is not None
        wait_for(lambda: time.time() * 1000 > expires_ms, "the validity period to run out")
        release(smsc)
        [receipt] = collect(adapter, 1)
        assert (receipt.message_id, receipt.delivered) == (answer.message_id, False)
        assert receipt.detail == "EXPIRED"
        assert smsc.states("c2") == {EXPIRED: 1} and smsc.arrivals.count("c2") == 0
    finally:
        adapter.close()


def test_a_receipt_lost_with_its_bind_comes_again_by_provider_id(smsc: StandInSmsc) -> None:
    """Receipts are acknowledged only on the next call: one taken by a process that died before
    the outbox recorded it is sent again to the next bind, named by the SMSC's id."""
    first = open_adapter(smsc)
    [answer] = first.submit(handoffs("c3", 1))
    release(smsc)
    assert [d.message_id for d in collect(first, 1)] == [answer.message_id]
    # The process dies: its connection drops without an unbind and without the acknowledgement.
    first._sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
    second = open_adapter(smsc)
    try:
        [again] = collect(second, 1)
        assert (again.message_id, again.provider_id, again.delivered) == ("", answer.provider_id, True)
        second.deliveries()  # acknowledges it
        wait_for(lambda: smsc.counts.receipts_acked == 1, "the receipt acknowledged")
    finally:
        second.close()


def test_throttling_is_a_refusal_to_retry(smsc: StandInSmsc) -> None:
    smsc.max_rate = 2
    adapter = open_adapter(smsc)
    try:
        answers = adapter.submit(handoffs("c4", 5))
        statuses = [a.status for a in answers]
        assert statuses.count(SubmitStatus.ACCEPTED) >= 1
        refused = [a for a in answers if a.status == SubmitStatus.REFUSED]
        assert refused and all(a.error == "ESME_RTHROTTLED" for a in refused)
        assert smsc.states("c4").get(HELD, 0) == statuses.count(SubmitStatus.ACCEPTED)
    finally:
        adapter.close()


def test_a_wrong_password_and_an_unreachable_smsc(smsc: StandInSmsc) -> None:
    with pytest.raises(ProviderConfigError, match="refused the bind of system id 'estop': ESME_RINVPASWD"):
        SmppAdapter(SmppConfig("127.0.0.1", smsc.port, "estop", "wrong"))
    with pytest.raises(ProviderUnavailableError, match="does not answer"):
        SmppAdapter(SmppConfig("127.0.0.1", free_port(), "estop", PASSWORD))


@pytest.mark.parametrize(("url", "problem"), [
    ("smpp://localhost:2775", "needs a system id, password, host and port"),
    ("smpp://estop:secret@localhost:2775?window=many", "window must be a number, not 'many'"),
    ("smpp://estop:secret@localhost:2775?validity_s=0", "validity_s must be at least 1"),
])
def test_a_bad_smpp_url_is_one_clear_error(url: str, problem: str) -> None:
    with pytest.raises(ProviderConfigError, match=problem) as raised:
        open_provider(Settings(sms_provider=url), "sms")
    assert str(raised.value).startswith("ESTOP_SMS_PROVIDER: ")


def test_receipts_keep_coming_after_the_bind_dropped(smsc: StandInSmsc) -> None:
    """Nothing left to submit: deliveries() binds again by itself and receives what is owed."""
    adapter = open_adapter(smsc)
    try:
        [answer] = adapter.submit(handoffs("c5", 1))
        adapter._sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]  # the network drops it
        release(smsc)
        [receipt] = collect(adapter, 1)
        assert (receipt.provider_id, receipt.delivered) == (answer.provider_id, True)
    finally:
        adapter.close()


# -- truthful cancellation: an SMSC's OK is verified with query_sm ---------------------------------


def wait_left(smsc: StandInSmsc, campaign: str, count: int) -> None:
    wait_for(lambda: smsc.states(campaign).get(DELIVERED, 0) == count, f"{count} messages delivered")


def test_smppsim_ok_to_cancel_a_delivered_message_is_too_late(smsc: StandInSmsc) -> None:
    """SMPPSim answers ESME_ROK to cancel_sm of a message it already delivered: query_sm says
    DELIVERED, so the stop is too late and the receipt decides. A message it really cancelled it
    no longer finds (a query failure): cancelled, also when cancelled again (a new owner of the
    outbox after a crash)."""
    smsc.quirks = SMPPSIM
    adapter = open_adapter(smsc)
    try:
        ids = {a.message_id: str(a.provider_id) for a in adapter.submit(handoffs("q1", 4))}
        held, left = list(ids)[:2], list(ids)[2:]
        assert set(adapter.cancel("q1", {m: ids[m] for m in held}).values()) == {CancelStatus.CANCELLED}
        release(smsc)
        wait_left(smsc, "q1", 2)

        late = adapter.cancel("q1", {m: ids[m] for m in left})

        assert smsc.counts.cancel_ok_too_late == 2  # the SMSC said OK to both
        assert set(late.values()) == {CancelStatus.TOO_LATE}
        again = adapter.cancel("q1", {m: ids[m] for m in held})
        assert set(again.values()) == {CancelStatus.CANCELLED}
        assert {d.message_id for d in collect(adapter, 2)} == set(left)  # the receipts decide
        assert smsc.states("q1") == {CANCELLED: 2, DELIVERED: 2} and smsc.arrivals.count("q1") == 2
    finally:
        adapter.close()


def test_a_cancel_repeated_after_a_crash_is_cancelled_where_the_smsc_says_deleted(
        smsc: StandInSmsc) -> None:
    """An SMSC that refuses a second cancel_sm (ESME_RCANCELFAIL) still answers query_sm with
    DELETED: the message is cancelled, not too late."""
    adapter = open_adapter(smsc)
    try:
        ids = {a.message_id: str(a.provider_id) for a in adapter.submit(handoffs("q2", 2))}
        assert set(adapter.cancel("q2", ids).values()) == {CancelStatus.CANCELLED}

        again = adapter.cancel("q2", ids)

        assert smsc.counts.cancel_refused == 2  # the second cancel_sm was refused
        assert set(again.values()) == {CancelStatus.CANCELLED}
        assert smsc.states("q2") == {CANCELLED: 2}
    finally:
        adapter.close()


def test_an_ok_the_smsc_cannot_back_is_unconfirmed(smsc: StandInSmsc) -> None:
    """An SMSC that answers OK whatever became of the message and does not support query_sm:
    nothing proves either message will not be delivered (one was, one was not)."""
    smsc.quirks = SmscQuirks(cancel_ok_after_delivery=True, query_sm=False)
    adapter = open_adapter(smsc)
    try:
        [first, second] = adapter.submit(handoffs("q3", 2))
        release(smsc)
        wait_left(smsc, "q3", 2)
        [third] = adapter.submit([Handoff("q3:sms:held", "q3", "sms", "+447700900999", "q3: offer")])
        smsc.hold_ms = 600_000

        answers = adapter.cancel("q3", {a.message_id: str(a.provider_id) for a in (first, second, third)})

        assert set(answers.values()) == {CancelStatus.UNCONFIRMED}
        assert smsc.states("q3") == {DELIVERED: 2, CANCELLED: 1}
    finally:
        adapter.close()


@pytest.mark.parametrize(("cancel", "state", "expected"), [
    (CommandStatus.ESME_ROK, MessageState.DELETED, CancelStatus.CANCELLED),
    (CommandStatus.ESME_RCANCELFAIL, MessageState.DELETED, CancelStatus.CANCELLED),
    (CommandStatus.ESME_ROK, MessageState.DELIVERED, CancelStatus.TOO_LATE),
    (CommandStatus.ESME_ROK, MessageState.ACCEPTED, CancelStatus.TOO_LATE),
    (CommandStatus.ESME_ROK, MessageState.EXPIRED, CancelStatus.TOO_LATE),
    (CommandStatus.ESME_ROK, MessageState.UNDELIVERABLE, CancelStatus.TOO_LATE),
    (CommandStatus.ESME_ROK, MessageState.REJECTED, CancelStatus.TOO_LATE),
    (CommandStatus.ESME_ROK, MessageState.ENROUTE, CancelStatus.UNCONFIRMED),
    (CommandStatus.ESME_ROK, MessageState.UNKNOWN, CancelStatus.UNCONFIRMED),
    (CommandStatus.ESME_RCANCELFAIL, MessageState.ENROUTE, CancelStatus.TOO_LATE),
    (CommandStatus.ESME_ROK, CommandStatus.ESME_RQUERYFAIL, CancelStatus.CANCELLED),
    (CommandStatus.ESME_ROK, CommandStatus.ESME_RINVMSGID, CancelStatus.CANCELLED),
    (CommandStatus.ESME_RCANCELFAIL, CommandStatus.ESME_RQUERYFAIL, CancelStatus.TOO_LATE),
    (CommandStatus.ESME_ROK, CommandStatus.ESME_RINVCMDID, CancelStatus.UNCONFIRMED),
    (CommandStatus.ESME_ROK, None, CancelStatus.UNCONFIRMED),
])
def test_what_cancel_sm_and_query_sm_prove(cancel: CommandStatus, state: object,
                                           expected: CancelStatus) -> None:
    """The SMPP 3.4 states after a cancel_sm, decoded from the bytes an SMSC sends."""
    if state is None:
        answer = None  # no query_sm_resp in time
    elif isinstance(state, MessageState):
        answer = pdus.decode(pdus.encode(operations.QuerySMResp(
            seqNum=1, message_id="1", final_date=None, message_state=state, error_code=0)))
    else:
        answer = pdus.decode(pdus.error_response(CommandId.query_sm_resp, 1, state))
    assert verdict(cancel, answer) == expected
