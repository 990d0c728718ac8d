"""The three stand-ins started together for tests and ``estop demo --provider real``: each on a
free local port, their credentials (SMPP password, VAPID key, service account) and the web push
subscription directory in one folder, and the worker settings that point estop at them."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from py_vapid import Vapid

from streams.lab.standins import Arrivals
from streams.lab.standins.fcm import StandInFcm
from streams.lab.standins.pushservice import SPEC as PUSH_SPEC
from streams.lab.standins.pushservice import PushQuirks, StandInPushService
from streams.lab.standins.smsc import SPEC as SMSC_SPEC
from streams.lab.standins.smsc import SmscQuirks, StandInSmsc
from streams.providers.webpush import application_server_key, vapid_private_key

SMPP_SYSTEM_ID = "estop"


@dataclass(frozen=True, slots=True)
class Pace:
    """How the stand-ins hold messages, so a stop has something to catch."""

    sms_hold_s: float = 5.0  # the SMSC keeps each message this long before the handset gets it
    sms_validity_s: int = 3600  # validity_period estop asks for
    webpush_connect_every_s: float = 3.0  # each browser connects to its push service this often
    webpush_ttl_s: int = 8  # TTL of every web push message
    webpush_cancel: str = "delete"  # or "topic", for a push service that cannot delete
    # Real servers' habits, per test (smsc.SMPPSIM; pushservice.AUTOPUSH, WEB_PUSH_TESTING); and
    # how long the SMSC's receipts lag behind the deliveries.
    sms_quirks: SmscQuirks = SMSC_SPEC
    sms_receipt_delay_s: float = 0.0
    webpush_quirks: PushQuirks = PUSH_SPEC
    push_rate: float = 500.0  # FCM messages per second (the project's quota)
    push_ttl_s: int = 60  # android.ttl / apns-expiration of every mobile push message


class LocalStandIns:
    def __init__(self, folder: Path, channels: Iterable[str], recipients: Iterable[str],
                 pace: Pace = Pace()) -> None:
        self.folder = folder
        self.channels = set(channels)
        self.recipients = list(recipients)
        self.pace = pace
        self.smsc: StandInSmsc | None = None
        self.push_service: StandInPushService | None = None
        self.fcm: StandInFcm | None = None
        self._env: dict[str, str] = {}

    def start(self) -> LocalStandIns:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # it holds credentials
        pace = self.pace
        if "sms" in self.channels:
            password = secrets.token_urlsafe(6)  # SMPP passwords are at most 8 characters
            self.smsc = StandInSmsc(0, SMPP_SYSTEM_ID, password, pace.sms_hold_s, quirks=pace.sms_quirks,
                                    receipt_delay_s=pace.sms_receipt_delay_s).start()
            self._env["ESTOP_SMS_PROVIDER"] = (f"smpp://{SMPP_SYSTEM_ID}:{password}@127.0.0.1:"
                                               f"{self.smsc.port}?validity_s={pace.sms_validity_s}")
        if "webpush" in self.channels:
            vapid = Vapid()
            vapid.generate_keys()
            self.push_service = StandInPushService(connect_every_s=pace.webpush_connect_every_s,
                                                   allow_delete=pace.webpush_cancel == "delete",
                                                   quirks=pace.webpush_quirks).start()
            directory = self.folder / "webpush-subscriptions.json"
            self.push_service.subscribe(self.recipients, application_server_key(vapid), directory)
            # This service answers 404 for a message it delivered unless it behaves like autopush:
            # only then is its 204 no proof of a deletion.
            proof = "unconfirmed" if pace.webpush_quirks.delete_answers_204 else "cancelled"
            self._env.update({
                "ESTOP_WEBPUSH_PROVIDER": (f"webpush://?ttl_s={pace.webpush_ttl_s}"
                                           f"&cancel={pace.webpush_cancel}&delete_204={proof}"),
                "ESTOP_WEBPUSH_SUBSCRIPTIONS": str(directory),
                "ESTOP_WEBPUSH_VAPID_PRIVATE_KEY": vapid_private_key(vapid),
            })
        if "push" in self.channels:
            self.fcm = StandInFcm().start()
            account = self.fcm.service_account(self.folder / "fcm-service-account.json")
            self._env.update({
                "ESTOP_PUSH_PROVIDER": (f"fcm+http://127.0.0.1:{self.fcm.port}?rate={pace.push_rate:g}"
                                        f"&ttl_s={pace.push_ttl_s}"),
                "ESTOP_PUSH_SERVICE_ACCOUNT": str(account),
            })
        return self

    def env(self) -> dict[str, str]:
        """The worker environment that sends these channels through the stand-ins."""
        return dict(self._env)

    def arrivals(self, channel: str) -> Arrivals:
        """What reached the recipients' devices on a channel."""
        server = {"sms": self.smsc, "webpush": self.push_service, "push": self.fcm}[channel]
        assert server is not None, f"no stand-in runs for {channel}"
        return server.arrivals

    def stop(self) -> None:
        for server in (self.smsc, self.push_service, self.fcm):
            if server is not None:
                server.stop()
