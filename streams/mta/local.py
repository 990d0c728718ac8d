"""The private MTA as one thing to start, stop and ask about: Postfix plus its receiver."""

from __future__ import annotations

from dataclasses import dataclass

from streams.mta.postfix import HOST, PostfixInstance, QueueCounts
from streams.mta.receiver import Receiver
from streams.settings import Settings


@dataclass(frozen=True, slots=True)
class MtaStatus:
    running: bool
    smtp: str
    receiver_running: bool
    receiver: str
    queue: QueueCounts
    received: int
    home: str


class LocalMta:
    def __init__(self, settings: Settings) -> None:
        self.postfix = PostfixInstance.from_settings(settings)
        self.receiver = Receiver(settings.mta_home, settings.mta_receiver_port)

    @property
    def provider_url(self) -> str:
        """What ESTOP_EMAIL_PROVIDER names to send through this MTA."""
        return f"smtp://{HOST}:{self.postfix.port}"

    def start(self, receiver: bool = True) -> None:
        self.postfix.start()
        if receiver:
            self.receiver_up()

    def stop(self) -> None:
        self.receiver.stop()
        self.postfix.stop()

    def receiver_up(self) -> None:
        """The internet is back: start the receiver and retry the deferred mail now."""
        self.receiver.start()
        if self.postfix.running():
            self.postfix.flush()

    def receiver_down(self) -> None:
        """Hold the internet down: mail waits in Postfix's deferred queue."""
        self.receiver.stop()

    def status(self) -> MtaStatus:
        running = self.postfix.running()
        return MtaStatus(
            running=running,
            smtp=f"{HOST}:{self.postfix.port}",
            receiver_running=self.receiver.running(),
            receiver=f"{HOST}:{self.receiver.port}",
            queue=self.postfix.counts() if running else QueueCounts({}),
            received=sum(len(ids) for ids in self.receiver.arrivals().by_campaign.values()),
            home=str(self.postfix.home),
        )
