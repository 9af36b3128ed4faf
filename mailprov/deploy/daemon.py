"""Start and stop ``mailprov serve`` as a daemon with a pid file: the service manager where systemd is not.

Containers and the test machines run no systemd (no ``/run/systemd/system``); the roles use this there, and
wherever the inventory sets ``mailprov_service_manager: pidfile`` (several hosts on one machine).
There the roles call this module on the target, with the target venv's Python::

    python -m mailprov.deploy.daemon start   --service smtp --config /etc/mailprov/mailprov.toml \\
                                              --pidfile /run/mailprov/smtp.pid --logfile /var/log/mailprov/smtp.log
    python -m mailprov.deploy.daemon stop    --pidfile /run/mailprov/smtp.pid
    python -m mailprov.deploy.daemon restart ...same options as start...
    python -m mailprov.deploy.daemon status  --pidfile /run/mailprov/smtp.pid

``--service cert-renew --every SECONDS`` runs the certificate renewal loop (``mailprov cert renew
--every``) the same way: the alternative to the systemd renewal timer; it has no address to wait for.

``start`` detaches the server (double fork, new session, standard output and error appended to the log
file) and returns once every listening address of the service accepts connections, or fails with the
tail of the log. A process in the pid file that is still dying (alive, not accepting) is waited for,
never reported as running. Each command prints one line whose first word says what happened -- ``started``,
``running`` (already), ``stopped``, ``stopped-already`` -- so Ansible can report "changed" exactly when
something changed. Exit status 0 on success, 1 on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

from mailprov import config as config_mod
from mailprov.errors import MailprovError

POLL = 0.05  # seconds between readiness and exit polls


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def running_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if that process is alive and is a ``mailprov serve``; else None."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid <= 1 or not _alive(pid):
        return None
    cmd = _cmdline(pid)
    if cmd and "serve" not in cmd and "renew" not in cmd:
        return None  # the pid was reused by something else
    return pid


def listen_addresses(config: config_mod.Config, service: str) -> list[tuple[str, int]]:
    """Where the service listens, as connectable addresses (wildcards become loopback)."""
    if service == "cert-renew":
        return []  # nothing to connect to: started means running
    if service == "smtp":
        values = config.smtp.listen + config.smtp.submission_listen + config.smtp.submissions_listen
    elif service == "imap":
        values = config.imap.listen + config.imap.tls_listen
    else:
        values = config.pop3.listen + config.pop3.tls_listen
    out = []
    for i, value in enumerate(values):
        host, port = config_mod.parse_hostport(value, key=f"{service}.listen[{i}]")
        out.append(({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port))
    return out


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _log_tail(logfile: Path, lines: int = 15) -> str:
    try:
        return "\n".join(logfile.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def serve_command(service: str, config_path: str, every: int = 43200) -> list[str]:
    """The command that runs the service in the foreground (the venv's ``mailprov serve``)."""
    script = Path(sys.executable).with_name("mailprov")
    args = ["cert", "renew", "-c", config_path, "--every", str(every)] if service == "cert-renew" else ["serve", service, "-c", config_path]
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "mailprov.deploy", *args]


def start(service: str, config_path: str, pidfile: Path, logfile: Path, timeout: float, every: int = 43200) -> str:
    """Start the service detached unless it already runs; wait until all its addresses accept.

    "running" is reported only for a process that serves: one that is alive but does not accept on every
    address (a master dying after SIGKILL, say) is waited for, bounded by ``timeout``, until it serves or
    is gone -- and then a new one is started."""
    config = config_mod.load(config_path)
    addresses = listen_addresses(config, service)
    pid = running_pid(pidfile)
    if pid:
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            if all(_accepts(h, p) for h, p in addresses):
                return f"running pid {pid}"
            time.sleep(POLL)
        if _alive(pid):
            raise MailprovError(
                f"pid {pid} in {pidfile} runs but does not listen on {', '.join(f'{h}:{p}' for h, p in addresses)}; "
                f"last log lines:\n{_log_tail(logfile)}",
                fix=f"stop it (python -m mailprov.deploy.daemon stop --pidfile {pidfile}) and start again",
            )
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    argv = serve_command(service, config_path, every)
    child = os.fork()
    if child == 0:  # first child: new session, fork again so the server is not a session leader
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            log_fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            null_fd = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null_fd, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.closerange(3, 1024)
            os.chdir("/")
            tmp = pidfile.with_name(pidfile.name + ".tmp")
            tmp.write_text(f"{os.getpid()}\n")
            os.replace(tmp, pidfile)
            os.execv(argv[0], argv)
        except BaseException:
            os._exit(127)
    os.waitpid(child, 0)
    deadline = time.monotonic() + timeout
    pid = None
    while time.monotonic() < deadline:
        if pid is None:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
        if pid is not None and not _alive(pid):
            raise MailprovError(f"mailprov {service} exited during start-up; last log lines:\n{_log_tail(logfile)}")
        if pid is not None and all(_accepts(h, p) for h, p in addresses):
            return f"started pid {pid}"
        time.sleep(POLL)
    if pid:
        _terminate(pid, 10.0)
    raise MailprovError(
        f"mailprov {service} did not listen on {', '.join(f'{h}:{p}' for h, p in addresses)} within {timeout:.0f}s; "
        f"last log lines:\n{_log_tail(logfile)}"
    )


def _terminate(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(POLL)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(POLL)


def stop(pidfile: Path, timeout: float) -> str:
    """Stop the service (SIGTERM, then SIGKILL after ``timeout``) and remove the pid file."""
    pid = running_pid(pidfile)
    if pid is None:
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        return "stopped-already"
    _terminate(pid, timeout)
    if _alive(pid):
        raise MailprovError(f"pid {pid} did not exit after SIGKILL")
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    return f"stopped pid {pid}"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints one status line."""
    parser = argparse.ArgumentParser(prog="python -m mailprov.deploy.daemon", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "restart", "status"))
    parser.add_argument("--service", choices=("smtp", "pop3", "imap", "cert-renew"), default="smtp")
    parser.add_argument("--every", type=int, default=43200, help="cert-renew: seconds between renewal checks")
    parser.add_argument("--config", default="/etc/mailprov/mailprov.toml")
    parser.add_argument("--pidfile", required=True, type=Path)
    parser.add_argument("--logfile", type=Path, default=Path("/var/log/mailprov/mailprov.log"))
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for start-up or exit")
    args = parser.parse_args(argv)
    try:
        if args.action == "status":
            pid = running_pid(args.pidfile)
            print(f"running pid {pid}" if pid else "stopped")
            return 0 if pid else 3
        if args.action in ("stop", "restart"):
            result = stop(args.pidfile, args.timeout)
            if args.action == "stop":
                print(result)
                return 0
        result = start(args.service, args.config, args.pidfile, args.logfile, args.timeout, args.every)
        print(result if args.action == "start" else result.replace("running", "started", 1))
        return 0
    except MailprovError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
