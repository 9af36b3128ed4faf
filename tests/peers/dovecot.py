"""Private Dovecot POP3 and IMAP instances for tests and benchmarks (``dovecot -c FILE``, ``doveadm -c FILE stop``).

Users come from a passwd-file with PLAIN passwords; mail lives in ``ROOT/mail/DOMAIN/LOCAL`` (Maildir),
the same layout as mailprov's ``paths.mail_dir``, so both servers can be pointed at alike mailboxes.
Plaintext login is allowed (loopback only): the benchmark compares the servers without TLS.
Dovecot refuses to run mail processes as root, so they run as Debian's ``mail`` user and
:meth:`DovecotPOP3.own` hands the mail tree to it (call it again after adding messages).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MAIL_USER = "mail"
# One server in both of Dovecot's configuration languages: 2.3 (Debian 12) and 2.4 (Debian 13), which renamed
# settings and refuses a file that does not start with dovecot_config_version. Each serves one protocol on
# {host}:{port}, users from a passwd-file, Maildir++ at ROOT/mail/DOMAIN/LOCAL; {protocol} is pop3 or imap.
_SERVER = """\
{head}base_dir = {root}/run
state_dir = {root}/state
instance_name = mailprov-test-{protocol}-{port}
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = {protocol}
listen = {host}
ssl = no
first_valid_uid = 1
auth_mechanisms = plain
{users}service {protocol}-login {{
  inet_listener {protocol} {{
    {address} = {host}
    port = {port}
  }}
  inet_listener {protocol}s {{
    port = 0
  }}
  process_min_avail = 1
}}
service anvil {{
  chroot =
}}
"""
# Dovecot 2.4 (https://doc.dovecot.org/2.4.0/installation/upgrade/2.3-to-2.4.html): the two version settings
# come first (2.4.0: the defaults and storage formats of 2.4.0, whichever 2.4.x runs); mail_location split
# into mail_driver/mail_path with %{user | domain} for %d; disable_plaintext_auth became auth_allow_cleartext;
# passdb/userdb are named blocks with typed settings; a listener's address is its listen; pop3_uidl_format's
# %f is %{filename}. Its maildir driver defaults to the fs layout, so Maildir++ is asked for.
_VERSIONS = {
    (2, 3): {
        "head": "",
        "address": "address",
        "uidl": "%f",
        "users": """\
disable_plaintext_auth = no
mail_location = maildir:{root}/mail/%d/%n
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%d/%n
}}
""",
    },
    (2, 4): {
        "head": "dovecot_config_version = 2.4.0\ndovecot_storage_version = 2.4.0\n",
        "address": "listen",
        "uidl": "%{filename}",
        "users": """\
auth_allow_cleartext = yes
mail_driver = maildir
mail_path = {root}/mail/%{{user | domain}}/%{{user | username}}
mailbox_list_layout = maildir++
passdb passwd-file {{
  passwd_file_path = {root}/passwd
  default_password_scheme = PLAIN
}}
userdb static {{
  fields {{
    uid = {uid}
    gid = {gid}
    home = {root}/home/%{{user | domain}}/%{{user | username}}
  }}
}}
""",
    },
}

# IMAP on the Maildir++ layout mailprov's IMAP store writes (mailprov/imap/store.py): '.' separator, no
# prefix, INBOX the root Maildir, the four special-use folders marked as mailprov marks them (alike in both).
_IMAP = """\
namespace inbox {
  inbox = yes
  separator = .
  prefix =
  mailbox Sent {
    special_use = \\Sent
  }
  mailbox Drafts {
    special_use = \\Drafts
  }
  mailbox Trash {
    special_use = \\Trash
  }
  mailbox Junk {
    special_use = \\Junk
  }
}
"""


def dovecot_version() -> tuple[int, int]:
    """The installed Dovecot's (major, minor), from ``dovecot --version`` ("2.3.19.1 (9b53102964)",
    "2.4.1-4 (7d8c0e5759)")."""
    out = subprocess.run([_program("dovecot"), "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    major, minor = (int(part) for part in re.match(r"(\d+)\.(\d+)", out.strip()).groups())  # type: ignore[union-attr]
    return major, minor


def config_text(protocol: str, version: tuple[int, int], **values: object) -> str:
    """The configuration file for ``protocol`` (pop3 or imap) on Dovecot ``version`` (2.4 and later are
    written as 2.4); ``values`` fill in root, host, port, uid and gid."""
    spelling = _VERSIONS[(2, 4) if version >= (2, 4) else (2, 3)]
    users = spelling["users"].format(**values)
    text = _SERVER.format(head=spelling["head"], users=users, address=spelling["address"], protocol=protocol, **values)
    return text + (f"pop3_uidl_format = {spelling['uidl']}\n" if protocol == "pop3" else _IMAP)


class DovecotPOP3:
    """Dovecot serving POP3 on ``host:port`` for ``users`` ({address: password}). A password that is
    an argon2id PHC string (``$argon2id$...``, as in mailprov's users file) is used as that hash, so
    both servers can check the same hashes. ``extra`` is appended to the configuration (settings that
    are spelled alike in 2.3 and 2.4, such as process limits)."""

    PROTOCOL = "pop3"
    GREETING = b"+OK"

    def __init__(self, root: Path, host: str, port: int, users: dict[str, str], *, extra: str = "") -> None:
        self.root = root
        self.host, self.port = host, port
        self.users = users
        self.extra = extra
        self.conf = root / "dovecot.conf"
        self.mail_dir = root / "mail"

    @staticmethod
    def available() -> bool:
        """Whether the dovecot and doveadm programs are installed."""
        return bool(shutil.which("dovecot") or Path("/usr/sbin/dovecot").exists())

    def maildir(self, address: str) -> Path:
        """The Maildir Dovecot reads for ``address``."""
        local, _, domain = address.rpartition("@")
        return self.mail_dir / domain / local

    def own(self) -> None:
        """Give the mail tree to the ``mail`` user Dovecot's mail processes run as."""
        user = pwd.getpwnam(MAIL_USER)
        for dirpath, _dirnames, filenames in os.walk(self.root / "mail"):
            os.chown(dirpath, user.pw_uid, user.pw_gid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), user.pw_uid, user.pw_gid)
        for sub in ("home",):
            os.chown(self.root / sub, user.pw_uid, user.pw_gid)

    def start(self, timeout: float = 30) -> DovecotPOP3:
        """Write the configuration, start Dovecot, wait (bounded) until the port answers."""
        for sub in ("run", "state", "mail", "home"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # Dovecot's auth (dovecot), login (dovenull) and mail (mail) processes must reach files under
        # root: let others traverse root and its temporary-directory ancestors (mode 0700 by default).
        os.chmod(self.root, 0o755)
        tmp = Path(tempfile.gettempdir()).resolve()
        for parent in self.root.resolve().parents:
            if parent == tmp or tmp not in parent.parents:
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
        user = pwd.getpwnam(MAIL_USER)
        self.own()
        (self.root / "passwd").write_text("".join(f"{a}:{_scheme(p)}\n" for a, p in self.users.items()))
        values = {"root": self.root, "host": self.host, "port": self.port, "uid": user.pw_uid, "gid": user.pw_gid}
        self.conf.write_text(config_text(self.PROTOCOL, dovecot_version(), **values) + self.extra)
        # Dovecot daemonizes; its children inherit the standard streams, so never capture them with pipes.
        with open(self.root / "start.log", "wb") as out:
            done = subprocess.run([_program("dovecot"), "-c", str(self.conf)], stdout=out, stderr=out, timeout=30)
        if done.returncode:
            raise RuntimeError(f"dovecot -c {self.conf} failed: {(self.root / 'start.log').read_text()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1) as sock:
                if sock.recv(100).startswith(self.GREETING):
                    return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"dovecot did not answer on {self.host}:{self.port}; see {self.root}/dovecot.log")

    def stop(self) -> None:
        """``doveadm -c FILE stop`` (bounded)."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [_program("doveadm"), "-c", str(self.conf), "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30
            )
        pid_file = self.root / "run" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> DovecotPOP3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DovecotIMAP(DovecotPOP3):
    """Dovecot serving IMAP (``dovecot-imapd``) on ``host:port`` over the same mail tree layout."""

    PROTOCOL = "imap"
    GREETING = b"* OK"


def _program(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _scheme(password: str) -> str:
    return f"{{ARGON2ID}}{password}" if password.startswith("$argon2id$") else f"{{PLAIN}}{password}"
