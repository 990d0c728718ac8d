"""The provider stage scaled out on email through the private Postfix: three dispatchers, each
with its own data folder and none with Postfix on its "host" (their MTA folder is empty: they
reach Postfix over SMTP and its agent over HTTP); one scaled down, one SIGKILLed, one added,
then a stop (tests/scale_out.py). The receiver is down, so the whole campaign waits in Postfix's
queue; the stop deletes all of it there, whoever handed it over; once the receiver is back, not
one message of the campaign arrives."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.mta.agent import AgentFiles, agent_token
from streams.mta.agent_process import AgentProcess
from streams.mta.local import LocalMta
from streams.serde import Serdes
from streams.settings import Settings
from tests.reliability.support import wait_for
from tests.scale_out import ScaleOut, stop_a_scaled_out_campaign

pytestmark = pytest.mark.broker

PLANNED = 600


def test_email_dispatchers_scaled_down_killed_and_added_then_a_stop_leaks_nothing(
        smtp_settings: Settings, receiver_up: LocalMta, agent: AgentProcess, tmp_path: Path) -> None:
    settings, mta = smtp_settings, receiver_up
    campaign = "scaled-email"
    token = agent_token(settings)
    assert token is not None and AgentFiles(settings.mta_home).token.exists()
    nowhere = tmp_path / "no-postfix-here"
    nowhere.mkdir()
    env = {"ESTOP_PROVIDER_RATE": "300", "ESTOP_BATCH_SIZE": "100",
           "ESTOP_MTA_DIR": str(nowhere), "ESTOP_MTA_AGENT_TOKEN": token.get_secret_value()}
    mta.receiver_down()

    def queued() -> int:
        return mta.postfix.counts().total

    def receiver_back() -> None:
        mta.receiver_up()
        mta.postfix.flush()
        wait_for(lambda: queued() == 0, "Postfix's queue to empty")

    scale = ScaleOut(settings, "email", tmp_path / "pods", env)
    try:
        # The receiver is down: what Postfix took is what it queued.
        _, events, found = stop_a_scaled_out_campaign(scale, Serdes(), campaign, PLANNED, queued,
                                                      queued, receiver_back)
    finally:
        scale.fleet.stop_all()
    # The receiver was down the whole time: nothing was sent, nothing arrived once it was back.
    assert mta.receiver.arrivals().count(campaign) == len(events.sent) == 0
    assert found["cancelled_at_provider"] == PLANNED
