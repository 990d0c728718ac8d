"""The control plane: a faust-streaming app holding the campaign lifecycle table and following
stop confirmations, with the campaign HTTP API and ``/metrics`` (``estop control``)."""

from streams.controlplane.app import ControlPlane
from streams.controlplane.service import run_control
from streams.controlplane.web import create_app

__all__ = ["ControlPlane", "create_app", "run_control"]
