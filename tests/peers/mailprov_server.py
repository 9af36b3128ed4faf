"""Run the whole mailprov MTA as a real process on loopback, for end-to-end tests.

Reused by the SMTP, outbound, POP3 and reliability tests::

    from tests.peers.mailprov_server import MailprovTree, run_mailprov

    tree = MailprovTree.create(hostname="mx.beta.test", domains=["beta.test"], ip="127.0.3.20")
    tree.add_user("john@beta.test", "secret")
    server = run_mailprov(tree.config_path)        # waits until every listener answers 220
    ...                                            # smtplib.SMTP(tree.ip, tree.ports["smtp"])
    server.stop()                                  # SIGTERM, then SIGKILL of the process group

or with the pytest fixture ``mailprov_server`` (a factory that stops every server it started). The tree
lives in a private temporary directory (mode 0700, as ``mkdtemp`` makes it): when the tests run as root,
``mailprov serve`` binds and then drops to ``server.user`` (``nobody`` here), which must be able to read
the users file and write the queue and mail directories, so the tree is handed to that user as a
deployment hands it the service's directories (``chown``; ``add_user`` keeps it so). Nothing is made
world-readable: the server imports everything it needs before the drop (mailprov.privileges).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailprov import config as config_mod
from mailprov.users import AliasDB, UserDB

RUN_USER = "nobody"


def free_port(host: str) -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def render_toml(data: dict[str, dict[str, Any]]) -> str:
    """A minimal TOML writer for configuration dictionaries (one table per section)."""
    out = []
    for section, values in data.items():
        out.append(f"[{section}]")
        out += [f"{k} = {config_mod.toml_value(v)}" for k, v in values.items()]
        out.append("")
    return "\n".join(out)


@dataclass
class MailprovTree:
    """A configuration file and its directories under one temporary root."""

    root: Path
    config_path: Path
    ip: str
    ports: dict[str, int]
    hostname: str
    domains: list[str]
    data: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        *,
        hostname: str = "mx.beta.test",
        domains: list[str] | tuple[str, ...] = ("beta.test",),
        ip: str = "127.0.3.10",
        root: Path | None = None,
        **sections: dict[str, Any],
    ) -> MailprovTree:
        """Write ``mailprov.toml`` listening on ``ip`` (free ports for 25/587/465); ``sections`` override
        or extend tables, e.g. ``smtp={"trusted_networks": []}``, ``queue={"retry_min": 1}``."""
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="mailprov-test-", dir="/tmp"))
        ports = {
            "smtp": free_port(ip),
            "submission": free_port(ip),
            "submissions": free_port(ip),
            "imap": free_port(ip),
            "imaps": free_port(ip),
        }
        data: dict[str, dict[str, Any]] = {
            "server": {"hostname": hostname, "domains": list(domains), "user": RUN_USER, "log_level": "info"},
            "paths": {
                "queue_dir": str(root / "queue"),
                "mail_dir": str(root / "mail"),
                "state_dir": str(root / "state"),
                "users_file": str(root / "etc" / "users"),
                "aliases_file": str(root / "etc" / "aliases"),
                "log_file": "",
            },
            "smtp": {
                "listen": [f"{ip}:{ports['smtp']}"],
                "submission_listen": [f"{ip}:{ports['submission']}"],
                "submissions_listen": [f"{ip}:{ports['submissions']}"],
                "auth_failure_delay": 0.1,
            },
            "queue": {"scan_interval": 0.5},
            "pop3": {"listen": [f"{ip}:{free_port(ip)}"], "tls_listen": [f"{ip}:{free_port(ip)}"]},
            "imap": {"listen": [f"{ip}:{ports['imap']}"], "tls_listen": [f"{ip}:{ports['imaps']}"]},
        }
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        (root / "etc").mkdir(exist_ok=True)
        config_path = root / "mailprov.toml"
        config_path.write_text(render_toml(data))
        config_mod.load(config_path)  # fail early, with the key named, on a bad override
        tree = cls(root, config_path, ip, ports, hostname, list(domains), data)
        tree.chown()
        return tree

    @property
    def config(self) -> config_mod.Config:
        return config_mod.load(self.config_path)

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    def add_user(self, address: str, password: str) -> None:
        """Create a user (argon2id hash) readable by the service user."""
        UserDB(self.root / "etc" / "users").add(address, password)
        self.chown()

    def add_alias(self, alias: str, *targets: str) -> None:
        """Create an alias."""
        AliasDB(self.root / "etc" / "aliases").add(alias, list(targets))
        self.chown()

    def chown(self) -> None:
        """When root: hand the tree to the service user, ``server.user`` (``mailprov serve`` drops to it)."""
        if os.geteuid() != 0:
            return
        user = pwd.getpwnam(self.data["server"]["user"])
        for dirpath, _dirnames, filenames in os.walk(self.root):
            os.chown(dirpath, user.pw_uid, user.pw_gid)
            for name in filenames:
                with contextlib.suppress(FileNotFoundError):
                    os.chown(os.path.join(dirpath, name), user.pw_uid, user.pw_gid)

    def maildir_files(self, address: str, sub: str = "new") -> list[Path]:
        """Message files in a user's Maildir (``new`` by default)."""
        local, _, domain = address.lower().rpartition("@")
        folder = self.mail_dir / domain / local / sub
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def queue_files(self, state: str) -> list[Path]:
        """Queue files in one state directory (temporary files excluded)."""
        folder = self.queue_dir / state
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class MailprovProcess:
    """A running ``mailprov serve``."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the server wrote to stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group (crash simulation) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL the group if it does not exit in time. Returns the exit code.
        Fails when the server imported a module after dropping privileges (mailprov.privileges logs it):
        run from code its user cannot read, that import would have failed."""
        self._stop(timeout)
        late = [line for line in self.log().splitlines() if "after dropping privileges" in line]
        assert not late, "modules imported after the privilege drop (add them to mailprov.privileges.PRELOAD):\n" + "\n".join(late)
        return self.proc.returncode

    def _stop(self, timeout: float) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # stray children of an exited leader


def wait_for_banner(
    host: str, port: int, deadline: float, proc: subprocess.Popen[bytes] | None = None, *, tls: bool = False, greeting: bytes = b"220"
) -> None:
    """Poll until ``host:port`` answers with a banner starting with ``greeting`` (SMTP's 220 by default,
    bounded by ``deadline``); for an implicit-TLS port (``tls``) a completed TLS handshake is the proof."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before {host}:{port} answered")
        try:
            with socket.create_connection((host, port), timeout=2, source_address=(host, 0)) as s:
                if tls:
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    with context.wrap_socket(s, server_hostname=host):
                        return
                banner = s.recv(512)
                if banner.startswith(greeting):
                    return
                last = RuntimeError(f"unexpected banner {banner!r}")
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not answer {greeting!r} in time: {last}")


def run_mailprov(config_path: Path, *, services: str = "smtp", timeout: float = 30.0, env: dict[str, str] | None = None) -> MailprovProcess:
    """Start ``mailprov serve SERVICES -c CONFIG`` in its own process group and wait until every SMTP
    listener in the configuration answers. Raises (after stopping it) if it does not come up."""
    config = config_mod.load(config_path)
    log_path = Path(config_path).with_suffix(f".{services}.log")
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from mailprov.cli import main; main()", "serve", services, "-c", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    server = MailprovProcess(proc, log_path)
    deadline = time.monotonic() + timeout
    try:
        if services in ("smtp", "all"):
            for address in config.smtp.listen + config.smtp.submission_listen:
                host, port = config_mod.parse_hostport(address, key="smtp")
                wait_for_banner(host, port, deadline, proc)
            for address in config.smtp.submissions_listen:
                host, port = config_mod.parse_hostport(address, key="smtp")
                wait_for_banner(host, port, deadline, proc, tls=True)
        if services in ("imap", "all"):
            for address in config.imap.listen:
                host, port = config_mod.parse_hostport(address, key="imap")
                wait_for_banner(host, port, deadline, proc, greeting=b"* OK")
    except BaseException as exc:
        server._stop(15.0)
        raise RuntimeError(f"mailprov did not start: {exc}\n--- server log ---\n{server.log()}") from None
    return server


def children(pid: int) -> list[int]:
    """The process ids whose parent is ``pid`` (a master's workers)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def worker_holding(server_pid: int, server: tuple[str, int], client: tuple[str, int]) -> int:
    """The pid of the worker process (a child of ``server_pid``) holding the server end of the TCP
    connection ``client`` -> ``server`` (from /proc/net/tcp and each worker's file descriptors)."""

    def hexaddr(ip: str, port: int) -> str:
        return "".join(f"{int(b):02X}" for b in reversed(ip.split("."))) + f":{port:04X}"

    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == hexaddr(*server) and fields[2] == hexaddr(*client):
            inode = fields[9]
    assert inode, f"no server socket for {client} -> {server}"
    for pid in children(server_pid):
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        if f"socket:[{inode}]" in links:
            return pid
    raise AssertionError(f"no worker of {server_pid} holds socket {inode}")
