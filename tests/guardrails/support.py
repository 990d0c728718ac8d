"""What the guardrail tests share: rules set for one test, the stops the processor wrote, the
audit trail of stops, and a campaign produced straight to the send-requests topic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streams.guardrails.rules import BUILTIN, set_rule
from streams.models import HEADER_CAMPAIGN, HEADER_CHANNEL, HEADER_RECIPIENT
from streams.security import audit
from streams.serde import Serdes
from streams.settings import Settings
from tests.pipeline.support import control_records, records, send_request
from tests.support import produce_each

ACTOR = audit.Actor("tester", "cli", "test")


def only_rule(settings: Settings, serdes: Serdes, name: str, **fields: Any) -> None:
    """Every built-in rule switched off but ``name``, which gets ``fields``."""
    for rule in BUILTIN:
        if rule.name != name:
            set_rule(settings, serdes, ACTOR, {"name": rule.name, "enabled": False})
    set_rule(settings, serdes, ACTOR, {"name": name, **fields})


def stop_commands(settings: Settings, serdes: Serdes, campaign_id: str) -> list[dict[str, Any]]:
    """Every stop command written for the campaign, duplicates kept."""
    return [serdes.control_command.decode(m.value()) for m in control_records(settings, campaign_id)
            if m.value() is not None]


def stop_audit(settings: Settings, serdes: Serdes, campaign_id: str) -> list[tuple[str, str, str]]:
    """(actor, outcome, via) of every stop audited for the campaign."""
    trail = [serdes.audit.decode(m.value()) for m in records(settings, settings.topics.audit)]
    return [(e["actor"], e["outcome"], e["via"]) for e in trail
            if e["action"] == audit.STOP and e["campaign_id"] == campaign_id]


def produce_campaign(settings: Settings, serdes: Serdes, campaign_id: str, channel: str,
                     count: int, recipient: Callable[[int], str] | None = None) -> list[str]:
    """``count`` send requests keyed and headed as the launcher writes them (recipient
    ``recipient(i)`` when given; a receipt shipped by the MTA agent finds its message by key);
    their message ids."""
    requests = [send_request(campaign_id, channel, i) for i in range(count)]
    if recipient is not None:
        for i, request in enumerate(requests):
            request["recipient_id"] = recipient(i)
    produce_each(settings, settings.topics.send_requests(channel), [
        (r["message_id"].encode(), serdes.send_request.encode(r),
         [(HEADER_CAMPAIGN, campaign_id.encode()), (HEADER_CHANNEL, channel.encode()),
          (HEADER_RECIPIENT, r["recipient_id"].encode())]) for r in requests])
    return [r["message_id"] for r in requests]
