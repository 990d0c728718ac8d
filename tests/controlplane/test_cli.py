"""`estop control` and `estop worker --role control` refuse what they cannot do, in one line."""

from __future__ import annotations

from tests.support import listen_on_free_port, run_estop


def test_a_taken_control_port_is_an_error_naming_the_setting() -> None:
    with listen_on_free_port() as taken:
        port = taken.getsockname()[1]
        result = run_estop("control", "--port", str(port), env={"ESTOP_CONTROL_HOST": "127.0.0.1"})
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{port} is taken" in result.stderr and "ESTOP_CONTROL_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_control_role_runs_alone() -> None:
    for args in (("--role", "control", "--role", "gate"), ("--role", "control", "--channel", "sms")):
        result = run_estop("worker", *args)
        assert result.returncode == 2, result.stderr
        assert "control role runs in a process of its own" in result.stderr
