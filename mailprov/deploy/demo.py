"""The embedded default: the whole mail story on this machine, without root and without any network.

``mailprov demo up``:

1. serves the bundled demo zones (examples/zones: alpha.test, beta.test, 6.0.127.in-addr.arpa) with
   ``mailprov dns serve-zones`` on 127.0.6.53:5300;
2. checks both domains with ``mailprov check`` against that server;
3. deploys mail.alpha.test (127.0.6.10) and mail.beta.test (127.0.6.20) with Ansible's site playbook
   (inventories/demo: local connection, unprivileged ports, one prefix per host under the demo directory,
   mailprov installed into each host's own venv from a wheel built once, as a real deploy does);
4. alex@alpha.test submits a message to john@beta.test on mail.alpha.test's submission port (STARTTLS, AUTH);
5. mail.alpha.test looks up the MX of beta.test and relays it over SMTP to mail.beta.test, whose MDA
   drops it into john's Maildir;
6. john fetches it over POP3S, and reads it over IMAPS too (his phone and his desktop).

It prints each step as it happens and leaves everything running; ``mailprov demo status --json`` gives
every endpoint, the DNS server and the users, and ``mailprov demo down`` stops and removes it all. The
demo directory is $MAILPROV_DEMO_DIR, else /tmp/mailprov-demo-UID. The addresses are in the /24 of
127.0.0.0/8 named by $MAILPROV_DEMO_NET (``127.X.Y``, default 127.0.6): hosts .10 and .20, DNS .53, so a
second demo (the test suite's) can run beside a user's; the zones are rewritten for it into the demo directory.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import poplib
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path

from mailprov.deploy import daemon
from mailprov.deploy.probe import ProbeTarget, load_certificate
from mailprov.deploy.runner import ansible_dir, run_playbook
from mailprov.dns.checker import CheckOptions, run_checks
from mailprov.errors import MailprovError, UsageError

DEFAULT_NET = "127.0.6"  # the /24 the bundled zones use; $MAILPROV_DEMO_NET moves the demo elsewhere
DNS_HOST, DNS_PORT = 53, 5300
PROBE_SOURCE_HOST = 99
PORTS = {"smtp": 2525, "submission": 2587, "submissions": 2465, "pop3": 2110, "pop3s": 2995, "imap": 2143, "imaps": 2993}
SERVICES = ("smtp", "pop3", "imap")
HOSTS = {
    "mail.alpha.test": {"host": 10, "domain": "alpha.test"},
    "mail.beta.test": {"host": 20, "domain": "beta.test"},
}
USERS = [
    {"address": "alex@alpha.test", "password": "alex-demo-password", "host": "mail.alpha.test"},
    {"address": "john@beta.test", "password": "john-demo-password", "host": "mail.beta.test"},
]
DELIVERY_TIMEOUT = 60.0  # seconds: upper bound for the relay hop
START_TIMEOUT = 15.0  # seconds: upper bound for the DNS server to answer
Echo = Callable[[str], None]


def demo_dir() -> Path:
    """Where the demo keeps its hosts, logs and state."""
    return Path(os.environ.get("MAILPROV_DEMO_DIR") or f"/tmp/mailprov-demo-{os.getuid()}")


def network(base: Path | None = None) -> str:
    """The demo's /24 as ``127.X.Y``: $MAILPROV_DEMO_NET, else the one the demo in ``base`` was started with."""
    value = os.environ.get("MAILPROV_DEMO_NET", "").strip()
    if not value:
        with contextlib.suppress(OSError):
            value = ((base or demo_dir()) / "network").read_text().strip()
    value = value or DEFAULT_NET
    parts = value.split(".")
    if len(parts) != 3 or parts[0] != "127" or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise UsageError(f"MAILPROV_DEMO_NET={value!r} is not a /24 of 127.0.0.0/8", fix="set it to three octets such as 127.0.6")
    return ".".join(str(int(p)) for p in parts)


def address(net: str, host: int) -> str:
    """An address of the demo's /24."""
    return f"{net}.{host}"


def dns_address(net: str) -> str:
    """The demo DNS server's address."""
    return address(net, DNS_HOST)


def write_zones(base: Path, net: str) -> list[Path]:
    """The bundled demo zones (examples/zones, written for 127.0.6) rewritten for ``net`` into ``base/zones``."""
    octets = net.split(".")
    reverse, bundled_reverse = ".".join(reversed(octets)) + ".in-addr.arpa", "6.0.127.in-addr.arpa"
    out = base / "zones"
    out.mkdir(exist_ok=True)
    written = []
    for source in sorted((ansible_dir() / "examples" / "zones").glob("*.zone")):
        text = source.read_text().replace(f"{DEFAULT_NET}.", f"{net}.").replace(bundled_reverse, reverse)
        target = out / source.name.replace(bundled_reverse, reverse)
        target.write_text(text)
        written.append(target)
    return written


def _tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the demo's certificates are self-signed
    return context


def state(base: Path | None = None) -> dict:
    """The demo's endpoints, DNS server and users: the machine-readable form (without liveness)."""
    base = base or demo_dir()
    net = network(base)
    hosts = {}
    for name, info in HOSTS.items():
        prefix = base / name
        host_address = address(net, info["host"])
        hosts[name] = {
            "address": host_address,
            "domain": info["domain"],
            **{svc: {"host": host_address, "port": port} for svc, port in PORTS.items()},
            "config": str(prefix / "etc" / "mailprov" / "mailprov.toml"),
            "certificate": str(prefix / "etc" / "mailprov" / "tls" / f"{name}.crt"),
            "maildir_root": str(prefix / "var" / "mail" / "mailprov"),
            "logs": {svc: str(prefix / "var" / "log" / "mailprov" / f"{svc}.log") for svc in SERVICES},
        }
    zones = sorted(str(p) for p in (base / "zones").glob("*.zone"))
    dns = dns_address(net)
    return {
        "dir": str(base),
        "network": net,
        "dns": {"server": f"{dns}:{DNS_PORT}", "address": dns, "port": DNS_PORT, "zones": zones},
        "hosts": hosts,
        "users": USERS,
        "tls": "self-signed certificates (see hosts.*.certificate); clients must not verify them",
    }


def _pidfiles(base: Path) -> dict[str, Path]:
    files = {"dns": base / "dns.pid"}
    for name in HOSTS:
        for svc in SERVICES:
            files[f"{name}/{svc}"] = base / name / "run" / "mailprov" / f"{svc}.pid"
    return files


def _dns_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if daemon._alive(pid) and "serve-zones" in daemon._cmdline(pid) else None


def status() -> dict:
    """The state plus which processes are running; ``running`` is true when all of them are."""
    base = demo_dir()
    out = state(base)
    processes = {}
    for key, pidfile in _pidfiles(base).items():
        pid = _dns_pid(pidfile) if key == "dns" else daemon.running_pid(pidfile)
        processes[key] = {"pid": pid, "running": pid is not None}
    out["processes"] = processes
    out["running"] = all(p["running"] for p in processes.values())
    return out


def describe(info: dict) -> str:
    """A human-readable summary of :func:`status`."""
    lines = [f"demo: {'running' if info.get('running') else 'not running'} ({info['dir']})", f"DNS: {info['dns']['server']}"]
    for name, host in info["hosts"].items():
        ports = ", ".join(f"{svc} {host[svc]['port']}" for svc in PORTS)
        lines.append(f"{name} {host['address']}: {ports}")
    for user in info["users"]:
        lines.append(f"user {user['address']} password {user['password']} (on {user['host']})")
    for key, proc in info.get("processes", {}).items():
        lines.append(f"  {key}: {'pid ' + str(proc['pid']) if proc['running'] else 'stopped'}")
    return "\n".join(lines)


def _start_dns(base: Path, net: str, echo: Echo) -> None:
    pidfile = base / "dns.pid"
    server = dns_address(net)
    if _dns_pid(pidfile):
        echo(f"      already serving on {server}:{DNS_PORT}")
        return
    zones = write_zones(base, net)
    log = open(base / "dns.log", "ab")  # noqa: SIM115 - handed to the child process
    cmd = [sys.executable, "-m", "mailprov.deploy", "dns", "serve-zones", "--listen", f"{server}:{DNS_PORT}", *map(str, zones)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    pidfile.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    import dns.message
    import dns.query

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MailprovError(
                f"the demo DNS server exited: {(base / 'dns.log').read_text(errors='replace')[-500:]}",
                fix=f"free {server}:{DNS_PORT} (another demo?) and run 'mailprov demo down' first",
            )
        with contextlib.suppress(Exception):
            dns.query.udp(dns.message.make_query("alpha.test.", "SOA"), server, timeout=0.5, port=DNS_PORT)
            echo(f"      serving {', '.join(z.stem for z in zones)} on {server}:{DNS_PORT} (pid {proc.pid})")
            return
        time.sleep(0.1)
    raise MailprovError(f"the demo DNS server did not answer on {server}:{DNS_PORT} within {START_TIMEOUT:.0f}s")


def _check_dns(net: str, echo: Echo) -> None:
    for name, info in HOSTS.items():
        host_address = address(net, info["host"])
        options = CheckOptions(host=name, ips=[host_address], resolvers=[(dns_address(net), DNS_PORT)], timeout=3)
        report = run_checks([info["domain"]], options)
        domain = report.domains[0]
        failing = [c for c in domain.checks if c.status in ("fail", "error")]
        passed = sum(1 for c in domain.checks if c.status == "pass")
        echo(f"      {info['domain']}: {domain.verdict.upper()} ({passed} pass: MX {name}, A {host_address}, PTR, FCrDNS)")
        for check in failing:
            echo(f"        {check.status.upper()} {check.id} {check.subject}: {check.summary}")
        if failing:
            raise MailprovError(f"the demo zones fail the DNS check for {info['domain']}", fix="see the report above")


def _deploy(base: Path, net: str, echo: Echo) -> float:
    def progress(line: str) -> None:
        text = line.strip()
        if text.startswith("PLAY "):
            echo(f"      {text}")
        elif text.startswith(("changed", "FAILED", "UNREACH")) or (line.startswith("    ") and not text.startswith(("ok ", "ignored"))):
            echo(f"      {line.strip()}")

    result = run_playbook(
        "site.yml",
        str(ansible_dir() / "inventories" / "demo"),
        echo=progress,
        env={"MAILPROV_DEMO_DIR": str(base), "MAILPROV_DEMO_NET": net},
    )
    for line in result.summary().splitlines():
        echo(f"      {line.strip()}")
    result.raise_for_failure("demo deploy")
    return result.elapsed


def _story(base: Path, net: str, echo: Echo) -> None:
    alex, john = USERS
    alpha, beta = address(net, HOSTS["mail.alpha.test"]["host"]), address(net, HOSTS["mail.beta.test"]["host"])
    server = dns_address(net)
    token = uuid.uuid4().hex[:12]
    message = EmailMessage()
    message["From"], message["To"] = f"Alex <{alex['address']}>", f"John <{john['address']}>"
    message["Subject"] = f"Hello John ({token})"
    message["Message-ID"] = f"<{token}@alpha.test>"
    message.set_content("Hi John,\n\nthis went alpha -> MX lookup -> beta -> Maildir -> POP3.\n\nAlex\n")

    alpha_log = base / "mail.alpha.test" / "var" / "log" / "mailprov" / "smtp.log"
    log = _LogTail(alpha_log)
    echo(f"[4/6] alex@alpha.test submits to john@beta.test on mail.alpha.test {alpha}:{PORTS['submission']}")
    with smtplib.SMTP(alpha, PORTS["submission"], local_hostname="laptop.alpha.test", timeout=30) as smtp:
        smtp.ehlo()
        smtp.starttls(context=_tls())
        echo("      STARTTLS ok; AUTH PLAIN as alex@alpha.test")
        smtp.login(alex["address"], alex["password"])
        smtp.send_message(message)
        echo(f"      message {token} accepted for john@beta.test")

    echo("[5/6] mail.alpha.test looks up the MX of beta.test and relays it over SMTP")
    import dns.message
    import dns.query

    mx = dns.query.udp(dns.message.make_query("beta.test.", "MX"), server, timeout=2, port=DNS_PORT)
    target = " ".join(rd.to_text() for rrset in mx.answer for rd in rrset)
    a = dns.query.udp(dns.message.make_query("mail.beta.test.", "A"), server, timeout=2, port=DNS_PORT)
    found_a = " ".join(rd.to_text() for rrset in a.answer for rd in rrset)
    echo(f"      DNS {server}:{DNS_PORT}: beta.test MX {target}; mail.beta.test A {found_a}")
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    sent = False
    while not sent and time.monotonic() < deadline:
        for line in log.new_lines():
            if "from=<alex@alpha.test>" in line or "to=<john@beta.test>" in line:
                echo(f"      mail.alpha.test log: {line.split(' INFO ', 1)[-1].strip()[:150]}")
                sent = sent or ("to=<john@beta.test>" in line and "status=sent" in line)
        if not sent:
            time.sleep(0.2)

    echo(f"[6/6] john@beta.test fetches his mail over POP3S from mail.beta.test {beta}:{PORTS['pop3s']}")
    while True:
        found = _fetch(beta, john["address"], john["password"], token)
        if found is not None:
            parsed = message_from_bytes(found)
            echo(f"      POP3S login as john@beta.test ok; message {token} is in his Maildir")
            echo(f"      Subject: {parsed['Subject']}")
            for received in parsed.get_all("Received") or []:
                echo(f"      Received: {' '.join(received.split())[:150]}")
            _read_over_imap(beta, john, token, echo)
            return
        if time.monotonic() > deadline:
            raise MailprovError(
                f"message {token} did not reach john@beta.test within {DELIVERY_TIMEOUT:.0f}s",
                fix=f"see {alpha_log} and 'mailprov queue list -c {base / 'mail.alpha.test' / 'etc' / 'mailprov' / 'mailprov.toml'}'",
            )
        time.sleep(0.25)


class _LogTail:
    """New lines of a growing log file since the last call (from its size when created)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return complete.decode(errors="replace").splitlines()


def _fetch(host: str, user: str, password: str, token: str) -> bytes | None:
    pop = poplib.POP3_SSL(host, PORTS["pop3s"], context=_tls(), timeout=30)
    try:
        pop.user(user)
        pop.pass_(password)
        count, _ = pop.stat()
        for number in range(count, 0, -1):
            text = b"\r\n".join(pop.retr(number)[1])
            if token.encode() in text:
                return text
        return None
    finally:
        with contextlib.suppress(Exception):
            pop.quit()


def _read_over_imap(address: str, user: dict, token: str, echo: Echo) -> None:
    """The same message read over IMAPS, as a mail program would (BODY.PEEK: it stays unread)."""
    echo(f"      john@beta.test reads it over IMAPS too: mail.beta.test {address}:{PORTS['imaps']}")
    client = imaplib.IMAP4_SSL(address, PORTS["imaps"], ssl_context=_tls(), timeout=30)
    try:
        client.login(user["address"], user["password"])
        exists = client.select("INBOX")[1][0].decode()
        _status, data = client.uid("SEARCH", "HEADER", "Message-ID", f"<{token}@alpha.test>")
        uids = data[0].split() if data and data[0] else []
        if not uids:
            raise MailprovError(f"message {token} is not in john's INBOX over IMAP", fix=f"see {address}'s imap.log")
        _status, fetched = client.uid("FETCH", uids[-1].decode(), "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        subject = next(part[1] for part in fetched if isinstance(part, tuple)).decode().strip()
        echo(f"      IMAPS login ok; INBOX has {exists} message(s); UID {uids[-1].decode()}: {subject}")
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def up(echo: Echo) -> dict:
    """Run the whole story; leaves the demo running and returns :func:`status`."""
    base = demo_dir()
    if os.geteuid() == 0:
        for parent in base.resolve().parents:
            if parent.exists() and not parent.stat().st_mode & 0o001:
                raise MailprovError(
                    f"{parent} is not reachable by other users, but run as root the demo services drop to the mailprov user",
                    fix="set MAILPROV_DEMO_DIR to a directory below /tmp, or run the demo as a normal user",
                )
    net = network(base)
    base.mkdir(parents=True, exist_ok=True)
    # Each host's prefix plays the part of a host's root directory (mode 0755, like /): run as root, the
    # services drop to the mailprov user and must reach their venv, configuration and data below it.
    base.chmod(0o755)
    for name in HOSTS:
        (base / name).mkdir(exist_ok=True)
        (base / name).chmod(0o755)
    (base / "network").write_text(net + "\n")
    started = time.monotonic()
    echo(f"mailprov demo: two mail domains on this machine, in {base}")
    echo(f"[1/6] DNS: serving the demo zones on {dns_address(net)}:{DNS_PORT}")
    _start_dns(base, net, echo)
    echo("[2/6] checking DNS for alpha.test and beta.test (mailprov check)")
    _check_dns(net, echo)
    echo("[3/6] deploying mail.alpha.test and mail.beta.test with Ansible (playbooks/site.yml, inventories/demo)")
    took = _deploy(base, net, echo)
    echo(f"      deployed in {took:.0f}s; both hosts passed 'mailprov probe'")
    (base / "state.json").write_text(json.dumps(state(base), indent=2) + "\n")
    _story(base, net, echo)
    info = status()
    command = invoked_as()
    echo(f"done in {time.monotonic() - started:.0f}s. The demo keeps running:")
    echo(f"  {command} demo status --json    every endpoint, the DNS server and the users")
    echo(f"  {command} demo down             stop it and remove {base}")
    return info


def invoked_as() -> str:
    """How to call this mailprov again: ``mailprov`` when that is on PATH, else the path it was run by
    (``.venv/bin/mailprov`` after ``./dev demo``)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name != "mailprov" or "/" not in argv0:
        return "mailprov"
    on_path = shutil.which("mailprov")
    if on_path and os.path.realpath(on_path) == os.path.realpath(argv0):
        return "mailprov"
    relative = os.path.relpath(argv0)
    return relative if not relative.startswith("..") else argv0


def down(echo: Echo) -> None:
    """Stop every demo process (services, DNS) and remove the demo directory."""
    base = demo_dir()
    if not base.exists():
        echo(f"demo: nothing to stop ({base} does not exist)")
        return
    for key, pidfile in _pidfiles(base).items():
        if key == "dns":
            pid = _dns_pid(pidfile)
            if pid:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while daemon._alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if daemon._alive(pid):
                    os.kill(pid, signal.SIGKILL)
                echo(f"stopped dns (pid {pid})")
        else:
            result = daemon.stop(pidfile, 15.0)
            if result.startswith("stopped pid"):
                echo(f"stopped {key} ({result.removeprefix('stopped ')})")
    shutil.rmtree(base, ignore_errors=True)
    echo(f"removed {base}")


def probe_target(hostname: str) -> ProbeTarget:
    """A :class:`~mailprov.deploy.probe.ProbeTarget` for one host of the running demo (``mailprov probe --demo``)."""
    if hostname not in HOSTS:
        raise UsageError(f"{hostname} is not a demo host", fix=f"use one of {', '.join(HOSTS)}")
    info = state()
    host = info["hosts"][hostname]
    user = next(u for u in USERS if u["host"] == hostname)
    net = info["network"]
    target = ProbeTarget(
        hostname=hostname, address=host["address"], resolvers=[(dns_address(net), DNS_PORT)], source_address=address(net, PROBE_SOURCE_HOST)
    )
    target.smtp_port, target.submission_port, target.submissions_port = PORTS["smtp"], PORTS["submission"], PORTS["submissions"]
    target.pop3_port, target.pop3s_port = PORTS["pop3"], PORTS["pop3s"]
    target.imap_port, target.imaps_port = PORTS["imap"], PORTS["imaps"]
    target.user, target.password = user["address"], user["password"]
    with contextlib.suppress(OSError, UsageError):
        target.expect_cert_der = load_certificate(Path(host["certificate"]).read_text(), host["certificate"])
    return target
