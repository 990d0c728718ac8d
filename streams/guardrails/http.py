"""The guardrails' routes on the control plane (registered with ``streams.controlplane.web``'s
table, built on ``streams.controlplane.views``, authenticated like every route): the rules as
JSON, a campaign's rules with their live values, and the feedback webhook.

* ``GET /guardrails/rules``: the defaults (stored, else built in) and every campaign's own rules;
* ``POST /guardrails/rules``: set one rule (a JSON rule; fields not given keep their value),
  audited; ``DELETE /guardrails/rules?scope=S&name=N`` removes a stored one;
* ``GET /campaigns/{id}/guardrails``: each rule that applies, per channel its window's sample,
  hits, value against the threshold, and the trip with the stop it wrote;
* ``POST /feedback``: ``{"feedback": [report, ...]}`` -> Feedback records (202)."""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response

from streams.controlplane import auth
from streams.controlplane.views import PlaneView, Route, requested_by
from streams.exceptions import EstopError
from streams.guardrails import feedback
from streams.guardrails.processor import read_windows
from streams.guardrails.rules import ALL, FIELDS, delete_rule, read_rules, set_rule
from streams.security import audit


def _actor(request: Request) -> audit.Actor:
    return auth.actor(requested_by(request))


class Rules(PlaneView):
    async def get(self, request: Request) -> Response:
        plane = self.plane
        book = await plane.kafka(read_rules, plane.settings, plane.serdes)
        campaigns: dict[str, list[dict[str, Any]]] = {}
        for rule in book.stored.values():
            if rule.scope != ALL:
                campaigns.setdefault(rule.scope, []).append(rule.as_json())
        return self.json({"defaults": [r.as_json() for r in book.defaults()],
                          "campaigns": campaigns, "fields": list(FIELDS)})

    async def post(self, request: Request) -> Response:
        payload, refusal = await self.body_or_refusal(request, FIELDS)
        if refusal is not None:
            return refusal
        plane = self.plane
        try:
            rule = await plane.kafka(set_rule, plane.settings, plane.serdes, _actor(request),
                                      payload, plane.trail)
        except EstopError as exc:
            return self.failed(exc)
        return self.json({"rule": rule.as_json()})

    async def delete(self, request: Request) -> Response:
        scope, name = request.query.get("scope", ALL), request.query.get("name")
        if not name:
            return self.json({"error": "name the rule: ?name=N (&scope=campaign id; * for the default)"},
                             status=400)
        plane = self.plane
        try:
            await plane.kafka(delete_rule, plane.settings, plane.serdes, _actor(request), scope,
                               name, plane.trail)
        except EstopError as exc:
            return self.failed(exc)
        return self.json({"deleted": {"scope": scope, "name": name}})


class CampaignGuardrails(PlaneView):
    async def get(self, request: Request, campaign_id: str) -> Response:
        plane = self.plane
        book = await plane.kafka(read_rules, plane.settings, plane.serdes)
        windows = await plane.kafka(read_windows, plane.settings, plane.serdes, campaign_id)
        by_rule: dict[str, list[Any]] = {}
        for window in windows:
            by_rule.setdefault(window.rule, []).append(window)
        rules = []
        tripped = None
        for rule in book.effective(campaign_id):
            channels = []
            for window in sorted(by_rule.get(rule.name, []), key=lambda w: w.channel):
                sample, hits = window.totals()
                channels.append({
                    "channel": window.channel, "sample": sample, "hits": hits,
                    "value": window.value(), "threshold": rule.threshold,
                    "min_sample": rule.min_sample, "sample_reached": sample >= rule.min_sample,
                    "tripped_at": window.tripped_at, "trip_reason": window.trip_reason,
                    "stop_command_id": window.stop_command_id})
                if window.tripped_at is not None and (tripped is None
                                                      or window.tripped_at < tripped["tripped_at"]):
                    tripped = {"rule": rule.name, "channel": window.channel,
                               "tripped_at": window.tripped_at, "reason": window.trip_reason,
                               "stop_command_id": window.stop_command_id,
                               "requested_by": f"guardrail:{rule.name}"}
            rules.append({**rule.as_json(), "windows": channels})
        return self.json({"campaign_id": campaign_id, "rules": rules, "tripped": tripped})


class Feedback(PlaneView):
    async def post(self, request: Request) -> Response:
        payload, refusal = await self.body_or_refusal(request, ("feedback",))
        if refusal is not None:
            return refusal
        plane = self.plane
        try:
            reports = feedback.check_all(payload.get("feedback"), requested_by(request).name)
            written = await plane.kafka(feedback.publish, plane.settings, plane.serdes, reports)
        except EstopError as exc:
            return self.failed(exc)
        return self.json({"written": written}, status=202)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/guardrails/rules", Rules, "read"),
    Route("POST", "/guardrails/rules", Rules, "guardrail-rules"),
    Route("DELETE", "/guardrails/rules", Rules, "guardrail-rules"),
    Route("GET", "/campaigns/{campaign_id}/guardrails", CampaignGuardrails, "read"),
    Route("POST", "/feedback", Feedback, "feedback"),
)
