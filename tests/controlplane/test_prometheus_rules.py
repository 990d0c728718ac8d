"""The Prometheus configuration, recording rules and alert rules in deploy/prometheus, checked
and unit-tested with promtool (Debian's `prometheus` package; missing promtool fails)."""

from __future__ import annotations

import re
import subprocess

from tests.controlplane.support import PROMETHEUS_DIR, tool

REQUIRED_ALERTS = {
    "EstopStopNotConfirmed",  # a stop not confirmed within N seconds
    "EstopHandoffAfterConfirmedStop",  # any handoff after a confirmed stop
    "EstopConsumerLagGrowing",  # gate or dispatcher lag growing
    "EstopRecordsDeadLettered",  # records arriving in a dead-letter topic
    "EstopControlRecordRefused",  # a record on campaign-control refused by a worker
    "EstopProcessDown",  # a worker process down
    "EstopRoleDown",  # a role down inside a running process
    "EstopGuardrailTripped",  # a guardrail stopped a campaign by itself
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=PROMETHEUS_DIR, capture_output=True,
                          text=True, timeout=120, check=False)


def test_config_and_rule_files_are_valid() -> None:
    rules = sorted(str(p.relative_to(PROMETHEUS_DIR)) for p in PROMETHEUS_DIR.glob("rules/*.yml"))
    assert rules, "no rule files in deploy/prometheus/rules"
    checked = promtool("check", "rules", *rules)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert f"{len(rules)} rule files found" in config.stdout + config.stderr


def test_rule_unit_tests_pass() -> None:
    tests = sorted(p.name for p in PROMETHEUS_DIR.glob("*tests*.yml"))
    assert tests, "no deploy/prometheus/*tests*.yml"
    result = promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_required_alert_exists_and_has_unit_tests() -> None:
    defined = set(re.findall(r"^\s*- alert:\s*(\w+)", (PROMETHEUS_DIR / "rules" / "alerts.yml").read_text(),
                             re.MULTILINE))
    assert defined >= REQUIRED_ALERTS, f"missing alerts: {REQUIRED_ALERTS - defined}"
    tested: set[str] = set()
    for path in PROMETHEUS_DIR.glob("*tests*.yml"):
        tested |= set(re.findall(r"alertname:\s*(\w+)", path.read_text()))
    assert defined <= tested, f"alerts without a promtool test: {defined - tested}"
