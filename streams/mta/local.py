"""The private MTA as one thing to start, stop and ask about: Postfix, its receiver, and the
agent beside it that dispatchers reach over the network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.mta.agent_process import AgentProcess
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
    agent_running: bool
    agent: str
    agent_health: dict[str, Any] | None  # what the agent says of itself, when it answers


class LocalMta:
    def __init__(self, settings: Settings) -> None:
        self.postfix = PostfixInstance.from_settings(settings)
        self.receiver = Receiver(settings.mta_home, settings.mta_receiver_port)
        self.agent = AgentProcess(settings)

    @property
    def provider_url(self) -> str:
        """What ESTOP_EMAIL_PROVIDER names to send through this MTA: SMTP for submission, the
        agent for find and cancel."""
        return f"smtp://{HOST}:{self.postfix.port}?agent={self.agent.url}"

    def start(self, receiver: bool = True, agent: bool = True) -> None:
        """``agent=False``: Postfix (and its receiver) only, for a caller that runs agents of its
        own (the tests run one per topic prefix)."""
        if agent:
            self.agent.check_port()  # before anything starts
        self.postfix.start()
        if receiver:
            self.receiver_up()
        if agent:
            self.agent.start()

    def stop(self) -> None:
        self.receiver.stop()
        self.postfix.stop()
        self.agent.stop()  # last: it reads what Postfix logged while stopping

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
        agent_running = self.agent.running()
        return MtaStatus(
            running=running,
            smtp=f"{HOST}:{self.postfix.port}",
            receiver_running=self.receiver.running(),
            receiver=f"{HOST}:{self.receiver.port}",
            queue=self.postfix.counts() if running else QueueCounts({}),
            received=sum(len(ids) for ids in self.receiver.arrivals().by_campaign.values()),
            home=str(self.postfix.home),
            agent_running=agent_running,
            agent=self.agent.url,
            agent_health=self.agent.health() if agent_running else None,
        )
