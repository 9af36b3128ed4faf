"""A private Postfix instance for the outbound tests and the relay benchmark.

``with PostfixInstance(workdir, "127.0.5.102", 2525, mailboxes=["john@gamma.test"]) as pf:`` receives for
the mailboxes' domains into Maildirs under ``workdir/mail`` (virtual delivery, as ``nobody``);
``relayhost="[127.0.5.200]:2525"`` makes it relay everything else there (the benchmark's sender side).
``tls=(cert, key)`` with ``tls_level="may"`` or ``"encrypt"`` offers or demands STARTTLS.

Postfix is run as FIELD-NOTES describes: its own ``config_directory``, queue and data directories, no
chroot, ``maillog_file`` in the work directory; ``postfix -c DIR start`` and ``stop``. Start-up is
bounded (the SMTP port must answer 220 within 30 s) and ``stop`` always runs on exit.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"


def _master_cf(address: str, port: int) -> str:
    """Debian's master.cf without chroot, and smtpd listening on ``port``."""
    source = Path("/etc/postfix/master.cf")
    if not source.exists():
        source = Path("/usr/share/postfix/master.cf.dist")
    out = []
    for line in source.read_text().splitlines():
        fields = line.split()
        if line and not line[0].isspace() and not line.startswith("#") and len(fields) >= 8:
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"{address}:{port}"
            fields[4] = "n"  # no chroot: the instance lives in a temporary directory
            line = "  ".join(fields)
        out.append(line)
    return "\n".join(out) + "\n"


class PostfixInstance:
    """A Postfix that listens on ``address:port`` (see the module docstring)."""

    def __init__(
        self,
        workdir: Path,
        address: str,
        port: int,
        *,
        hostname: str = "mx.gamma.test",
        mailboxes: tuple[str, ...] | list[str] = (),
        relayhost: str = "",
        tls: tuple[str, str] | None = None,
        tls_level: str = "may",
        extra: dict[str, str] | None = None,
    ) -> None:
        self.dir = Path(workdir)
        self.address = address
        self.port = port
        self.hostname = hostname
        self.mailboxes = [m.lower() for m in mailboxes]
        self.relayhost = relayhost
        self.tls = tls
        self.tls_level = tls_level
        self.extra = extra or {}
        self.log_path = self.dir / "maillog"
        self.mail_dir = self.dir / "mail"
        self.started = False

    def main_cf(self) -> dict[str, str]:
        nobody = pwd.getpwnam("nobody")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.dir / "queue"),
            "data_directory": str(self.dir / "data"),
            "mail_owner": "postfix",
            "myhostname": self.hostname,
            "mydomain": self.hostname.partition(".")[2] or self.hostname,
            "myorigin": "$myhostname",
            "mydestination": "",
            # Postfix refuses an inet_interfaces address not configured on an interface (127.0.5.x is only
            # routed): listen everywhere by default, and bind the smtpd service to ADDRESS:PORT in master.cf.
            "inet_interfaces": "all",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.dir),
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtputf8_enable": "yes",
            "smtpd_banner": "$myhostname ESMTP",
            "smtp_tls_security_level": "none",
            "smtp_dns_support_level": "disabled",
            "disable_dns_lookups": "yes",
        }
        if self.mailboxes:
            domains = sorted({m.rpartition("@")[2] for m in self.mailboxes})
            maps = ", ".join(f"{m}={m.rpartition('@')[2]}/{m.rpartition('@')[0]}/" for m in self.mailboxes)
            settings.update(
                virtual_mailbox_domains=" ".join(domains),
                virtual_mailbox_base=str(self.mail_dir),
                virtual_mailbox_maps=f"inline:{{ {maps} }}",
                virtual_uid_maps=f"static:{nobody.pw_uid}",
                virtual_gid_maps=f"static:{nobody.pw_gid}",
                virtual_minimum_uid="1",
            )
        if self.relayhost:
            settings["relayhost"] = self.relayhost
        if self.tls:
            settings.update(
                smtpd_tls_cert_file=self.tls[0],
                smtpd_tls_key_file=self.tls[1],
                smtpd_tls_security_level=self.tls_level,
                smtpd_tls_loglevel="1",
            )
        settings.update(self.extra)
        return settings

    def start(self) -> PostfixInstance:
        """Write the configuration, start the instance, wait for its 220 banner."""
        for sub in ("queue", "data", "mail"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        postfix = pwd.getpwnam("postfix")
        os.chown(self.dir / "data", postfix.pw_uid, postfix.pw_gid)
        nobody = pwd.getpwnam("nobody")
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        (self.dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.main_cf().items()))
        (self.dir / "master.cf").write_text(_master_cf(self.address, self.port))
        self.log_path.touch()
        result = subprocess.run([POSTFIX, "-c", str(self.dir), "start"], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"postfix did not start: {result.stdout}{result.stderr}\n{self.log()}")
        self.started = True
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.address, self.port), timeout=2) as s:
                    if s.recv(512).startswith(b"220"):
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postfix on {self.address}:{self.port} never answered:\n{self.log()}")

    def stop(self) -> None:
        """``postfix stop``; bounded, and harmless when it is not running."""
        if self.started:
            subprocess.run([POSTFIX, "-c", str(self.dir), "stop"], capture_output=True, timeout=60)
            self.started = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def maildir_files(self, address: str) -> list[Path]:
        local, _, domain = address.lower().rpartition("@")
        folder = self.mail_dir / domain / local / "new"
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def queue_empty(self) -> bool:
        """True when Postfix holds no message (active, incoming, deferred, maildrop all empty)."""
        queue = self.dir / "queue"
        return not any(any(True for _ in (queue / d).rglob("*") if _.is_file()) for d in ("incoming", "active", "deferred", "maildrop"))

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
