"""`estop mta` the way a user runs it: a private Postfix of its own (not the session's), started
without its receiver, asked about, given its receiver, stopped; and the demo refuses smtp for a
channel other than email."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.support import free_port, run_estop


def test_mta_start_status_receiver_and_stop() -> None:
    home = Path(tempfile.mkdtemp(prefix="estop-mta-cli-"))
    home.chmod(0o755)
    port, receiver = free_port(), free_port()
    env = {"ESTOP_MTA_DIR": str(home), "ESTOP_MTA_PORT": str(port),
           "ESTOP_MTA_RECEIVER_PORT": str(receiver)}
    try:
        started = run_estop("mta", "start", "--without-receiver", env=env)
        assert started.returncode == 0, started.stderr
        assert f"ESTOP_EMAIL_PROVIDER=smtp://127.0.0.1:{port}" in started.stdout
        assert "receiver down" in started.stdout
        assert (home / "etc" / "main.cf").exists() and (home / "spool" / "active").is_dir()

        status = run_estop("mta", "status", env=env)
        assert status.returncode == 0, status.stderr
        assert f"Postfix running at 127.0.0.1:{port}; queue: empty" in status.stdout
        assert "receiver down" in status.stdout

        up = run_estop("mta", "receiver", "start", env=env)
        assert up.returncode == 0, up.stderr
        status = run_estop("mta", "status", env=env)
        assert f"receiver running at 127.0.0.1:{receiver}" in status.stdout

        stopped = run_estop("mta", "stop", env=env)
        assert stopped.returncode == 0, stopped.stderr
        status = run_estop("mta", "status", env=env)
        assert status.returncode == 1
        assert "Postfix not running" in status.stdout and "receiver down" in status.stdout
    finally:
        run_estop("mta", "stop", env=env)
        shutil.rmtree(home, ignore_errors=True)


def test_the_smtp_demo_carries_email_only() -> None:
    done = run_estop("demo", "--provider", "smtp", "--channels", "sms", "--recipients", "10",
                     "--stop-after", "1")
    assert done.returncode == 2
    assert done.stderr.strip() == ("estop: --provider smtp carries email only: leave out "
                                   "--channels or use --channels email (--provider real carries "
                                   "every channel)")
