"""The systemd lab: Debian 12 containers booted with systemd as PID 1, each a deployment target over SSH.

A container here is what a fresh VPS is: a minimal Debian (``mmdebstrap --variant=minbase`` with
systemd-sysv, dbus, openssh-server and python3, nothing else), booted by ``systemd-nspawn -b`` so that
systemd runs as its PID 1, reached over SSH as root. The root file system is built once and cached under
/var/tmp (``IMAGE_CACHE``); each container boots a ``cp -a`` copy of it. The image also holds apt's
package lists and, downloaded but not installed, the .debs of the packages the roles install
(python3-venv, openssl) and of exim4 (a resident MTA), so those installs need no network.

The containers share this machine's network namespace (``systemd-nspawn`` without ``--private-network``:
it needs no bridge, and works where the tests run, inside containers too). So each container's sshd is
configured, before boot, to listen on the container's own loopback address only (127.0.9.10, ...), and
the mail services bind that address too: the real ports 25, 587, 465, 110 and 995 on every host.

Proven commands (../shared/FIELD-NOTES.md): ``--register=no`` (no system bus on the test machine) and
``--keep-unit``; commands inside run through ``nsenter`` into the leader's namespaces; SIGTERM to
systemd-nspawn powers the container off cleanly.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import require_programs

IMAGE_CACHE = Path(os.environ.get("MAILPROV_SYSTEMD_LAB_CACHE", "/var/tmp/mailprov-systemd-lab"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# Installed in the image: what a minimal VPS has (init, D-Bus, sshd, the python Ansible needs).
IMAGE_PACKAGES = ("systemd-sysv", "dbus", "openssh-server", "python3")
# Downloaded into apt's cache only: the roles install the first two themselves; exim4 plays the resident MTA.
CACHED_PACKAGES = ("python3-venv", "openssl", "exim4-daemon-light")
# Not 22: the network is shared, and any other booted Debian on this machine whose openssh-server starts
# (another suite's fresh machine, say) listens on 0.0.0.0:22 and would answer for every address.
SSH_PORT = 2209
BOOT_TIMEOUT = 90.0  # seconds: upper bounds on waits, not assertions on speed
STOP_TIMEOUT = 60.0


def image_key() -> str:
    """Cache key of the image: the suite and both package lists (change one and the image is rebuilt)."""
    text = "|".join([SUITE, ",".join(IMAGE_PACKAGES), ",".join(CACHED_PACKAGES)])
    return f"{SUITE}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def nested_boot_unsupported() -> str | None:
    """Why containers cannot boot here, or None. The one known case: this machine is itself a container
    booted with systemd as PID 1 (``fresh-debian --boot``) on a host with the hybrid cgroup layout; a nested
    ``systemd-nspawn -b`` then fails with "Failed to chown() cgroup .../payload" (also under a delegated
    scope). Without an init system inside (a CI-like container) or on the host itself, nesting works."""
    in_container = Path("/run/systemd/container").exists() or bool(os.environ.get("container"))  # noqa: SIM112 (systemd spells it so)
    booted = _comm(1) == "systemd"
    hybrid = Path("/sys/fs/cgroup/unified").is_dir()
    if in_container and booted and hybrid:
        return (
            "nested systemd-nspawn cannot boot inside a container that itself runs systemd on a hybrid cgroup host "
            "(Failed to chown() cgroup .../payload); the systemd lab runs on the host and in CI"
        )
    return None


def image() -> Path:
    """The cached root file system, built with mmdebstrap on first use (serialised by a lock file)."""
    reason = nested_boot_unsupported()
    if reason:
        pytest.skip(reason)
    require_programs("mmdebstrap", "systemd-nspawn", "nsenter")
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    path = IMAGE_CACHE / image_key()
    with open(IMAGE_CACHE / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / "usr" / "sbin" / "sshd").exists():
            return path
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(IMAGE_PACKAGES)}",
                # Keep apt's lists and cache: the roles' package installs then work offline.
                "--skip=cleanup/apt",
                '--customize-hook=chroot "$1" apt-get install --download-only -y --no-install-recommends ' + " ".join(CACHED_PACKAGES),
                SUITE,
                str(tmp),
                MIRROR,
            ],
            check=True,
            capture_output=True,
        )
        tmp.rename(path)
    return path


def host_vars(*, key: Path, known_hosts: Path, wheel: str, wheel_cache: Path, dns: str, probe_source: str) -> dict[str, object]:
    """Inventory variables for a lab container deployed as a real host: root over SSH (host key pinned),
    production paths and the real ports on the host's own address (the containers share this machine's
    network), dependencies from wheels (no package index), and the lab's DNS server for every lookup."""
    return {
        "ansible_user": "root",
        "ansible_connection": "ssh",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_pipelining": True,  # one SSH round trip per task instead of three (root: no sudo tty)
        "ansible_ssh_private_key_file": str(key),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
        "mailprov_base_install": "offline",
        "mailprov_base_wheel": wheel,
        "mailprov_base_wheel_cache": str(wheel_cache),
        # The image's apt lists are as old as the image; its cache holds the .debs: no network needed.
        "mailprov_base_apt_cache_valid_time": 10 * 365 * 86400,
        "mailprov_base_service_timeout": 60,
        "mailprov_mta_listen": ["{{ ansible_host }}:25"],
        "mailprov_mta_submission_listen": ["{{ ansible_host }}:587"],
        "mailprov_mta_submissions_listen": ["{{ ansible_host }}:465"],
        "mailprov_mta_trusted_networks": [],
        "mailprov_mta_outbound_resolvers": [dns],
        "mailprov_mta_outbound_mta_sts": False,
        "mailprov_pop3_listen": ["{{ ansible_host }}:110"],
        "mailprov_pop3_tls_listen": ["{{ ansible_host }}:995"],
        "mailprov_imap_listen": ["{{ ansible_host }}:143"],
        "mailprov_imap_tls_listen": ["{{ ansible_host }}:993"],
        "mailprov_preflight_resolvers": [dns],
        "mailprov_preflight_addresses": ["{{ ansible_host }}"],
        "mailprov_probe_resolvers": [dns],
        "mailprov_probe_source_address": probe_source,
    }


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


class Container:
    """One booted container: ``prepare()`` once, then ``boot()`` / ``stop()`` (a reboot is stop + boot)."""

    def __init__(self, workdir: Path, name: str, address: str) -> None:
        self.workdir = Path(workdir)
        self.root = self.workdir / "root"
        self.name = name
        self.address = address
        self.machine = f"mp-{name.split('.')[1] if '.' in name else name}-{os.getpid()}"[:60]
        self.console = self.workdir / "console.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None

    def prepare(self, authorized_key: str) -> None:
        """Copy the image and configure what a provider would before first boot: machine-id, host name,
        root's SSH key, and sshd listening on this container's address only, on SSH_PORT (the network is shared)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(image()), str(self.root)], check=True)
        (self.root / "etc" / "machine-id").write_text(uuid.uuid4().hex + "\n")
        (self.root / "etc" / "hostname").write_text(self.name.split(".")[0] + "\n")
        ssh = self.root / "root" / ".ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        (ssh / "authorized_keys").write_text(authorized_key)
        (ssh / "authorized_keys").chmod(0o600)
        conf = self.root / "etc" / "ssh" / "sshd_config.d" / "mailprov-lab.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            f"Port {SSH_PORT}\nListenAddress {self.address}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUseDNS no\nMaxStartups 50:30:100\n"
        )

    @property
    def host_key(self) -> str:
        """The container's SSH host key (``type base64``) for a known_hosts line."""
        return " ".join((self.root / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2])

    def boot(self) -> float:
        """Boot with systemd as PID 1; return once systemd says running and sshd accepts (seconds taken)."""
        started = time.monotonic()
        with open(self.console, "ab") as console:
            self._proc = subprocess.Popen(
                ["systemd-nspawn", "-q", "-D", str(self.root), "-b", f"--machine={self.machine}", "--register=no", "--keep-unit"],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                start_new_session=True,
            )
        deadline = started + BOOT_TIMEOUT
        self.leader = None
        state = ""
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited with {self._proc.returncode}: {self.console_tail()}")
            # The leader is the container's PID 1 (systemd-nspawn forks helpers before it: look each time).
            self.leader = next((p for p in _children(self._proc.pid) if _comm(p) == "systemd"), None)
            if self.leader is None:
                time.sleep(0.05)
                continue
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded") and self._sshd_listens():
                return time.monotonic() - started
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not boot within {BOOT_TIMEOUT:.0f}s (state {state!r}): {self.console_tail()}")

    def console_tail(self) -> str:
        """The end of the container's console output (boot messages)."""
        return self.console.read_text(errors="replace")[-2000:]

    def _sshd_listens(self) -> bool:
        """Whether the container's own sshd (not another server) accepts on its address."""
        if not _accepts(self.address, SSH_PORT):
            return False
        return self.run("systemctl", "is-active", "ssh", check=False).stdout.strip() == "active"

    def run(self, *argv: str, check: bool = True, timeout: float = 120.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (its mount, UTS, IPC and PID namespaces) as root."""
        if self.leader is None:
            raise RuntimeError(f"{self.name} is not running")
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-p", "--", *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            input=input,
        )

    def stop(self) -> None:
        """Power off (SIGTERM to systemd-nspawn shuts the container down cleanly); SIGKILL when it hangs."""
        proc, self._proc, self.leader = self._proc, None, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)

    def remove(self) -> None:
        """Stop the container and delete its copy of the image."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
