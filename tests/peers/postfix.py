"""A private Postfix instance for tests and benchmarks (``postfix -c DIR start`` / ``stop``).

Two uses:

* a *relaying peer*: it accepts mail on a loopback address and relays everything to ``relayhost``
  (our server), the way a real MTA on the internet would send to us;
* the *benchmark anchor*: it accepts mail for ``domains`` and delivers into Maildir with ``virtual(8)``
  (``virtual_mailbox_base = ROOT/mail``, the same ``DOMAIN/LOCAL/`` layout as mailprov).

Everything lives under one root (config, queue, data, log); all services run unchrooted; the log goes to
``ROOT/maillog`` (``maillog_file``). Start-up errors only reach a terminal, so ``start`` runs the command
under ``script`` and raises with its output.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixPeer:
    """One private Postfix instance under ``root``."""

    def __init__(
        self,
        *,
        ip: str,
        port: int,
        hostname: str = "peer.postfix.test",
        relayhost: str = "",
        domains: tuple[str, ...] = (),
        users: tuple[str, ...] = (),
        root: Path | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.ip = ip
        self.port = port
        self.root = root or Path(tempfile.mkdtemp(prefix="postfix-peer-", dir="/tmp"))
        self.root.chmod(0o755)
        self.config_dir = self.root / "etc"
        self.mail_dir = self.root / "mail"
        self.log_path = self.root / "maillog"
        self.hostname = hostname
        self.relayhost = relayhost
        self.domains = domains
        self.users = users
        self.extra = extra or {}
        self.started = False

    def _main_cf(self) -> str:
        owner = pwd.getpwnam("postfix")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.root / "spool"),
            "data_directory": str(self.root / "data"),
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": "/tmp, /var, /work",
            "myhostname": self.hostname,
            "mydomain": self.hostname.split(".", 1)[-1],
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",  # must name a configured interface; master.cf binds self.ip
            "smtp_bind_address": self.ip,  # connections to the relayhost come from our address
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": self.relayhost,
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtp_dns_support_level": "disabled" if self.relayhost else "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtputf8_enable": "yes",
            "message_size_limit": "52428800",
            "maximal_queue_lifetime": "1h",
            "default_process_limit": "100",
            "smtpd_client_connection_count_limit": "100",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            "smtpd_peername_lookup": "no",
            "smtp_connect_timeout": "5s",
            "bounce_queue_lifetime": "1h",
            "shlib_directory": "/usr/lib/postfix",
        }
        if self.domains:
            settings.update(
                {
                    "virtual_mailbox_domains": ", ".join(self.domains),
                    "virtual_mailbox_base": str(self.mail_dir),
                    "virtual_mailbox_maps": f"texthash:{self.config_dir / 'vmailbox'}",
                    "virtual_uid_maps": f"static:{owner.pw_uid}",
                    "virtual_gid_maps": f"static:{owner.pw_gid}",
                    "virtual_minimum_uid": "1",
                    "virtual_mailbox_limit": "0",
                }
            )
        settings.update(self.extra)
        return "".join(f"{k} = {v}\n" for k, v in settings.items() if v != "" or k in ("mydestination", "relayhost", "alias_maps"))

    def configure(self) -> None:
        """Write main.cf, master.cf and the mailbox map; create the directories with Postfix's owners."""
        owner = pwd.getpwnam("postfix")
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "main.cf").write_text(self._main_cf())
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(listen=f"{self.ip}:{self.port}"))
        (self.config_dir / "vmailbox").write_text("".join(f"{u} {u.split('@')[1]}/{u.split('@')[0]}/\n" for u in self.users))
        for name in ("dynamicmaps.cf", "postfix-files"):
            with contextlib.suppress(FileNotFoundError):
                shutil.copy(f"/etc/postfix/{name}", self.config_dir / name)
        (self.root / "spool").mkdir(exist_ok=True)  # postfix-script creates the sub-directories
        (self.root / "data").mkdir(exist_ok=True)
        os.chown(self.root / "data", owner.pw_uid, owner.pw_gid)
        self.mail_dir.mkdir(exist_ok=True)
        os.chown(self.mail_dir, owner.pw_uid, owner.pw_gid)
        self.log_path.touch()

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = " ".join(["/usr/sbin/postfix", "-c", str(self.config_dir), *args])
        return subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, timeout: float = 30.0) -> None:
        """Configure, start, and wait until the SMTP port answers 220."""
        self.configure()
        result = self._postfix("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix start failed: {result.stdout}{result.stderr}\n{self.log()}")
        self.started = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.ip, self.port), timeout=2) as s:
                if s.recv(256).startswith(b"220"):
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postfix did not answer on {self.ip}:{self.port}\n{self.log()}")

    def stop(self) -> None:
        """Stop the instance (``postfix stop``, then kill what is left of its master)."""
        if not self.started:
            return
        self._postfix("stop")
        pid_file = self.root / "spool" / "pid" / "master.pid"
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int(pid_file.read_text().strip())
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, 9)
        self.started = False

    def flush(self) -> None:
        """Ask the queue manager to retry deferred mail now."""
        self._postfix("flush")

    def queue_empty(self) -> bool:
        """Whether no message is left in Postfix's queues."""
        for sub in ("incoming", "active", "deferred", "maildrop"):
            folder = self.root / "spool" / sub
            if folder.is_dir() and any(f for _, _, files in os.walk(folder) for f in files):
                return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostfixPeer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
