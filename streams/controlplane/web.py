"""The control plane's HTTP surface: every route in one table (``ROUTES``), the JSON API views,
and the operator console (a static page and its script, shipped in this package: no CDN); what
every view builds on is in ``streams.controlplane.views``.

The domain (``streams.controlplane.app``) returns results and raises errors; the views here
turn them into JSON bodies and statuses (``streams.controlplane.views.ERROR_STATUSES``). This
module imports the domain, never the other way round; ``create_app`` wires the two.

What each route does is named by ``Route.access`` ("public", "read", "audit", "stop", "relaunch",
"stop-all"); ``streams.controlplane.auth`` maps it to the HTTP role it needs."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from typing import Any

from faust.web import Request, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from streams.campaigns.canary import parse_share
from streams.campaigns.exceptions import CanaryError, RelaunchError
from streams.control.exceptions import CampaignNotStoppableError, InvalidStopError
from streams.control.stop import StopResult
from streams.controlplane.app import ControlPlane
from streams.controlplane.exceptions import BodyTooLargeError, KafkaUnreachableError
from streams.controlplane.views import TOO_LARGE, PlaneView, Route, requested_by
from streams.exceptions import UsageError
from streams.models import CHANNELS
from streams.models.ids import id_problem
from streams.security import audit
from streams.serde import Serdes
from streams.settings import Settings
from streams.sink.exceptions import UnknownCampaignError

STOP_FIELDS = ("reason", "channels", "force")
STOP_ALL_FIELDS = ("reason", "confirm")
STOP_ALL_PHRASE = "STOP ALL"  # what the operator types to confirm the kill switch
EXPORT_STATUSES = ("not_sent", "sent", "failed")
AUDIT_PAGE, AUDIT_PAGE_MAX = 100, 1000  # audit events per page of GET /audit: default, most


ASSETS = {  # file in streams/controlplane/console/ -> content type
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# The console runs only its own script and style, talks only to this service, and cannot be
# framed: an id or reason that slipped past escaping still could not run or load anything.
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self'; connect-src 'self'; form-action 'self'; "
                                "base-uri 'none'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
}


def not_stoppable(campaign_id: str, exc: CampaignNotStoppableError) -> tuple[int, dict[str, Any]]:
    """A stop refused for the campaign's state: 404 for a campaign never seen, 409 for one not
    Sending or Finished; either can be forced."""
    if exc.state is None:
        return 404, {"error": f"unknown campaign {campaign_id!r}: it has not been seen on "
                              "campaign-status; send \"force\": true to stop it anyway"}
    return 409, {"error": f"campaign {campaign_id!r} is {exc.state}, not Sending or "
                          "Finished; send \"force\": true to stop it anyway", "state": exc.state}


def stop_body(campaign_id: str, result: StopResult) -> tuple[int, dict[str, Any]]:
    """A stop written (202) or already in force (200)."""
    return (200 if result.already_stopped else 202), {
        "campaign_id": campaign_id,
        "command_id": result.command_id,
        "channels": result.channels,
        "already_stopped": result.already_stopped,
        "status_url": f"/campaigns/{campaign_id}",
    }


def stop_all_body(results: list[StopResult]) -> tuple[int, dict[str, Any]]:
    """The kill switch's answer: 202 when it wrote a stop, 200 when every campaign was already
    stopped or none could be."""
    written = [r for r in results if not r.already_stopped and r.error is None]
    return (202 if written else 200), {
        "stopped": [{"campaign_id": r.campaign_id, "command_id": r.command_id} for r in written],
        "already_stopped": [r.campaign_id for r in results if r.already_stopped],
        "not_stopped": [{"campaign_id": r.campaign_id, "error": r.error}
                        for r in results if r.error is not None],
    }


# -- the JSON API -----------------------------------------------------------------------------


class Health(PlaneView):
    async def get(self, request: Request) -> Response:
        plane = self.plane
        return self.json({"status": "ok" if plane.ready else "starting", "ready": plane.ready,
                          "process_id": plane.process_id, "app_id": plane.app_id},
                         status=200 if plane.ready else 503)


class Metrics(PlaneView):
    async def get(self, request: Request) -> Response:
        return self.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


class Campaigns(PlaneView):
    async def get(self, request: Request) -> Response:
        return self.json({"campaigns": await self.plane.campaign_list()})


class Campaign(PlaneView):
    async def get(self, request: Request, campaign_id: str) -> Response:
        detail = await self.plane.campaign(campaign_id)
        if detail is None:
            return self.error(404, f"unknown campaign {campaign_id!r}: not seen on "
                                   "campaign-status or campaign-control")
        return self.json(detail)


class Timeline(PlaneView):
    async def get(self, request: Request, campaign_id: str) -> Response:
        series = await self.plane.timeline(campaign_id)
        if series is None:
            return self.error(404, f"unknown campaign {campaign_id!r}")
        return self.json(series)


class Export(PlaneView):
    audited = audit.EXPORT

    async def get(self, request: Request, campaign_id: str) -> Response:
        outcome = request.query.get("status", "not_sent")
        channel = request.query.get("channel") or None
        if outcome not in EXPORT_STATUSES:
            return await self.rejected(request, campaign_id, f"unknown status {outcome!r} "
                                                             f"(expected {', '.join(EXPORT_STATUSES)})")
        if channel is not None and channel not in CHANNELS:
            return await self.rejected(request, campaign_id, f"unknown channel {channel!r} "
                                                             f"(expected {', '.join(CHANNELS)})")
        try:
            text = await self.plane.export_csv(campaign_id, outcome, channel, requested_by(request))
        except UnknownCampaignError as exc:
            return self.failed(exc)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", campaign_id)
        return self.bytes(text.encode(), headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{name}-{outcome}.csv"',
            "X-Content-Type-Options": "nosniff"})


class StopCampaign(PlaneView):
    audited = audit.STOP

    async def post(self, request: Request, campaign_id: str) -> Response:
        try:
            payload, problem = await self.payload(request, STOP_FIELDS)
        except BodyTooLargeError:
            return await self.rejected(request, campaign_id, TOO_LARGE, 413)
        problem = problem or _check_stop(payload)
        if problem:
            return await self.rejected(request, campaign_id, problem)
        try:
            result = await self.plane.stop(
                campaign_id, payload["reason"], list(payload.get("channels") or []),
                bool(payload.get("force", False)), requested_by(request))
        except CampaignNotStoppableError as exc:
            status, body = not_stoppable(campaign_id, exc)
            return self.json(body, status=status)
        except (InvalidStopError, KafkaUnreachableError) as exc:
            return self.failed(exc)
        status, body = stop_body(campaign_id, result)
        return self.json(body, status=status)


class StopPreview(PlaneView):
    async def get(self, request: Request, campaign_id: str) -> Response:
        """What a stop would halt now, per channel and stage (``?channels=email,sms``: of those)."""
        channels = [c for c in request.query.get("channels", "").split(",") if c]
        try:
            return self.json(await self.plane.stop_preview(campaign_id, channels))
        except (UsageError, KafkaUnreachableError) as exc:
            return self.failed(exc)


class StopAll(PlaneView):
    audited = audit.KILL_SWITCH

    async def post(self, request: Request) -> Response:
        try:
            payload, problem = await self.payload(request, STOP_ALL_FIELDS)
        except BodyTooLargeError:
            return await self.rejected(request, "", TOO_LARGE, 413)
        if not problem and payload.get("confirm") != STOP_ALL_PHRASE:
            problem = f'the kill switch needs "confirm": "{STOP_ALL_PHRASE}"'
        if not problem and not isinstance(payload.get("reason"), str):
            problem = 'missing "reason": a stop needs a reason'
        if problem:
            return await self.rejected(request, "", problem)
        try:
            results = await self.plane.stop_all(payload["reason"], requested_by(request))
        except (InvalidStopError, KafkaUnreachableError) as exc:
            return self.failed(exc)
        status, body = stop_all_body(results)
        return self.json(body, status=status)


class Relaunch(PlaneView):
    audited = audit.RELAUNCH

    async def post(self, request: Request, campaign_id: str) -> Response:
        try:
            payload, problem = await self.payload(request, ("as", "canary"))
        except BodyTooLargeError:
            return await self.rejected(request, campaign_id, TOO_LARGE, 413)
        if not problem and not isinstance(payload.get("as"), str):
            problem = 'missing "as": the new campaign id'
        if not problem:
            problem = id_problem(payload["as"], "new campaign id")
        share = None
        if not problem and payload.get("canary") not in (None, ""):
            try:
                share = parse_share(str(payload["canary"]))
            except CanaryError as exc:
                problem = str(exc)
        if problem:
            return await self.rejected(request, campaign_id, problem)
        try:
            job = await self.plane.relaunch(campaign_id, payload["as"], requested_by(request),
                                            share)
        except (UnknownCampaignError, RelaunchError) as exc:
            return self.failed(exc)
        return self.json(job, status=202)

    async def get(self, request: Request, campaign_id: str) -> Response:
        """A relaunch as ``campaign_id``: queueing, done, or failed and why."""
        state = self.plane.relaunch_state(campaign_id)
        if state is None:
            return self.error(404, f"this service started no relaunch as {campaign_id!r}")
        return self.json(state)


class Audit(PlaneView):
    async def get(self, request: Request) -> Response:
        """A page of the trail, oldest first; ``next`` is the ``before`` of the page before it."""
        try:
            limit = int(request.query.get("limit", str(AUDIT_PAGE)))
        except ValueError:
            return self.error(400, "limit must be a whole number")
        if not 1 <= limit <= AUDIT_PAGE_MAX:
            return self.error(400, f"limit must be 1 to {AUDIT_PAGE_MAX}")
        before = None
        if "before" in request.query:
            at, _, audit_id = request.query["before"].partition(":")
            if not at.isdigit() or id_problem(audit_id, "audit id") is not None:
                return self.error(400, "before must be the \"next\" of a page (AT:AUDIT_ID)")
            before = (int(at), audit_id)
        campaign = request.query.get("campaign")
        if campaign is not None and (problem := id_problem(campaign)) is not None:
            return self.error(400, problem)
        entries, older = await self.plane.audit_trail(campaign, limit, before)
        return self.json({"audit": entries, "next": older})


class WhoAmI(PlaneView):
    async def get(self, request: Request) -> Response:
        who = requested_by(request)
        return self.json({"name": who.name, "role": who.role, "source": who.source,
                          "authenticated": who.authenticated})


def _check_stop(payload: dict[str, Any]) -> str | None:
    """The shape of a stop request; the values are then checked by ``streams.control.stop``."""
    reason = payload.get("reason")
    if reason is None:
        return 'missing "reason": a stop needs a reason'
    if not isinstance(reason, str):
        return '"reason" must be a string'
    if not reason.strip():
        return '"reason" is empty: a stop needs a reason'
    channels = payload.get("channels")
    if channels is not None and (not isinstance(channels, list)
                                 or not all(isinstance(c, str) for c in channels)):
        return f'"channels" must be a list of channel names ({", ".join(CHANNELS)}); empty means all'
    if not isinstance(payload.get("force", False), bool):
        return '"force" must be true or false'
    return None


# -- the console ------------------------------------------------------------------------------


def _asset(name: str) -> bytes:
    return (resources.files("streams.controlplane") / "console" / name).read_bytes()


class ConsolePage(PlaneView):
    """The console's one page; its script shows the list or a campaign from the address (and
    what the API answers for it, an invalid id included)."""

    checks_ids = False

    async def get(self, request: Request, campaign_id: str | None = None) -> Response:
        return self.bytes(_asset("console.html"),
                          headers={**PAGE_HEADERS, "Content-Type": "text/html; charset=utf-8"})


class ConsoleAsset(PlaneView):
    async def get(self, request: Request, name: str) -> Response:
        if name not in ASSETS:
            return self.error(404, f"no console asset {name!r}")
        return self.bytes(_asset(name), headers={**PAGE_HEADERS, "Content-Type": ASSETS[name]})


# -- the routes -------------------------------------------------------------------------------


ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", Health, "public"),
    Route("GET", "/metrics", Metrics, "public"),
    Route("GET", "/campaigns", Campaigns, "read"),
    Route("GET", "/campaigns/{campaign_id}", Campaign, "read"),
    Route("GET", "/campaigns/{campaign_id}/timeline", Timeline, "read"),
    Route("GET", "/campaigns/{campaign_id}/export.csv", Export, "export"),
    Route("POST", "/campaigns/{campaign_id}/stop", StopCampaign, "stop"),
    Route("GET", "/campaigns/{campaign_id}/stop-preview", StopPreview, "read"),
    Route("POST", "/campaigns/{campaign_id}/relaunch", Relaunch, "relaunch"),
    Route("GET", "/campaigns/{campaign_id}/relaunch", Relaunch, "read"),
    Route("POST", "/stop-all", StopAll, "stop-all"),
    Route("GET", "/audit", Audit, "audit"),
    Route("GET", "/whoami", WhoAmI, "read"),
    # The page and its script and style are static and hold no data; what they show comes from
    # the routes above, each with its own role.
    Route("GET", "/", ConsolePage, "public"),
    Route("GET", "/console", ConsolePage, "public"),
    Route("GET", "/console/campaigns/{campaign_id}", ConsolePage, "public"),
    Route("GET", "/console/assets/{name}", ConsoleAsset, "public"),
)


def all_routes() -> tuple[Route, ...]:
    """``ROUTES``, the guardrails' (``streams.guardrails.http``) and the canary's
    (``streams.controlplane.canary``), whose views build on this module's."""
    from streams.controlplane.canary import ROUTES as CANARY_ROUTES
    from streams.guardrails.http import ROUTES as GUARDRAIL_ROUTES

    return (*ROUTES, *GUARDRAIL_ROUTES, *CANARY_ROUTES)


def route_access() -> dict[tuple[str, str], str]:
    """(method, path) -> access of every route: the table the auth middleware checks."""
    return {(route.method, route.path): route.access for route in all_routes()}


def register_routes(plane: ControlPlane) -> None:
    """Serve every route of ``ROUTES`` from ``plane``'s Faust web server (a view answers every
    method it defines on its path: a path is registered once)."""
    for path, view_class in dict.fromkeys((route.path, route.view) for route in all_routes()):
        view = type(view_class.__name__, (view_class,), {"plane": plane})
        plane.app.page(path, name=path)(view)


def create_app(settings: Settings, serdes: Serdes | None = None,
               on_ready: Callable[[ControlPlane], None] | None = None) -> ControlPlane:
    """A control service for these settings, its routes served: app id, group and internal
    topics all derive from the topic prefix, so services for different prefixes never share
    state."""
    plane = ControlPlane(settings, route_access(), serdes, on_ready)
    register_routes(plane)
    plane.declare_topics()
    return plane
