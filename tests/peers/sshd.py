"""A private OpenSSH server (Debian's ``openssh-server``) on a loopback address: a real deployment target.

It runs in the foreground (``sshd -D -e``) as a child of the test process, with its own host key, a
generated client key as the only authorized key, ``UsePAM no`` and ``StrictModes no`` (keys live in a
temporary directory) and the sftp subsystem Ansible needs for file transfer. Log in as the user running
the tests (root on the test machines) with :attr:`SSHD.client_key`.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.peers import stop_process

SSHD_BIN = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
START_TIMEOUT = 20.0  # seconds: an upper bound on start-up, not an assertion on speed


class SSHD:
    """One sshd instance listening on ``address:port``; use as a context manager or start()/stop()."""

    def __init__(self, workdir: Path, address: str = "127.0.6.2", port: int = 2222) -> None:
        self.workdir = Path(workdir)
        self.address = address
        self.port = port
        self.user = getpass.getuser()
        self.host_key = self.workdir / "ssh_host_ed25519_key"
        self.client_key = self.workdir / "client_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.config = self.workdir / "sshd_config"
        self.log = self.workdir / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _keygen(self, path: Path) -> None:
        if not path.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mailprov-test", "-f", str(path)], check=True)

    def write_config(self) -> None:
        """Generate keys, known_hosts and sshd_config in the work directory."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._keygen(self.host_key)
        self._keygen(self.client_key)
        host_pub = (self.host_key.with_suffix(".pub")).read_text().split()
        self.known_hosts.write_text(f"[{self.address}]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        authorized = self.workdir / "authorized_keys"
        shutil.copy(self.client_key.with_suffix(".pub"), authorized)
        self.config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.address}:{self.port}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    f"AllowUsers {self.user}",
                    "MaxStartups 50:30:100",
                    "MaxSessions 50",
                    "LogLevel ERROR",
                    f"Subsystem sftp {SFTP_SERVER}",
                    "",
                ]
            )
        )

    def start(self) -> SSHD:
        """Start sshd and wait (bounded) until it accepts TCP connections."""
        self.write_config()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        check = subprocess.run([SSHD_BIN, "-t", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd rejected its configuration: {check.stderr.strip()}")
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self._log_handle = log
        self._proc = subprocess.Popen([SSHD_BIN, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self._proc.returncode}: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection((self.address, self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen on {self.address}:{self.port} within {START_TIMEOUT}s")

    def stop(self) -> None:
        """Stop sshd (SIGTERM, then SIGKILL after a bounded wait)."""
        if self._proc:
            stop_process(self._proc, 10)
        self._proc = None
        handle = getattr(self, "_log_handle", None)
        if handle:
            handle.close()

    def ansible_vars(self) -> dict[str, str]:
        """Inventory variables that reach this server with Ansible's ``ssh`` connection plugin."""
        return {
            "ansible_host": self.address,
            "ansible_port": str(self.port),
            "ansible_user": self.user,
            "ansible_connection": "ssh",
            "ansible_ssh_private_key_file": str(self.client_key),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
        }

    def __enter__(self) -> SSHD:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def environment_without_agent() -> dict[str, str]:
    """The current environment minus an SSH agent, so only the generated key is offered."""
    env = dict(os.environ)
    env.pop("SSH_AUTH_SOCK", None)
    return env
