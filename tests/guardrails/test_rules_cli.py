"""`estop rules` against the real broker: a bad rule is one line on stderr and exit 2, nothing
stored; a campaign's own rule replaces the default for that campaign only, is listed, audited
and deleted back to the default."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streams.guardrails.rules import GUARDRAIL_ACTION, read_rules
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import cli_env, records
from tests.support import run_estop

pytestmark = pytest.mark.broker


def rules(settings: Settings, *args: str) -> Any:
    return run_estop("rules", *args, env=cli_env(settings))


def one_error(done: Any) -> str:
    """The one line a refused command printed (exit 2, no traceback)."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    return str(line)


def test_bad_rules_are_one_line_and_exit_2_with_nothing_stored(settings: Settings,
                                                               serdes: Serdes) -> None:
    for args, words in [
        (("set", "complaint", "--threshold", "2"), '"threshold" must be a rate above 0 and at most 1'),
        (("set", "slow", "--metric", "bounce", "--threshold", "0.1", "--min-sample", "5000",
          "--window-size", "100"), "could never trip"),
        (("set", "spiky", "--threshold", "0.1"), 'a rule needs "metric"'),
        (("set", "bounce", "--window", "sliding", "--window-size", "999999999"),
         '"window_size" must be a whole number from 1 to 604,800'),
        (("set", "bounce", "--campaign", "no spaces"), "scope (campaign id)"),
        (("delete", "bounce"), "no rule 'bounce' is stored for every campaign"),
    ]:
        line = one_error(rules(settings, *args))
        assert line.startswith("estop: ") and words in line, (args, line)
    usage = rules(settings, "set", "bounce", "--threshold", "lots")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr and "--threshold" in usage.stderr
    assert read_rules(settings, serdes).stored == {}
    assert records(settings, settings.topics.audit) == []


def test_a_campaign_rule_is_set_listed_audited_and_deleted(settings: Settings,
                                                           serdes: Serdes) -> None:
    done = rules(settings, "set", "bounce", "--campaign", "spring", "--threshold", "0.2",
                 "--channel", "email")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("bounce for spring: bounce rate >= 20.00% over the first 1,000 "
                                   "outcomes (minimum sample 100) on email")

    def listed(*args: str) -> dict[str, dict[str, Any]]:
        shown = rules(settings, "list", *args, "--json")
        assert shown.returncode == 0, shown.stderr
        return {f"{r['scope']}/{r['name']}": r for r in json.loads(shown.stdout)}

    spring = listed("--campaign", "spring")
    assert (spring["spring/bounce"]["threshold"], spring["spring/bounce"]["channels"]) == (0.2, ["email"])
    assert "*/complaint" in spring  # the other defaults still apply to it
    everyone = listed()
    assert everyone["*/bounce"]["threshold"] == 0.05 and everyone["*/bounce"]["builtin"]
    text = rules(settings, "list").stdout
    assert any(line.split()[:2] == ["bounce", "spring"] for line in text.splitlines())

    deleted = rules(settings, "delete", "bounce", "--campaign", "spring")
    assert (deleted.returncode, deleted.stdout.strip()) == (0, "deleted bounce for spring")
    assert listed("--campaign", "spring")["*/bounce"]["threshold"] == 0.05
    trail = [serdes.audit.decode(m.value()) for m in records(settings, settings.topics.audit)]
    assert [(e["action"], e["campaign_id"], e["detail"]) for e in trail] == [
        (GUARDRAIL_ACTION, "spring", "set rule bounce: bounce rate >= 20.00% over the first 1,000 "
                                     "outcomes (minimum sample 100) on email"),
        (GUARDRAIL_ACTION, "spring", "deleted rule bounce")]
