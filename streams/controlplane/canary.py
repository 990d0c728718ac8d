"""The canary's routes on the control plane (registered with ``streams.controlplane.web``'s
table, built on ``streams.controlplane.views``, authenticated like every route):

* ``GET /campaigns/{id}/canary``: the campaign's canary state (``CanaryState``), 404 when it was
  not launched with one;
* ``POST /campaigns/{id}/release``: release the rest of a canary that is holding, as the caller
  (what `estop release` does), audited; 409 when its canary is not holding."""

from __future__ import annotations

from faust.web import Request, Response

from streams.campaigns.exceptions import CanaryError
from streams.controlplane.views import PlaneView, Route, error_status, requested_by
from streams.exceptions import EstopError
from streams.security import audit


class Canary(PlaneView):
    audited = audit.RELEASE

    async def get(self, request: Request, campaign_id: str) -> Response:
        try:
            state = await self.plane.canary(campaign_id)
        except EstopError as exc:
            return self.failed(exc)
        if state is None:
            return self.error(404, f"campaign {campaign_id!r} was not launched with a canary")
        return self.json(state)

    async def post(self, request: Request, campaign_id: str) -> Response:
        """Release the rest now (the body, if any, must be an empty JSON object)."""
        try:
            state = await self.plane.release(campaign_id, requested_by(request))
        except CanaryError as exc:  # not holding: audited as rejected
            return await self.rejected(request, campaign_id, str(exc), error_status(exc))
        except EstopError as exc:
            return self.failed(exc)
        return self.json({"campaign_id": campaign_id, "state": state["state"],
                          "released_by": state["released_by"]})


ROUTES: tuple[Route, ...] = (
    Route("GET", "/campaigns/{campaign_id}/canary", Canary, "read"),
    Route("POST", "/campaigns/{campaign_id}/release", Canary, "release"),
)
