"""Hostile input on the secured broker: a relaunch from the console runs as the control plane's
own least-privilege user and a refused write reaches the caller (and the audit) instead of
passing for "Queued"; the secured local broker speaks TLS (SASL_SSL) and no secret of it is
ever on a command line."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

from confluent_kafka.admin import (
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from streams.clock import now_ms
from streams.kafka.clients import admin, producer, wait_for_broker
from streams.kafka.exceptions import KafkaUnavailableError
from streams.models import STATE_STOPPED
from streams.security import credentials
from streams.security.exceptions import AuthenticationFailedError
from streams.serde import Serdes
from streams.settings import Settings, load_settings
from streams.sink.store import NOT_SENT, Batch, OutcomeRow, open_store
from tests.controlplane.support import Api, ControlProcess, Processes, http
from tests.pipeline.support import records
from tests.security.support import Principals
from tests.support import free_port, run_estop, wait_for

WAIT_S = 120.0


def store_unsent(settings: Settings, campaign_id: str, recipients: list[str]) -> None:
    """The analytics store as the sink leaves a stopped email campaign: every message notSent."""
    store = open_store(settings)
    try:
        at = now_ms()
        store.write(Batch(
            outcomes=[OutcomeRow(f"{campaign_id}:email:{i}", campaign_id, "email", r, NOT_SENT,
                                 "message.notSent", "sending", "campaign stopped: wrong", "c-1",
                                 None, at) for i, r in enumerate(recipients)],
            campaigns=[{"campaign_id": campaign_id, "state": STATE_STOPPED, "channels": ["email"],
                        "planned": {"email": len(recipients)}, "updated_at": at}],
            stops=[], acks=[]))
    finally:
        store.close()


def start_control(secured: Principals, processes: Processes) -> Api:
    tokens = credentials.read_env(secured.env_files["control"].parent / "http-tokens.env")
    control = ControlProcess(secured.admin, env={**secured.env("control"), **tokens})
    processes.add(control)
    return control.start(WAIT_S)


def test_a_relaunch_runs_as_the_control_plane_and_its_failure_reaches_the_caller(
        secured: Principals, serdes: Serdes, processes: Processes) -> None:
    topics = secured.admin.topics
    store_unsent(secured.admin, "autumn", ["r0", "r1"])
    api = start_control(secured, processes)
    operator, viewer = secured.http_tokens["operator"], secured.http_tokens["viewer"]

    def relaunch(new_id: str) -> dict[str, Any]:
        reply = http("POST", f"{api.base}/campaigns/autumn/relaunch", json.dumps({"as": new_id}).encode(),
                     token=operator)
        assert reply.status == 202, reply.body
        url = reply.json()["status_url"]

        def ended() -> bool:
            answer = http("GET", api.base + url, token=viewer)
            return answer.status == 200 and answer.json()["state"] != "queueing"

        wait_for(ended, f"the relaunch as {new_id} to end", timeout_s=WAIT_S)
        state: dict[str, Any] = http("GET", api.base + url, token=viewer).json()
        return state

    done = relaunch("autumn-2")
    assert (done["state"], done["queued"], done["error"]) == ("done", {"email": 2}, None), done
    queued = [serdes.send_request.decode(m.value())
              for m in records(secured.admin, topics.send_requests("email"))]
    assert sorted((r["campaign_id"], r["recipient_id"]) for r in queued) == [
        ("autumn-2", "r0"), ("autumn-2", "r1")]

    # Take the control plane's right to queue email away: the next relaunch fails, and says so.
    control = secured.roles["control"]
    with admin(secured.admin) as client:
        for future in client.delete_acls([AclBindingFilter(
                ResourceType.TOPIC, topics.send_requests("email"), ResourcePatternType.LITERAL,
                f"User:{control.sasl_username}", "*", AclOperation.WRITE,
                AclPermissionType.ALLOW)]).values():
            future.result(30)
    wait_for(lambda: _refused_to(control, topics.send_requests("email")),
             "the broker to apply the removed ACL", timeout_s=WAIT_S)

    failed = relaunch("autumn-3")
    assert failed["state"] == "failed"
    assert failed["error"] == (f"user '{control.sasl_username}' may not write "
                               f"{topics.send_requests('email')}")
    trail = [serdes.audit.decode(m.value()) for m in records(secured.admin, topics.audit)]
    relaunches = [(e["outcome"], e["actor"], e["detail"].split(":")[0]) for e in trail
                  if e["action"] == "relaunch"]
    assert relaunches == [("accepted", "operator", "as autumn-2"), ("accepted", "operator", "as autumn-3"),
                          ("failed", "operator", "as autumn-3")]


def _refused_to(settings: Settings, topic: str) -> bool:
    errors: list[Any] = []
    out = producer(settings, **{"linger.ms": 0})
    out.produce(topic, key=b"probe", value=b"probe", on_delivery=lambda e, _m: errors.append(e))
    out.flush(30)
    return bool(errors) and errors[0] is not None


def test_the_secured_local_broker_speaks_tls_and_keeps_its_secrets_off_command_lines(
        tmp_path: Path) -> None:
    """`estop broker start --secure` on a fresh folder: every java it runs is recorded (a PATH
    wrapper around the real java) and no argument holds the admin's password; the broker
    presents a certificate of its own authority; a client without TLS gets nowhere."""
    password = "admin-secret-" + os.urandom(8).hex()
    argv_log = tmp_path / "java-argv.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_java = next(str(Path(d) / "java") for d in os.environ["PATH"].split(os.pathsep)
                     if (Path(d) / "java").is_file())
    wrapper = bin_dir / "java"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {argv_log}\nexec {real_java} "$@"\n')
    wrapper.chmod(0o755)
    port, controller = free_port(), free_port()
    data = tmp_path / "data"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ESTOP_DATA_DIR": str(data),
           "ESTOP_BROKER_PORT": str(port), "ESTOP_CONTROLLER_PORT": str(controller),
           "ESTOP_BROKER_HEAP": "512m", "ESTOP_BROKER_ADMIN_PASSWORD": password,
           "ESTOP_BOOTSTRAP_SERVERS": f"localhost:{port}"}
    started = run_estop("broker", "start", "--secure", env=env)
    try:
        assert started.returncode == 0, started.stderr
        assert "SASL_SSL" in started.stdout
        ran = argv_log.read_text()
        # The storage was formatted (its arguments in a file of the broker's folder), the broker run.
        assert ".storage-tool-" in ran and "kafka.Kafka" in ran, ran
        assert password not in ran, "the admin's password was on a command line"

        admin_env = credentials.read_env(data / "security" / "admin.env")
        assert admin_env["ESTOP_SECURITY_PROTOCOL"] == "SASL_SSL"
        ca = Path(admin_env["ESTOP_SSL_CA_LOCATION"])
        for secret in ("broker.p12", "keystore-password", "ca-key.pem"):
            assert stat.S_IMODE((ca.parent / secret).stat().st_mode) == 0o600, secret
        # The broker's port speaks TLS with a certificate for localhost from that authority.
        context = ssl.create_default_context(cafile=ca)
        with socket.create_connection(("localhost", port), timeout=30) as raw_socket, \
                context.wrap_socket(raw_socket, server_hostname="localhost") as tls_socket:
            assert tls_socket.version() in ("TLSv1.3", "TLSv1.2")
        # The admin connects over SASL_SSL; the same credentials without TLS get nowhere.
        secure = load_settings(**{k.removeprefix("ESTOP_").lower(): v for k, v in admin_env.items()})
        assert wait_for_broker(secure, timeout_s=30) == 1
        plain = secure.model_copy(update={"security_protocol": "SASL_PLAINTEXT"})
        try:
            wait_for_broker(plain, timeout_s=5)
            raise AssertionError("a client without TLS reached the secured broker")
        except (KafkaUnavailableError, AuthenticationFailedError):
            pass
    finally:
        stopped = run_estop("broker", "stop", env=env)
        assert stopped.returncode == 0, stopped.stderr
