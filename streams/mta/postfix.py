"""A private Postfix instance: ``postfix -c <data>/mta/etc start``.

What makes a second Postfix run beside (or without) the system one on Debian, found by trying:
* run as root, ``postfix -c DIR`` needs no ``alternate_config_directories`` entry in
  /etc/postfix/main.cf (that list only guards the set-gid commands run by other users);
* ``mail_owner = postfix`` and ``setgid_group = postdrop`` (both made by Debian's package); the
  queue and data directories are created by ``postfix start`` itself (``postfix check``);
* every service runs unchrooted (the chroot column is ``n``), so no files need copying;
* ``maillog_file`` writes the log through ``postlogd`` to a file of our own, which must sit under
  a directory listed in ``maillog_file_prefixes`` (default only /var and /dev/stdout);
* ``enable_long_queue_ids = yes``: queue ids are not reused within a lifetime of the queue (the
  adapter still checks each message's own ``X-Estop-Message-Id`` header before deleting it);
* a ``header_checks`` INFO rule logs each message's ``X-Estop-Message-Id`` with its queue id, so
  the log alone tells which message a queue id carries;
* ``relayhost`` is the receiver; deferred mail is retried every 10 to 20 s (cheap while the
  receiver is down), and `estop mta receiver start` flushes the queue (``postqueue -f``);
* mail to ``REFUSED_DOMAIN`` goes to the receiver's refusing half instead (``transport_maps``:
  LMTP over a socket in the receiver's folder, so it needs no port), which answers every
  recipient ``550 5.1.1``: Postfix bounces it, as it bounces an address that does not exist."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from streams.mta.exceptions import MtaError
from streams.processes import port_open
from streams.settings import Settings

POSTFIX = "/usr/sbin/postfix"
POSTSUPER = "/usr/sbin/postsuper"
POSTQUEUE = "/usr/sbin/postqueue"
POSTCAT = "/usr/sbin/postcat"
POSTLOG = "/usr/sbin/postlog"
DAEMONS = "/usr/lib/postfix/sbin"
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; queue_directory/private/<service> must fit
START_TIMEOUT_S = 30.0
HOST = "127.0.0.1"
# Addresses the receiver refuses (550 5.1.1 user unknown): a campaign whose audience holds some
# bounces exactly that share, through Postfix (the bounce guardrail's test, a demo of a wrong list).
REFUSED_DOMAIN = "refused.estop.test"


def refusing_socket(home: Path) -> Path:
    """Where the receiver's refusing half listens (LMTP): under the receiver's folder."""
    return home.resolve() / "receiver" / "refusing.sock"


MASTER_CF = """\
{host}:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
lmtp      unix  - - n - - lmtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
# Written by `estop mta start` on every start; edits are overwritten.
compatibility_level = 3.6
queue_directory = {spool}
data_directory = {data}
command_directory = /usr/sbin
daemon_directory = {daemons}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {log}
maillog_file_prefixes = {home}
myhostname = mta.estop.test
mydomain = estop.test
myorigin = estop.test
mydestination =
local_transport = error:local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [{host}]:{receiver_port}
transport_maps = inline:{{ {refused_domain}=lmtp:unix:{refusing} }}
smtp_dns_support_level = disabled
enable_long_queue_ids = yes
header_checks = regexp:{etc}/header_checks
queue_run_delay = 10s
minimal_backoff_time = 10s
maximal_backoff_time = 20s
smtp_connect_timeout = 2s
default_destination_concurrency_limit = 20
default_process_limit = 50
biff = no
"""

HEADER_CHECKS = "/^X-Estop-Message-Id:/ INFO\n"


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Messages in Postfix's queues, by queue name (incoming, active, deferred, hold)."""

    by_queue: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_queue.values())


class PostfixInstance:
    def __init__(self, home: Path, port: int, receiver_port: int) -> None:
        self.home = home.resolve()
        self.port = port
        self.receiver_port = receiver_port
        self.etc = self.home / "etc"
        self.spool = self.home / "spool"
        self.data = self.home / "data"
        self.log_path = self.home / "log" / "postfix.log"

    @classmethod
    def from_settings(cls, settings: Settings) -> PostfixInstance:
        return cls(settings.mta_home, settings.mta_port, settings.mta_receiver_port)

    @property
    def configured(self) -> bool:
        return (self.etc / "main.cf").exists()

    def _run(self, *args: str, stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120,
                                  check=False)
        except FileNotFoundError as exc:
            raise MtaError(f"{args[0]} is missing: install Debian's postfix package "
                           "(make system-test)") from exc
        if check and done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise MtaError(f"{Path(args[0]).name} failed: {detail[-1] if detail else done.returncode}")
        return done

    def command(self, tool: str, *args: str, stdin: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Postfix tool against this instance (``-c`` its config directory)."""
        return self._run(tool, "-c", str(self.etc), *args, stdin=stdin, check=check)

    # -- lifecycle -----------------------------------------------------------------------------

    def configure(self) -> None:
        if not Path(POSTFIX).exists():
            raise MtaError(f"{POSTFIX} is missing: install Debian's postfix package (make system-test)")
        longest = max(str(self.spool / "private" / "proxywrite"), str(refusing_socket(self.home)),
                      key=len)
        if len(longest) > SOCKET_PATH_MAX:
            raise MtaError(f"the MTA folder {self.home} is too deep for Postfix's sockets "
                           f"({len(longest)} > {SOCKET_PATH_MAX} characters); set ESTOP_MTA_DIR")
        for folder in (self.etc, self.spool, self.data, self.log_path.parent):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in [self.home, *self.home.parents]:
            if not folder.stat().st_mode & stat.S_IXOTH:
                raise MtaError(f"Postfix's own user cannot reach {self.home}: {folder} is not "
                               "searchable by others (chmod o+x it, or set ESTOP_MTA_DIR)")
        shutil.chown(self.data, "postfix")
        values = {"spool": self.spool, "data": self.data, "daemons": DAEMONS, "log": self.log_path,
                  "home": self.home, "host": HOST, "port": self.port,
                  "receiver_port": self.receiver_port, "etc": self.etc,
                  "refused_domain": REFUSED_DOMAIN, "refusing": refusing_socket(self.home)}
        (self.etc / "main.cf").write_text(MAIN_CF.format(**values))
        (self.etc / "master.cf").write_text(MASTER_CF.format(**values))
        (self.etc / "header_checks").write_text(HEADER_CHECKS)

    def running(self) -> bool:
        return self.configured and self.command(POSTFIX, "status", check=False).returncode == 0

    def start(self) -> None:
        if self.running():
            return
        self.configure()
        self.command(POSTFIX, "start")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(self.port, HOST):
            if time.monotonic() > deadline:
                raise MtaError(f"Postfix started but does not answer on {HOST}:{self.port} "
                               f"(see {self.log_path})")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.running():
            self.command(POSTFIX, "stop")

    def flush(self) -> None:
        """Try every deferred message again now (``postqueue -f``)."""
        self.command(POSTQUEUE, "-f")

    def queue(self) -> list[dict[str, object]]:
        """The queued messages, as ``postqueue -j`` lists them."""
        out = self.command(POSTQUEUE, "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def counts(self) -> QueueCounts:
        by_queue: dict[str, int] = {}
        for entry in self.queue():
            name = str(entry["queue_name"])
            by_queue[name] = by_queue.get(name, 0) + 1
        return QueueCounts(by_queue)
