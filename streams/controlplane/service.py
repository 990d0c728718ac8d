"""``estop control`` (and ``estop worker --role control``): runs the control plane's Faust app
in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from streams.exceptions import UsageError
from streams.kafka.clients import wait_for_broker
from streams.kafka.topics import replication
from streams.metrics import UP
from streams.settings import Settings

log = logging.getLogger(__name__)


def control_port(host: str, port: int) -> int:
    """``port`` if it is free on ``host``, a free port when it is 0; a taken port is an error
    (an API's address must not move silently)."""
    family = socket.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)[0]
    with socket.socket(family[0], socket.SOCK_STREAM) as probe:
        try:
            probe.bind(family[4][:2])
        except OSError as exc:
            raise UsageError(f"the control port {host}:{port} is taken ({exc.strerror}); set "
                             "ESTOP_CONTROL_PORT or --port to a free port (0 picks one)") from exc
        return int(probe.getsockname()[1])


def run_control(settings: Settings, announce: Callable[[str], None],
                loglevel: str = "WARNING") -> int:
    """Run the control service; ``announce`` gets the ready line once it has read its topics."""
    import faust

    from streams.controlplane.web import create_app

    settings = settings.model_copy(
        update={"control_port": control_port(settings.control_host, settings.control_port)})
    # The app's own topics are replicated like the pipeline's (streams/kafka/topics.py).
    factor = replication(settings, wait_for_broker(settings)).factor
    settings = settings.model_copy(update={"replication_factor": factor})
    plane = create_app(settings, on_ready=lambda p: announce(p.ready_line()))
    worker = faust.Worker(plane.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.spinner = None  # stdout carries the ready line only
    UP.labels("control").set(1)
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        UP.labels("control").set(0)
        plane.close()
    announce("stopped")
    return code
