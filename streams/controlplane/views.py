"""What every view of the control plane's HTTP surface builds on: ``PlaneView`` (the
cross-site check of every POST, the id rule on a campaign id in the path, the JSON body of a
POST, rejections audited on audited routes), ``Route`` (a row of a route table), the identity a
request is made under, and the one mapping of domain errors to statuses (``ERROR_STATUSES``).

The control plane's own routes (``streams.controlplane.web``) and the guardrails'
(``streams.guardrails.http``) build on this module; it imports neither of them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from faust.web import Request, Response, View

from streams.campaigns.exceptions import CanaryNotHoldingError, RelaunchError
from streams.controlplane import auth
from streams.controlplane.app import ControlPlane
from streams.controlplane.boundary import MAX_BODY, read_body
from streams.controlplane.exceptions import BodyTooLargeError, KafkaUnreachableError
from streams.exceptions import EstopError, UsageError
from streams.kafka.exceptions import KafkaUnavailableError
from streams.models.ids import id_problem
from streams.security.exceptions import AccessDeniedError
from streams.sink.exceptions import UnknownCampaignError

TOO_LARGE = f"the request body is larger than the {MAX_BODY:,} bytes any request needs"

# The status of each error the domain raises, the most specific first (a subclass before its
# base); the body is {"error": <its message>}.
ERROR_STATUSES: tuple[tuple[type[EstopError], int], ...] = (
    (UnknownCampaignError, 404),
    (RelaunchError, 409),
    (CanaryNotHoldingError, 409),  # a release of a canary that is not holding
    (UsageError, 400),  # a bad stop (InvalidStopError), a bad id: what the request holds
    (KafkaUnreachableError, 503),
    (KafkaUnavailableError, 503),  # a write the service's own call could not get acknowledged
    (AccessDeniedError, 403),  # Kafka refused the service's principal a right it needs
)


def error_status(exc: EstopError) -> int:
    """The HTTP status of a domain error (``ERROR_STATUSES``); an error not listed there is a
    bug and is raised again by the caller."""
    for kind, status in ERROR_STATUSES:
        if isinstance(exc, kind):
            return status
    raise exc


def requested_by(request: Request) -> auth.Identity:
    """Who makes a stop or a relaunch, as the audit records it: the one place a request's
    identity is decided. The authenticated identity (the bearer token's user), never a name
    from the request body; ``anonymous`` when the API asks nobody (no ``ESTOP_HTTP_TOKENS``)."""
    return auth.identity(request)


def refuse_cross_site(request: Request) -> tuple[int, str] | None:
    """Every POST must be JSON (a cross-site form cannot send ``application/json``, and a
    cross-site script cannot without a CORS preflight, which this service never grants) and must
    not come from another site (``Origin`` and ``Sec-Fetch-Site``, sent by browsers). Clients
    that are not browsers (curl, scripts) send neither header and pass."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return 403, f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("Host"):
        return 403, f"cross-site request refused: origin {origin} is not this service"
    if request.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
        return 415, "a POST must carry a JSON body with Content-Type: application/json"
    return None


class PlaneView(View):
    """A view of one control service (``plane`` is set when the route is registered)."""

    plane: ControlPlane
    audited: str | None = None  # the audit action of a route whose every answer is audited
    checks_ids = True  # a campaign id in the path is checked against the id rule first

    async def dispatch(self, request: Any) -> Any:
        if request.method == "POST":
            refused = refuse_cross_site(request)
            if refused is not None:
                return self.json({"error": refused[1]}, status=refused[0])
        campaign_id = request.match_info.get("campaign_id")
        problem = id_problem(campaign_id) if campaign_id is not None and self.checks_ids else None
        if problem is not None:
            # Refused as it is, never rewritten: no other campaign is read or stopped.
            return await self.rejected(request, campaign_id, problem)
        return await super().dispatch(request)

    def failed(self, exc: EstopError) -> Response:
        """A domain error as its status (``ERROR_STATUSES``) and one line naming it."""
        return self.error(error_status(exc), str(exc))

    async def rejected(self, request: Request, campaign_id: str, problem: str,
                       status: int = 400) -> Response:
        """``status`` naming the problem; audited on an audited route."""
        if self.audited is not None:
            await self.plane.rejected(self.audited, requested_by(request), campaign_id, problem,
                                      status)
        return self.json({"error": problem}, status=status)

    async def payload(self, request: Request, fields: tuple[str, ...]) -> tuple[dict[str, Any], str | None]:
        """The JSON object of a POST, or the reason it is not one (a body past
        ``boundary.MAX_BODY`` raises BodyTooLargeError)."""
        body = await read_body(request)
        try:
            payload = json.loads(body.decode("utf-8")) if body.strip() else None
        except (UnicodeDecodeError, ValueError) as exc:
            return {}, f"the request body is not valid JSON: {exc}"
        if not isinstance(payload, dict):
            return {}, f"the request body must be a JSON object with {', '.join(fields)}"
        if "by" in payload:
            return {}, ('"by" is not accepted: a stop is recorded as requested by the '
                        "authenticated identity (the bearer token's user)")
        unknown = sorted(set(payload) - set(fields))
        if unknown:
            return {}, f"unknown field(s) {', '.join(unknown)} (expected {', '.join(fields)})"
        return payload, None


    async def body_or_refusal(self, request: Request, fields: tuple[str, ...]
                              ) -> tuple[dict[str, Any], Response | None]:
        """The JSON object of a POST of a route that is not audited, or the answer refusing it
        (413 past ``boundary.MAX_BODY``, 400 naming what is wrong)."""
        try:
            payload, problem = await self.payload(request, fields)
        except BodyTooLargeError:
            return {}, self.error(413, TOO_LARGE)
        if problem:
            return {}, self.error(400, problem)
        return payload, None


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    view: type[PlaneView]
    access: str  # what the caller must be allowed: a key of auth.ACCESS_ROLES
