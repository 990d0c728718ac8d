"""The project's own KRaft broker, built from the Apache Kafka jars on Maven Central: one node,
or a cluster of several on localhost (``estop broker start --brokers 3``).

Used when neither ESTOP_BOOTSTRAP_SERVERS nor a Docker engine is there. Jars are resolved once
by ``mvn`` into the cache folder; data, logs and the pid file of each node live under the data
folder. Every node is broker and controller at once (KRaft combined mode), so a cluster of three
is also the one controller quorum of three voters: it survives the loss of any one node.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from streams.exceptions import MavenError, MissingProgramError
from streams.kafka.clients import wait_for_broker
from streams.kafka.exceptions import KafkaUnavailableError, LocalBrokerError
from streams.maven import fetch
from streams.processes import alive, log_tail, port_open, require
from streams.security import credentials, tls
from streams.settings import Settings

# Maven pom, server.properties and log4j2 of the local broker, shipped in the package.
RECIPE = Path(str(resources.files("streams.kafka") / "broker_recipe"))


@dataclass(frozen=True)
class BrokerNode:
    """One node of the local broker: its id, its two ports and its own folder (data, logs, pid).

    Node ``n`` (from 1) listens on ``broker_port + 2(n-1)`` for clients and on
    ``controller_port + 2(n-1)`` for the controller quorum: 9092/9093, 9094/9095, 9096/9097 by
    default. A single node keeps the folder ``<data>/broker``; the nodes of a cluster get
    ``<data>/broker/node-<n>``."""

    node_id: int
    broker_port: int
    controller_port: int
    home: Path

    @property
    def address(self) -> str:
        return f"localhost:{self.broker_port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def kraft(self) -> Path:
        return self.home / "kraft"

    @property
    def properties(self) -> Path:
        return self.home / "server.properties"


@dataclass(frozen=True)
class NodeStatus:
    node: BrokerNode
    pid: int | None

    @property
    def running(self) -> bool:
        return self.pid is not None


@dataclass(frozen=True)
class BrokerStatus:
    """All nodes of the local broker; ``running`` when every one of them runs."""

    running: bool
    address: str
    version: str
    pid: int | None  # the first node's
    nodes: tuple[NodeStatus, ...] = ()


def plan_nodes(settings: Settings, count: int) -> list[BrokerNode]:
    """The nodes of a local broker of ``count`` nodes: ports and folders (see BrokerNode)."""
    root = settings.data_dir / "broker"
    return [
        BrokerNode(n, settings.broker_port + 2 * (n - 1), settings.controller_port + 2 * (n - 1),
                   root if count == 1 else root / f"node-{n}")
        for n in range(1, count + 1)
    ]


class LocalBroker:
    """start / stop / status of the local broker (every node of it); every method is safe to
    call twice.

    How many nodes: ``brokers`` (the ``--brokers`` option), else ESTOP_BROKERS when set, else as
    many as the data folder holds (a cluster started once is found again by `status`, `stop`
    and a plain `start`), else one."""

    def __init__(self, settings: Settings, say: Callable[[str], None] = lambda _: None,
                 brokers: int | None = None) -> None:
        self.settings = settings
        self.say = say
        self.version = settings.kafka_version
        self.libs = settings.cache_dir / f"kafka-{self.version}" / "libs"
        if brokers is None and "brokers" not in settings.model_fields_set:
            found = len(list((settings.data_dir / "broker").glob("node-*/server.properties")))
            brokers = found or settings.brokers
        self.nodes = plan_nodes(settings, brokers or settings.brokers)
        self.address = ",".join(node.address for node in self.nodes)
        self.secure = settings.broker_secure
        # Present once the nodes were formatted with the admin's SCRAM credentials.
        self.secured_marker = settings.data_dir / "broker" / "secured"

    # -- public ----------------------------------------------------------------------------

    def status(self) -> BrokerStatus:
        nodes = tuple(NodeStatus(node, self._pid(node)) for node in self.nodes)
        return BrokerStatus(all(n.running for n in nodes), self.address, self.version,
                            nodes[0].pid, nodes)

    def node(self, node_id: int) -> BrokerNode:
        return next(node for node in self.nodes if node.node_id == node_id)

    def start(self) -> BrokerStatus:
        """Start every node that is not running (all of them, or one that was killed), then wait
        until each answers and the cluster metadata lists them all."""
        down = [node for node in self.nodes if self._pid(node) is None]
        if not down:
            pids = ", ".join(str(n.pid) for n in self.status().nodes)
            self.say(f"broker already running at {self.address} (pid {pids})")
            return self.status()
        for node in down:
            for port in (node.broker_port, node.controller_port):
                if port_open(port):
                    raise LocalBrokerError(
                        f"port {port} is already taken by another process; stop it, or use it as "
                        f"your broker with ESTOP_BOOTSTRAP_SERVERS=localhost:{port}"
                    )
        java = require("java", "install Java 17 or newer (apt-get install openjdk-17-jre-headless)")
        self._resolve_jars()
        self._format(java)
        started = time.monotonic()
        # Every node first, then the waits: a node of a cluster answers only once a majority of
        # the controller quorum is up.
        processes = [(node, self._spawn(java, node)) for node in down]
        for node, _ in processes:
            self._wait_ready(node, processes, started)
        self._wait_registered(started)
        self.say(f"broker ready at {self.address} in {time.monotonic() - started:.1f}s")
        if self.secure:
            self.say(f"secured: SASL_SSL (TLS, the authority in {tls.ca_file(self.settings)}), "
                     f"SCRAM-SHA-512, ACLs; admin credentials in {self.admin_env()} (then "
                     "`estop security init`)")
        return self.status()

    def client_settings(self, address: str | None = None) -> Settings:
        """Settings of a client of this broker (or of one node): as its admin when secured."""
        settings = self.settings.model_copy(update={"bootstrap_servers": address or self.address})
        if not self.secured_marker.exists():
            return settings
        return credentials.as_principal(self._secured(settings), self.settings.broker_admin_user,
                                        self._admin_password())

    def _secured(self, settings: Settings) -> Settings:
        """``settings`` connecting over TLS to this broker, trusting its own authority."""
        return settings.model_copy(update={"security_protocol": credentials.PROTOCOL,
                                           "ssl_ca_location": tls.ca_file(self.settings)})

    def admin_env(self) -> Path:
        return credentials.security_dir(self.settings) / f"{self.settings.broker_admin_user}.env"

    def _spawn(self, java: str, node: BrokerNode) -> subprocess.Popen[bytes]:
        node.logs.mkdir(parents=True, exist_ok=True)
        out = (node.logs / "server.out").open("ab")
        command = [
            java,
            f"-Xmx{self.settings.broker_heap}",
            f"-Xms{self.settings.broker_heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={node.logs}",
            f"-Dlog4j2.configurationFile={RECIPE / 'log4j2.properties'}",
            "-cp",
            f"{self.libs}/*",
            "kafka.Kafka",
            str(node.properties),
        ]
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        node.pid_file.write_text(str(process.pid))
        self.say(f"starting Kafka {self.version} at {node.address} (pid {process.pid})")
        return process

    def _wait_ready(self, node: BrokerNode,
                    processes: list[tuple[BrokerNode, subprocess.Popen[bytes]]], started: float) -> None:
        """Until ``node`` answers; fails at once when any node being started exited."""
        deadline = started + self.settings.broker_start_timeout_s
        probe = self.client_settings(node.address)
        while True:
            for exited, process in processes:
                if process.poll() is not None:
                    exited.pid_file.unlink(missing_ok=True)
                    self.stop()
                    raise LocalBrokerError(
                        f"the broker at {exited.address} exited with code {process.returncode} "
                        f"while starting; see {exited.logs / 'server.out'}:\n"
                        f"{log_tail(exited.logs / 'server.out')}"
                    )
            try:
                wait_for_broker(probe, timeout_s=2.0)
                return
            except KafkaUnavailableError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise LocalBrokerError(
                        f"the broker did not answer within {self.settings.broker_start_timeout_s:.0f}s; "
                        f"see {node.logs / 'server.log'}"
                    ) from None

    def _wait_registered(self, started: float) -> None:
        """Until the cluster metadata lists every node: topics with replication factor N can be
        created only then."""
        deadline = started + self.settings.broker_start_timeout_s
        probe = self.client_settings()
        while (brokers := wait_for_broker(probe)) < len(self.nodes):
            if time.monotonic() > deadline:
                raise LocalBrokerError(
                    f"only {brokers} of {len(self.nodes)} brokers joined the cluster within "
                    f"{self.settings.broker_start_timeout_s:.0f}s; see the logs under "
                    f"{self.settings.data_dir / 'broker'}"
                )
            time.sleep(0.2)

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop every node; False when none was running."""
        running = [(node, pid) for node in self.nodes if (pid := self._pid(node)) is not None]
        if not running:
            self.say("no local broker running")
            return False
        # All at once: a node stopping alone would wait for a quorum its peers are leaving.
        for _, pid in running:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while any(alive(pid) for _, pid in running) and time.monotonic() < deadline:
            time.sleep(0.2)
        for node, pid in running:
            # A node of a cluster is named by its folder: the pid file is what was stopped.
            name = f"broker at {node.address}" if len(self.nodes) == 1 else f"broker {node.home}"
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
                self.say(f"{name} did not stop within {timeout_s:.0f}s; killed it")
            node.pid_file.unlink(missing_ok=True)
            self.say(f"{name} stopped (pid {pid})")
        return True

    # -- steps ------------------------------------------------------------------------------

    def _resolve_jars(self) -> None:
        try:
            fetch(RECIPE / "pom.xml", self.libs, f"Apache Kafka {self.version} jars",
                  "kafka_2.13-*.jar", properties={"kafka.version": self.version}, say=self.say)
        except (MavenError, MissingProgramError) as exc:
            raise LocalBrokerError(f"{exc} (or set ESTOP_BOOTSTRAP_SERVERS)") from exc

    def _format(self, java: str) -> None:
        """Render every node's server.properties; format the storage of nodes that have none,
        with the cluster id the formatted nodes already carry (or a new one)."""
        template = (RECIPE / "server.properties.template").read_text()
        secured: dict[str, object] = {}
        scram: list[str] = []
        if self.secure:
            user, password = self.settings.broker_admin_user, self._admin_password()
            template += (RECIPE / "security.properties.template").read_text()
            keys = tls.broker_tls(self.settings)
            secured = {"admin_user": user, "admin_password": password, "ca": keys.ca,
                       "keystore": keys.keystore, "keystore_password": keys.password}
            scram = ["--add-scram", f'{credentials.MECHANISM}=[name={user},password="{password}"]']
        voters = ",".join(f"{n.node_id}@localhost:{n.controller_port}" for n in self.nodes)
        # Internal topics (offsets, transactions) replicated like the data topics.
        internal = min(3, len(self.nodes))
        for node in self.nodes:
            node.home.mkdir(parents=True, exist_ok=True)
            node.properties.touch(mode=0o600)  # holds the admin's password when secured
            node.properties.write_text(template.format(
                **secured,
                node_id=node.node_id,
                voters=voters,
                broker_port=node.broker_port,
                controller_port=node.controller_port,
                log_dirs=node.kraft,
                internal_replication=internal,
                internal_min_isr=max(1, internal - 1),
            ))
        ids = {found for node in self.nodes if (found := _cluster_id(node)) is not None}
        if len(ids) > 1:
            raise LocalBrokerError(
                f"the nodes under {self.settings.data_dir / 'broker'} belong to different clusters "
                f"({', '.join(sorted(ids))}); remove that folder to start afresh"
            )
        if ids and self.secure != self.secured_marker.exists():
            raise LocalBrokerError(
                f"the broker data in {self.settings.data_dir / 'broker'} was formatted "
                f"{'without' if self.secure else 'with'} security; start it "
                f"{'without' if self.secure else 'with'} --secure (ESTOP_BROKER_SECURE), "
                "or stop it and remove that folder to start afresh")
        blank = [node for node in self.nodes if _cluster_id(node) is None]
        if not blank:
            return
        cluster_id = ids.pop() if ids else (
            self._storage_tool(java, ["random-uuid"]).strip().splitlines()[-1])
        for node in blank:
            self._storage_tool(java, ["format", "-t", cluster_id, "-c", str(node.properties), *scram])
        if self.secure:
            self.secured_marker.touch()

    def _admin_password(self) -> str:
        """The setting, else the password kept in the admin's credentials file, else a new one;
        the file is (re)written when it does not hold it, and then serves `estop security init`."""
        kept = credentials.password_from(credentials.read_env(self.admin_env()))
        if self.settings.broker_admin_password is not None:
            password = self.settings.broker_admin_password.get_secret_value()
            if not password or any(c in password for c in '"\\,]'):
                raise LocalBrokerError("ESTOP_BROKER_ADMIN_PASSWORD must be non-empty, without "
                                       "quotes, backslashes, commas or ']'")
        else:
            password = kept or credentials.new_password()
        if password != kept:
            credentials.write_env(self.admin_env(), credentials.principal_env(
                self._secured(self.settings.model_copy(
                    update={"bootstrap_servers": self.address, "topic_prefix": ""})),
                self.settings.broker_admin_user, password))
        return password

    def _storage_tool(self, java: str, args: list[str]) -> str:
        """Run Kafka's StorageTool. Its arguments (the admin's password among them when secured)
        go in a java argument file of mode 0600, deleted after: never on a command line, where
        any user of the machine would read them (``ps``)."""
        self.nodes[0].home.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".storage-tool-", suffix=".args", dir=self.nodes[0].home)
        try:
            with os.fdopen(handle, "w") as argfile:  # mkstemp: mode 0600
                argfile.write("".join(f"{_java_quoted(arg)}\n"
                                      for arg in ("kafka.tools.StorageTool", *args)))
            result = subprocess.run(
                [java, f"-Dlog4j2.configurationFile={RECIPE / 'log4j2.properties'}",
                 f"-Dkafka.logs.dir={self.nodes[0].logs}", "-cp", f"{self.libs}/*", f"@{name}"],
                capture_output=True, text=True, check=False)
        finally:
            Path(name).unlink(missing_ok=True)
        if result.returncode != 0:
            raise LocalBrokerError(f"kafka StorageTool {args[0]} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def _pid(self, node: BrokerNode) -> int | None:
        try:
            pid = int(node.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not alive(pid) or not _is_broker(pid):
            node.pid_file.unlink(missing_ok=True)
            return None
        return pid


def _java_quoted(arg: str) -> str:
    """One argument of a java argument file: quoted, its backslashes and quotes escaped."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _cluster_id(node: BrokerNode) -> str | None:
    """The cluster id a node's storage was formatted with; None when it is not formatted."""
    try:
        text = (node.kraft / "meta.properties").read_text()
    except FileNotFoundError:
        return None
    found = re.search(r"^cluster\.id=(\S+)", text, re.MULTILINE)
    return found[1] if found else None


def _is_broker(pid: int) -> bool:
    """The pid file may outlive the broker and its pid be reused by something else."""
    try:
        return b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid file

