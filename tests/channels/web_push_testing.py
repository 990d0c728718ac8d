"""``web-push-testing`` (npm), a Web Push service written by others, run privately by the tests.

It checks what a push service checks of a sender and decrypts every message as a browser would:
the VAPID ``Authorization: vapid t=JWT,k=KEY`` (``k`` must be the application server key the
subscription was made for, the JWT's ES256 signature must verify against it and its ``exp`` must
not be past), a ``TTL``, and an ``aes128gcm`` body (RFC 8291) that ``http_ece`` must decrypt with
the subscription's private key and auth secret. A message it took is answered ``201 Created``
without a ``Location`` and kept, decrypted, for ``POST /get-notifications``; any check that fails
is a ``400`` naming it.

Installed by ``npm ci`` from the lock file committed in ``deploy/web-push-testing/`` into the cache
folder on first use (like the Kafka jars), so later runs need no registry. Its own ``start`` and
``stop`` commands detach the server and keep its state in a file; the tests run the package's
server script instead, as a child process on a port of their own, its output in a folder of its
own, and stop it themselves.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.ecosystem.exceptions import EcosystemError, ServerExitedError
from tests.ecosystem.server import ServerProcess
from tests.support import REPO

PACKAGE = REPO / "deploy" / "web-push-testing"
NAME = "web-push-testing"
VERSION: str = json.loads((PACKAGE / "package.json").read_text())["dependencies"][NAME]
SERVER = Path("node_modules") / NAME / "src" / "bin" / "server.js"
NODE_HINT = "install Node.js and npm (apt-get install nodejs npm; `make test` does)"


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` not found on PATH: {NODE_HINT}")
    return path


def install(cache_dir: Path, say: Callable[[str], None] = print) -> Path:
    """The folder web-push-testing is installed in, ``npm ci``-ed from the committed lock file on
    first use. The folder is named by the version and the lock's digest, so a changed lock is
    installed afresh; npm's own cache is kept in the cache folder too."""
    lock = (PACKAGE / "package-lock.json").read_bytes()
    home = cache_dir / f"{NAME}-{VERSION}-{hashlib.sha256(lock).hexdigest()[:12]}"
    if (home / SERVER).is_file():
        return home
    npm = _program("npm")
    say(f"installing {NAME} {VERSION} from the npm registry into {home} (once)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{NAME}-", dir=cache_dir))
    for name in ("package.json", "package-lock.json"):
        shutil.copy(PACKAGE / name, staging / name)
    result = subprocess.run([npm, "ci", "--prefer-offline", "--no-audit", "--no-fund",
                             "--cache", str(cache_dir / "npm")],
                            cwd=staging, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not (staging / SERVER).is_file():
        shutil.rmtree(staging, ignore_errors=True)
        detail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
        pytest.fail(f"npm ci of {NAME} {VERSION} failed (exit {result.returncode}): {detail}")
    if (home / SERVER).is_file():  # another test session installed it meanwhile
        shutil.rmtree(staging, ignore_errors=True)
        return home
    shutil.rmtree(home, ignore_errors=True)  # a folder an interrupted run left without the server
    staging.rename(home)
    return home


class WebPushTesting:
    """One web-push-testing server: ``node server.js PORT`` in ``folder``, its output in
    ``folder/web-push-testing.log``. Its state (subscriptions, messages) lives in the process."""

    def __init__(self, installed: Path, port: int, folder: Path) -> None:
        self.port = port
        self.origin = f"http://localhost:{port}"
        self.server = ServerProcess(NAME, [_program("node"), str(installed / SERVER), str(port)],
                                    folder)

    def start(self, timeout_s: float = 60.0) -> float:
        """Seconds until it answered ``POST /status``; ServerExitedError if it exited first."""
        try:
            return self.server.start(self._answers, timeout_s)
        except ServerExitedError:
            raise
        except EcosystemError as exc:
            pytest.fail(str(exc))

    def stop(self) -> None:
        self.server.stop(timeout_s=10.0)

    def _answers(self) -> bool:
        try:
            return requests.post(f"{self.origin}/status", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    # -- what a browser and a test ask of it ---------------------------------------------------

    def subscribe(self, application_server_key: str) -> dict[str, Any]:
        """A push subscription made as a browser makes one for a site's VAPID key: ``endpoint``,
        ``keys`` (``p256dh``, ``auth``) and the server's ``clientHash`` naming it."""
        response = requests.post(f"{self.origin}/subscribe", timeout=10, json={
            "userVisibleOnly": "true", "applicationServerKey": application_server_key})
        assert response.status_code == 200, f"{NAME} refused a subscription: {response.text}"
        data: dict[str, Any] = response.json()["data"]
        return data

    def notifications(self, client_hash: str) -> list[str]:
        """Every message the subscription received, as the server decrypted it, in order."""
        response = requests.post(f"{self.origin}/get-notifications", timeout=10,
                                 json={"clientHash": client_hash})
        assert response.status_code == 200, f"{NAME}: {response.text}"
        messages: list[str] = response.json()["data"]["messages"]
        return messages
