"""Control plane errors: what the control service's domain cannot do. The HTTP layer
(``streams.controlplane.web``) maps each error, and the errors of the areas the service calls
(a stop refused, a relaunch refused, a campaign unknown), to a status; the domain never names
one."""

from streams.exceptions import EstopError


class ControlPlaneError(EstopError):
    """Base of the control service's own errors."""


class KafkaUnreachableError(ControlPlaneError):
    """Kafka did not answer or refused what the service asked (a stop, the kill switch, a stop
    preview): nothing is confirmed written, and asking again is safe."""


class BodyTooLargeError(ControlPlaneError):
    """A request body larger than ``boundary.MAX_BODY``: refused (413) before the rest is read."""
