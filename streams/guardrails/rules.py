"""Guardrail rules: what a campaign's outcomes and feedback may not reach.

A rule names a metric (the share of a window's outcomes that bounced, drew a complaint, ...), a
threshold (a rate, 0 to 1), a minimum sample (outcomes in the window before the rate counts), a
window (the first N outcomes of the campaign on a channel, or the last N seconds) and the
channels it watches. Rules live on the compacted topic ``guardrail-rules``, keyed
``<scope>/<name>``: scope ``*`` is the default for every campaign, a campaign id replaces the
default of the same name for that campaign only (``enabled: false`` switches it off there). The
built-in defaults (``BUILTIN``) apply until a default of the same name is stored."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import KafkaException, Message

from streams.clock import now_ms
from streams.guardrails.exceptions import InvalidRuleError
from streams.kafka.clients import producer
from streams.kafka.exceptions import KafkaUnavailableError
from streams.kafka.reader import read_topic
from streams.models import CHANNELS
from streams.models.ids import id_problem
from streams.security import audit
from streams.security.refusals import refused
from streams.serde import SerdeError, Serdes
from streams.settings import Settings

ALL = "*"  # the scope of a default rule
FIRST, SLIDING = "first", "sliding"
WINDOWS = (FIRST, SLIDING)
# What a rule may watch. Outcomes: provider_failure (a `failed` event), bounce (a provider's own
# bounce, see streams.guardrails.outcomes, or a bounce report). Feedback kinds: the others.
METRICS = ("bounce", "hard_bounce", "soft_bounce", "complaint", "unsubscribe", "click",
           "provider_failure")
FIELDS = ("name", "scope", "enabled", "metric", "threshold", "min_sample", "window",
          "window_size", "channels")
WINDOW_MAX = {FIRST: 10_000_000, SLIDING: 7 * 24 * 3600}  # outcomes; seconds (a week)
GUARDRAIL_ACTION = "guardrail_rule"  # the audit action of a rule set or deleted


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    threshold: float
    min_sample: int
    window: str = FIRST
    window_size: int = 1000
    channels: tuple[str, ...] = ()  # empty: every channel
    scope: str = ALL
    enabled: bool = True
    updated_by: str = "builtin"
    updated_at: int = 0

    @property
    def key(self) -> str:
        return f"{self.scope}/{self.name}"

    @property
    def window_id(self) -> str:
        """The window the counts of a rule belong to: counts kept for another window (the rule
        changed) start over."""
        return f"{self.window}:{self.window_size}"

    def watches(self, channel: str) -> bool:
        return not self.channels or channel in self.channels

    def describe_window(self) -> str:
        if self.window == FIRST:
            return f"the first {self.window_size:,} outcomes"
        return f"the last {self.window_size:,} s"

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "channels": list(self.channels)}

    def as_json(self) -> dict[str, Any]:
        """The rule as the HTTP API and ``estop rules --json`` show it."""
        return {**self.record(), "default": self.scope == ALL,
                "builtin": self.updated_by == "builtin"}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Rule:
        return cls(**{**record, "channels": tuple(record["channels"])})


# Sensible for a marketing campaign; each can be replaced (`estop rules set --default`) or
# switched off (`--disable`).
BUILTIN: tuple[Rule, ...] = (
    Rule("bounce", "bounce", 0.05, 100, FIRST, 1000),
    Rule("provider-failure", "provider_failure", 0.10, 100, FIRST, 1000),
    Rule("complaint", "complaint", 0.003, 1000, SLIDING, 3600),
    Rule("unsubscribe", "unsubscribe", 0.02, 500, SLIDING, 3600),
)


def parse(data: Mapping[str, Any], by: str, partial: Rule | None = None) -> Rule:
    """A rule from JSON-like input (the HTTP API's body, the CLI's options), every value
    checked; ``partial``: the rule it changes (fields not given keep their value there)."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InvalidRuleError(f"unknown field(s) {', '.join(unknown)} (expected {', '.join(FIELDS)})")
    base = partial.record() if partial is not None else {}
    merged = {**base, **{k: v for k, v in data.items() if v is not None}}
    for name in ("name", "scope", "metric"):
        if not isinstance(merged.get(name), str):
            raise InvalidRuleError(f'a rule needs "{name}" (text)')
    name_problem = id_problem(merged["name"], "rule name")
    if name_problem:
        raise InvalidRuleError(name_problem)
    if merged["scope"] != ALL and (problem := id_problem(merged["scope"], "scope (campaign id)")):
        raise InvalidRuleError(problem)
    if merged["metric"] not in METRICS:
        raise InvalidRuleError(f"unknown metric {merged['metric']!r} (expected {', '.join(METRICS)})")
    threshold = merged.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold) or not 0 < threshold <= 1:
        raise InvalidRuleError('"threshold" must be a rate above 0 and at most 1 (0.05 is 5%)')
    window = merged.get("window", FIRST)
    if window not in WINDOWS:
        raise InvalidRuleError(f"unknown window {window!r} (expected {', '.join(WINDOWS)})")
    for field, low, high in (("min_sample", 1, WINDOW_MAX[FIRST]),
                             ("window_size", 1, WINDOW_MAX[window])):
        value = merged.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidRuleError(f'"{field}" must be a whole number from {low} to {high:,}')
    if window == FIRST and merged["min_sample"] > merged["window_size"]:
        raise InvalidRuleError(f"the minimum sample ({merged['min_sample']:,}) is larger than the "
                               f"window of the first {merged['window_size']:,} outcomes: "
                               "the rule could never trip")
    channels = merged.get("channels") or []
    if not isinstance(channels, (list, tuple)) or not all(c in CHANNELS for c in channels):
        raise InvalidRuleError(f'"channels" must list channels ({", ".join(CHANNELS)}); empty means all')
    enabled = merged.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidRuleError('"enabled" must be true or false')
    return Rule(merged["name"], merged["metric"], float(threshold), merged["min_sample"], window,
                merged["window_size"], tuple(sorted(set(channels))), merged["scope"], enabled,
                by, now_ms())


class RuleBook:
    """Every rule stored, by key, with the built-in defaults under them: what applies to a
    campaign (``effective``)."""

    def __init__(self) -> None:
        self.stored: dict[str, Rule] = {}

    def apply(self, key: bytes | None, value: bytes | None, serdes: Serdes) -> None:
        """One record of ``guardrail-rules`` (a tombstone deletes; an unreadable one is skipped)."""
        if key is None:
            return
        name = key.decode("utf-8", "replace")
        if value is None:
            self.stored.pop(name, None)
            return
        try:
            rule = Rule.from_record(serdes.guardrail_rule.decode(value))
        except (SerdeError, TypeError):
            return
        if rule.key == name:
            self.stored[name] = rule

    def defaults(self) -> list[Rule]:
        """The default of every name: stored, else built in."""
        found = {r.name: r for r in BUILTIN}
        found.update((r.name, r) for r in self.stored.values() if r.scope == ALL)
        return sorted(found.values(), key=lambda r: r.name)

    def effective(self, campaign_id: str) -> list[Rule]:
        """The rules that apply to ``campaign_id``, enabled ones only."""
        found = {r.name: r for r in self.defaults()}
        found.update((r.name, r) for r in self.stored.values() if r.scope == campaign_id)
        return [r for r in sorted(found.values(), key=lambda r: r.name) if r.enabled]

    def overrides(self, campaign_id: str) -> list[Rule]:
        return sorted((r for r in self.stored.values() if r.scope == campaign_id),
                      key=lambda r: r.name)

    def find(self, scope: str, name: str) -> Rule | None:
        """The rule stored under ``scope``/``name``, else the default of that name (what a
        campaign's own rule starts from)."""
        return self.stored.get(f"{scope}/{name}") or next(
            (r for r in self.defaults() if r.name == name), None)


def read_rules(settings: Settings, serdes: Serdes) -> RuleBook:
    book = RuleBook()

    def keep(message: Message) -> None:
        book.apply(message.key(), message.value(), serdes)

    read_topic(settings, settings.topics.guardrail_rules, keep)
    return book


def _write(settings: Settings, key: str, value: bytes | None) -> None:
    out = producer(settings, **{"linger.ms": 0})
    failure: list[Any] = []
    right = f"write {settings.topics.guardrail_rules}"
    try:
        out.produce(settings.topics.guardrail_rules, key=key.encode(), value=value,
                    on_delivery=lambda err, _m: failure.append(err) if err else None)
        unsent = out.flush(settings.admin_timeout_s)
    except KafkaException as exc:
        raise refused(settings, exc.args[0], right) or KafkaUnavailableError(
            f"the rule was not written: {exc}") from exc
    if unsent or failure:
        error = failure[0] if failure else None
        raise refused(settings, error, right) or KafkaUnavailableError(
            f"the rule was not written: {error or 'not acknowledged in time'}")


def set_rule(settings: Settings, serdes: Serdes, actor: audit.Actor, data: Mapping[str, Any],
             trail: audit.AuditWriter | None = None) -> Rule:
    """Store a rule (a change of the stored or built-in rule of its scope and name when it
    exists), audited; raises InvalidRuleError with nothing written."""
    scope, name = data.get("scope", ALL), data.get("name")
    current = read_rules(settings, serdes).find(str(scope), str(name)) \
        if isinstance(name, str) and isinstance(scope, str) else None
    rule = parse({"scope": ALL, **data}, actor.name, current)
    _write(settings, rule.key, serdes.guardrail_rule.encode(rule.record()))
    _audit(settings, serdes, actor, rule.scope, f"set rule {rule.name}: {summary(rule)}", trail)
    return rule


def delete_rule(settings: Settings, serdes: Serdes, actor: audit.Actor, scope: str, name: str,
                trail: audit.AuditWriter | None = None) -> None:
    """Remove a stored rule (a campaign's falls back to the default; a default to the built-in
    one), audited; a rule never stored is an InvalidRuleError."""
    if read_rules(settings, serdes).stored.get(f"{scope}/{name}") is None:
        whom = "every campaign" if scope == ALL else repr(scope)
        raise InvalidRuleError(f"no rule {name!r} is stored for {whom}")
    _write(settings, f"{scope}/{name}", None)
    _audit(settings, serdes, actor, scope, f"deleted rule {name}", trail)


def summary(rule: Rule) -> str:
    state = "" if rule.enabled else "disabled; "
    where = ", ".join(rule.channels) or "every channel"
    return (f"{state}{rule.metric} rate >= {rule.threshold:.2%} over {rule.describe_window()} "
            f"(minimum sample {rule.min_sample:,}) on {where}")


def _audit(settings: Settings, serdes: Serdes, actor: audit.Actor, scope: str, detail: str,
           trail: audit.AuditWriter | None) -> None:
    entry = audit.event(settings, actor, GUARDRAIL_ACTION, audit.ACCEPTED,
                        "" if scope == ALL else scope, detail=detail)
    problem = (trail.write(entry) if trail is not None else audit.record(settings, serdes, entry))
    if problem:
        raise KafkaUnavailableError(f"the rule is stored; {problem}")
