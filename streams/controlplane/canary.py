"""The canary's routes on the control plane (registered with ``streams.controlplane.web``'s
table, built on ``streams.controlplane.views``, authenticated like every route):

* ``GET /campaigns/{id}/canary``: the campaign's canary state (``CanaryState``), 404 when it was
  not launched with one;
* ``POST /campaigns/{id}/release``: release the rest of a canary that is holding, as the caller
  (what `estop release` does), audited; 409 when its canary is not holding."""

from __future__ import annotations

from faust.web import Request, Response

from streams.campaigns.canary import read_state, release
from streams.campaigns.exceptions import CanaryError
from streams.controlplane import auth
from streams.controlplane.views import PlaneView, Route, requested_by
from streams.exceptions import EstopError
from streams.security import audit


class Canary(PlaneView):
    audited = audit.RELEASE

    async def get(self, request: Request, campaign_id: str) -> Response:
        plane = self.plane
        try:
            state = await plane.kafka(read_state, plane.settings, plane.serdes, campaign_id)
        except EstopError as exc:
            return self.error(503, str(exc))
        if state is None:
            return self.error(404, f"campaign {campaign_id!r} was not launched with a canary")
        return self.json(state)

    async def post(self, request: Request, campaign_id: str) -> Response:
        """Release the rest now (the body, if any, must be an empty JSON object)."""
        plane = self.plane
        who = requested_by(request)
        try:
            state = await plane.kafka(release, plane.settings, plane.serdes, campaign_id, who.name)
        except CanaryError as exc:
            await plane.rejected(audit.RELEASE, who, campaign_id, str(exc), 409)
            return self.error(409, str(exc))
        except EstopError as exc:
            return self.error(503, str(exc))
        await plane._audit(audit.event(plane.settings, auth.actor(who), audit.RELEASE, audit.ACCEPTED,
                                       campaign_id, channels=sorted(state["cohort"]),
                                       detail="the rest of the canary released"))
        return self.json({"campaign_id": campaign_id, "state": state["state"],
                          "released_by": state["released_by"]})


ROUTES: tuple[Route, ...] = (
    Route("GET", "/campaigns/{campaign_id}/canary", Canary, "read"),
    Route("POST", "/campaigns/{campaign_id}/release", Canary, "release"),
)
