"""`estop mta` the way a user runs it: a private Postfix of its own (not the session's), started
without its receiver, with its agent, asked about, given its receiver, stopped; the agent in the
foreground refuses what it cannot do in one line; and the demo refuses smtp for a channel other
than email."""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path

from streams.mta.agent import AgentFiles
from streams.mta.agent_process import AgentProcess
from streams.settings import Settings, load_settings
from tests.pipeline.support import cli_env
from tests.support import free_port, listen_on_free_port, run_estop


def test_mta_start_status_receiver_and_stop(settings: Settings) -> None:
    home = Path(tempfile.mkdtemp(prefix="estop-mta-cli-"))
    home.chmod(0o755)
    port, receiver, agent = free_port(), free_port(), free_port()
    env = {**cli_env(settings), "ESTOP_MTA_DIR": str(home), "ESTOP_MTA_PORT": str(port),
           "ESTOP_MTA_RECEIVER_PORT": str(receiver), "ESTOP_MTA_AGENT_PORT": str(agent)}
    files = AgentFiles(home)
    topic = settings.topics.receipts("email")
    try:
        started = run_estop("mta", "start", "--without-receiver", env=env)
        assert started.returncode == 0, started.stderr
        assert (f"ESTOP_EMAIL_PROVIDER=smtp://127.0.0.1:{port}?agent=http://127.0.0.1:{agent}"
                in started.stdout)
        assert "receiver down" in started.stdout
        assert f"MTA agent running at http://127.0.0.1:{agent}" in started.stdout
        assert f"-> {topic} at {settings.bootstrap_servers}" in started.stdout
        assert (home / "etc" / "main.cf").exists() and (home / "spool" / "active").is_dir()
        # The generated token: readable by its owner only, never on a command line or printed.
        assert stat.S_IMODE(files.token.stat().st_mode) == 0o600
        token = files.token.read_text().strip().split("=", 1)[1]
        assert len(token) >= 32 and token not in started.stdout + started.stderr
        pid = AgentProcess(load_settings(mta_dir=home)).pid()
        assert pid is not None and token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()

        status = run_estop("mta", "status", env=env)
        assert status.returncode == 0, status.stderr
        assert f"Postfix running at 127.0.0.1:{port}; queue: empty" in status.stdout
        assert "receiver down" in status.stdout
        assert (f"MTA agent running at http://127.0.0.1:{agent}; 0 receipts shipped to {topic} "
                f"at {settings.bootstrap_servers}, 0 waiting") in status.stdout

        up = run_estop("mta", "receiver", "start", env=env)
        assert up.returncode == 0, up.stderr
        status = run_estop("mta", "status", env=env)
        assert f"receiver running at 127.0.0.1:{receiver}" in status.stdout

        # A second agent for the same log and topic, in the foreground, on another port: refused.
        second = run_estop("mta", "agent", env={**env, "ESTOP_MTA_AGENT_PORT": str(free_port())})
        assert second.returncode == 1
        assert f"estop: another MTA agent already ships {home}/log/postfix.log to {topic}" \
            in second.stderr.splitlines()

        stopped = run_estop("mta", "stop", env=env)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip() == "Postfix, its receiver and the MTA agent stopped"
        status = run_estop("mta", "status", env=env)
        assert status.returncode == 1
        assert "Postfix not running" in status.stdout and "receiver down" in status.stdout
        assert f"MTA agent not running at http://127.0.0.1:{agent}" in status.stdout
        assert not files.pid.exists()
    finally:
        run_estop("mta", "stop", env=env)
        shutil.rmtree(home, ignore_errors=True)


def test_the_agent_in_the_foreground_says_in_one_line_what_it_lacks(settings: Settings,
                                                                     tmp_path: Path) -> None:
    empty = tmp_path / "no-postfix"
    done = run_estop("mta", "agent", env={**cli_env(settings), "ESTOP_MTA_DIR": str(empty)})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (f"estop: no Postfix instance in {empty} (run "
                                                    "`estop mta start`, or set ESTOP_MTA_DIR)")
    assert "Traceback" not in done.stderr and not empty.exists()  # no token written there

    home = Path(tempfile.mkdtemp(prefix="estop-mta-cli-"))
    home.chmod(0o755)
    taken = listen_on_free_port()
    port = taken.getsockname()[1]
    env = {**cli_env(settings), "ESTOP_MTA_DIR": str(home), "ESTOP_MTA_PORT": str(free_port()),
           "ESTOP_MTA_RECEIVER_PORT": str(free_port()), "ESTOP_MTA_AGENT_PORT": str(port)}
    try:
        started = run_estop("mta", "start", "--without-receiver", env=env)
        assert started.returncode == 1
        assert started.stderr.strip() == (f"estop: port {port} is taken by another process: set "
                                          "ESTOP_MTA_AGENT_PORT")
        assert not (home / "etc").exists()  # refused before Postfix was set up
        set_up = run_estop("mta", "start", "--without-receiver",
                           env={**env, "ESTOP_MTA_AGENT_PORT": str(free_port())})
        assert set_up.returncode == 0, set_up.stderr
        assert run_estop("mta", "stop", env=env).returncode == 0
        done = run_estop("mta", "agent", env=env)
        assert done.returncode == 1
        assert done.stderr.strip().splitlines()[-1].startswith(
            f"estop: the MTA agent cannot listen on 127.0.0.1:{port} (")
        assert "set ESTOP_MTA_AGENT_PORT" in done.stderr and "Traceback" not in done.stderr
    finally:
        taken.close()
        run_estop("mta", "stop", env=env)
        shutil.rmtree(home, ignore_errors=True)


def test_the_smtp_demo_carries_email_only() -> None:
    done = run_estop("demo", "--provider", "smtp", "--channels", "sms", "--recipients", "10",
                     "--stop-after", "1")
    assert done.returncode == 2
    assert done.stderr.strip() == ("estop: --provider smtp carries email only: leave out "
                                   "--channels or use --channels email (--provider real carries "
                                   "every channel)")
