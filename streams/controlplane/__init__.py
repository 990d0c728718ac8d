"""The control plane: a faust-streaming app holding the campaign lifecycle table and following
stop confirmations, with the campaign HTTP API and ``/metrics`` (``estop control``)."""

from streams.controlplane.app import ControlPlane, create_app
from streams.controlplane.service import run_control

__all__ = ["ControlPlane", "create_app", "run_control"]
