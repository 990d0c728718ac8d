"""`estop demo --provider real` and worker start-up through the real protocols, run as a user
would, in a subprocess."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from streams.lab.standins.smsc import StandInSmsc
from streams.settings import Settings
from tests.pipeline.support import cli_env
from tests.support import free_port, run_estop


def demo_env(settings: Settings, mta: Path) -> dict[str, str]:
    return {**cli_env(settings), "ESTOP_MTA_DIR": str(mta), "ESTOP_MTA_PORT": str(free_port()),
            "ESTOP_MTA_RECEIVER_PORT": str(free_port()), "ESTOP_MTA_AGENT_PORT": str(free_port()),
            "ESTOP_METRICS_PORT": str(free_port())}


@pytest.mark.broker
def test_demo_through_real_protocols_on_all_four_channels(settings: Settings) -> None:
    # Postfix's own user must reach its folder: not under pytest's private (0700) base.
    mta = Path(tempfile.mkdtemp(prefix="estop-mta-"))
    mta.chmod(0o755)
    env = demo_env(settings, mta)
    try:
        done = run_estop("demo", "--channels", "email", "sms", "push", "webpush", "--provider",
                         "real", "--recipients", "400", "--stop-after", "40", "--json", env=env,
                         timeout_s=600)
    finally:
        # The demo leaves its Postfix running for the user to look at; this one is the test's.
        stopped = run_estop("mta", "stop", env=env)
        shutil.rmtree(mta, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["planned"] == result["total"] == 1600
    assert result["stop_confirmed"] and result["handoffs_after_confirmation"] == 0
    figures = {c["channel"]: c for c in result["channels"]}
    assert sorted(figures) == ["email", "push", "sms", "webpush"]
    for channel, row in figures.items():
        assert row["sent"] > 0, row  # the stop met every channel part-way
        assert row["arrived"] == row["sent"], row  # counted at the receiving server
        if channel != "email":
            assert row["arrived_after_confirmation"] == 0, row
    assert figures["push"]["cancelled"] == 0  # FCM cannot cancel
    assert result["report"]["accounted"] == 1600


def test_demo_refuses_an_unknown_channel() -> None:
    done = run_estop("demo", "--channels", "email", "fax", "--provider", "real")
    assert done.returncode == 2
    assert done.stderr.strip() == "estop: unknown channel 'fax' (channels: email, sms, push, webpush)"


def test_a_worker_whose_smsc_refuses_the_bind_stops_with_one_line(tmp_path: Path) -> None:
    smsc = StandInSmsc(0, "estop", "secret", hold_s=1).start()
    try:
        done = run_estop("worker", "--role", "dispatcher", "--channel", "sms", env={
            "ESTOP_SMS_PROVIDER": f"smpp://estop:wrong@127.0.0.1:{smsc.port}",
            "ESTOP_DATA_DIR": str(tmp_path), "ESTOP_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"},
            timeout_s=120)
    finally:
        smsc.stop()
    assert done.returncode != 0
    lines = [line for line in done.stderr.strip().splitlines() if line]
    assert lines == [f"estop: SMSC 127.0.0.1:{smsc.port} refused the bind of system id 'estop': "
                     "ESME_RINVPASWD"], done.stderr
