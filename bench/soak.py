#!/usr/bin/env python3
"""Soak and load figures for the MTA and the POP3 server, on loopback (127.0.7.0/24), for a bounded time.

    .venv/bin/python bench/soak.py [--seconds 60] [--connections 1000] [--queue 100000] [--skip-soak]

1. Soak: a sustained mixed load for ``--seconds``: inbound SMTP (port 25, no AUTH, local mailboxes),
   submission (port 465, implicit TLS + AUTH, half local and half remote through the queue to a Postfix
   smtp-sink) and POP3 (port 995, TLS, login, RETR and DELE everything, QUIT). Prints per kind the
   throughput and p50/p99 latency, the peak memory of each service (all processes of its group), and
   the open file descriptors of each service before and after the load (they must not grow).
2. ``--connections N``: N concurrent idle SMTP connections (from 50 source addresses) held at once;
   prints the server's memory before and while holding them.
3. ``--queue N``: N deferred messages in the queue (written directly, as the queue would have): prints
   the server's memory once it has scanned them, how long ``mailprov queue list`` takes and its peak
   memory, and how long an SMTP transaction takes meanwhile.
4. Password checks: the time of a failed check for an existing and for an unknown user (they should be
   the same: both run one argon2id verification).

Every process started is stopped at the end; every temporary directory removed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import poplib
import random
import resource
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailprov.queue.store import QueueItem, QueueStore, Recipient, new_queue_id  # noqa: E402
from mailprov.users import UserDB  # noqa: E402
from tests.faults.conftest import SmtpSink  # noqa: E402
from tests.peers.mailprov_server import MailprovProcess, MailprovTree, run_mailprov  # noqa: E402

IP = "127.0.7.30"
SINK_IP = "127.0.7.98"
POP_USERS = [f"pop{i}@soak.test" for i in range(4)]
LOCAL_USERS = ["alice@soak.test", "bob@soak.test", *POP_USERS]
PASSWORD = "soak-password-1"


def tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def group_pids(pgid: int) -> list[int]:
    pids = []
    for path in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(path.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(path.parent.name))
    return pids


def group_status(pgid: int, key: str) -> int:
    """Sum of a /proc/PID/status value (kB) over the process group."""
    total = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError, StopIteration, ValueError):
            text = Path(f"/proc/{pid}/status").read_text()
            total += next(int(ln.split()[1]) for ln in text.splitlines() if ln.startswith(key + ":"))
    return total


def group_fds(pgid: int) -> int:
    total = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def wait_port(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{host}:{port} did not listen")


def make_tree(sink: SmtpSink | None, smtp: dict | None = None, **extra: dict) -> MailprovTree:
    outbound = {
        "transports": [
            {"domain": "remote.test", "host": SINK_IP if sink is None else sink.ip, "port": 9 if sink is None else sink.port, "tls": "none"}
        ]
    }
    tree = MailprovTree.create(
        hostname="mx.soak.test",
        domains=["soak.test"],
        ip=IP,
        smtp={"max_connections": 2000, "max_connections_per_client": 100, "auth_failure_delay": 0.1, **(smtp or {})},
        outbound=outbound,
        **extra,
    )
    db = UserDB(tree.root / "etc" / "users")
    for user in LOCAL_USERS:
        db.add(user, PASSWORD)
    tree.chown()
    return tree


class Load:
    """Latencies (seconds) and counts per kind, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.last_error: dict[str, str] = {}

    def add(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.lat[kind].append(seconds)

    def error(self, kind: str, exc: Exception) -> None:
        with self.lock:
            self.errors[kind] += 1
            self.last_error[kind] = f"{type(exc).__name__}: {str(exc)[:150]}"


def body(rng: random.Random) -> str:
    """200 bytes to 4 KiB of 72-character lines."""
    return ("y" * 70 + "\r\n") * rng.randint(3, 56)


def inbound(tree: MailprovTree, load: Load, deadline: float, n: int) -> None:
    rng = random.Random(n)
    while time.monotonic() < deadline:
        try:
            with smtplib.SMTP(tree.ip, tree.ports["smtp"], timeout=30) as client:
                for i in range(10):
                    start = time.monotonic()
                    client.sendmail(f"in{n}@client.test", [rng.choice(LOCAL_USERS)], f"Subject: in {n}/{i}\r\n\r\n" + body(rng))
                    load.add("inbound message", time.monotonic() - start)
        except (OSError, smtplib.SMTPException) as exc:
            load.error("inbound message", exc)


def submission(tree: MailprovTree, load: Load, deadline: float, n: int) -> None:
    rng = random.Random(100 + n)
    while time.monotonic() < deadline:
        try:
            start = time.monotonic()
            with smtplib.SMTP_SSL(tree.ip, tree.ports["submissions"], timeout=30, context=tls()) as client:
                client.login("alice@soak.test", PASSWORD)
                load.add("submission login", time.monotonic() - start)
                for i in range(20):
                    rcpt = rng.choice(["carol@remote.test", rng.choice(LOCAL_USERS)])
                    start = time.monotonic()
                    client.sendmail("alice@soak.test", [rcpt], f"Subject: sub {n}/{i}\r\n\r\n" + body(rng))
                    load.add("submission message", time.monotonic() - start)
        except (OSError, smtplib.SMTPException) as exc:
            load.error("submission message", exc)


def pop3(tree: MailprovTree, load: Load, deadline: float, n: int) -> None:
    host, port = tree.data["pop3"]["tls_listen"][0].rsplit(":", 1)
    user = POP_USERS[n % len(POP_USERS)]
    while time.monotonic() < deadline:
        try:
            start = time.monotonic()
            client = poplib.POP3_SSL(host, int(port), timeout=30, context=tls())
            client.user(user)
            client.pass_(PASSWORD)
            count = client.stat()[0]
            for i in range(1, min(count, 200) + 1):
                t = time.monotonic()
                client.retr(i)
                load.add("pop3 RETR", time.monotonic() - t)
                client.dele(i)
            client.quit()
            load.add("pop3 session", time.monotonic() - start)
        except (OSError, poplib.error_proto) as exc:
            load.error("pop3 session", exc)
        time.sleep(0.5)


def soak(seconds: float) -> None:
    sink = SmtpSink(SINK_IP).start()
    tree = make_tree(sink, pop3={"plaintext_networks": []})
    smtp: MailprovProcess | None = None
    pop: MailprovProcess | None = None
    try:
        smtp = run_mailprov(tree.config_path, services="smtp")
        pop = run_mailprov(tree.config_path, services="pop3")
        host, port = tree.data["pop3"]["tls_listen"][0].rsplit(":", 1)
        wait_port(host, int(port))
        time.sleep(2)
        services = {"smtp": smtp.proc.pid, "pop3": pop.proc.pid}
        fds_start = {name: group_fds(pgid) for name, pgid in services.items()}
        peak = dict.fromkeys(services, 0)
        load = Load()
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=inbound, args=(tree, load, deadline, i)) for i in range(4)]
        threads += [threading.Thread(target=submission, args=(tree, load, deadline, i)) for i in range(2)]
        threads += [threading.Thread(target=pop3, args=(tree, load, deadline, i)) for i in range(2)]
        began = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for name, pgid in services.items():
                peak[name] = max(peak[name], group_status(pgid, "VmRSS"))
            time.sleep(0.5)
        elapsed = time.monotonic() - began
        drained = time.monotonic()
        while any(tree.queue_files(s) for s in ("incoming", "active")) and time.monotonic() - drained < 60:
            time.sleep(0.2)
        time.sleep(10)  # idle outbound connections are kept 5 s for reuse (delivery/remote/pool.py IDLE_TIMEOUT)
        fds_end = {name: group_fds(pgid) for name, pgid in services.items()}
        print(f"\n== soak: {elapsed:.0f} s, 4 inbound + 2 submission + 2 POP3 clients, {os.cpu_count()} CPUs (shared)")
        print(f"{'kind':22} {'count':>7} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for kind in sorted(load.lat):
            values = load.lat[kind]
            print(
                f"{kind:22} {len(values):7d} {len(values) / elapsed:8.1f} {pct(values, 0.5) * 1000:8.1f} "
                f"{pct(values, 0.99) * 1000:8.1f} {load.errors.get(kind, 0):7d}"
            )
        for kind, text in load.last_error.items():  # a sample, to tell load shedding from bugs
            print(f"last {kind} error: {text}")
        for name in services:
            print(f"{name:5} peak RSS {peak[name] / 1024:7.1f} MiB   open fds start {fds_start[name]:4d} end {fds_end[name]:4d}")
        left = sum(len(tree.queue_files(s)) for s in ("incoming", "active", "deferred"))
        print(f"remote deliveries at the sink: {len(sink.files())}; queue left: {left}")
    finally:
        if pop and os.environ.get("SOAK_LOG"):
            print(pop.log()[-3000:])
        for proc in (smtp, pop):
            if proc:
                proc.stop()
        sink.stop()
        tree.cleanup()


def hold_connections(count: int) -> None:
    tree = make_tree(None, smtp={"max_connections": count + 100, "max_connections_per_client": count // 50 + 5, "command_timeout": 300})
    server = run_mailprov(tree.config_path)
    socks: list[socket.socket] = []
    try:
        time.sleep(1)
        before = group_status(server.proc.pid, "VmRSS")
        sources = [f"127.0.7.{i}" for i in range(171, 221)]
        greeted = 0
        for i in range(count):
            s = socket.create_connection((tree.ip, tree.ports["smtp"]), timeout=30, source_address=(sources[i % len(sources)], 0))
            socks.append(s)
            if len(socks) - greeted >= 50 or i == count - 1:  # read banners in batches (a burst only measures the backlog)
                for t in socks[greeted:]:
                    t.settimeout(30)
                    assert t.recv(512).startswith(b"220")
                greeted = len(socks)
        time.sleep(1)
        held = group_status(server.proc.pid, "VmRSS")
        print(
            f"\n== {count} concurrent SMTP connections held: server RSS {before / 1024:.1f} MiB before, {held / 1024:.1f} MiB holding "
            f"({(held - before) / max(1, count):.1f} KiB per connection), fds {group_fds(server.proc.pid)}"
        )
    finally:
        for s in socks:
            s.close()
        server.stop()
        tree.cleanup()


def big_queue(count: int) -> None:
    tree = make_tree(None, queue={"retry_min": 3600, "retry_max": 3600})
    store = QueueStore(tree.queue_dir)
    store.ensure_dirs()
    message = b"Subject: deferred\r\n\r\n" + b"z" * 800 + b"\r\n"
    start = time.monotonic()
    later = time.time() + 3600
    folder = tree.queue_dir / "deferred"
    for _ in range(count):
        item = QueueItem(
            id=new_queue_id(),
            sender="a@soak.test",
            recipients=[Recipient("c@remote.test", "c@remote.test", False, status="deferred", attempts=1)],
            arrival=time.time(),
            queued=time.time(),
            size=len(message),
            attempts=1,
            next_attempt=later,
        )
        (folder / item.id).write_bytes(item.header_bytes() + message)
    tree.chown()
    print(f"\n== queue of {count} deferred messages (written in {time.monotonic() - start:.0f} s)")
    t = time.monotonic()
    server = run_mailprov(tree.config_path, timeout=600)
    try:
        rss = group_status(server.proc.pid, "VmRSS") / 1024
        print(f"server up (start-up scan included) in {time.monotonic() - t:.1f} s; RSS {rss:.1f} MiB")
        t = time.monotonic()
        with smtplib.SMTP(tree.ip, tree.ports["smtp"], timeout=60) as client:
            client.sendmail("x@client.test", ["alice@soak.test"], "Subject: while big\r\n\r\nhi\r\n")
        print(f"an SMTP transaction meanwhile: {(time.monotonic() - t) * 1000:.0f} ms")
        t = time.monotonic()
        code = (
            "import resource, sys\nfrom mailprov.cli import main\ntry:\n    main()\nfinally:\n"
            "    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, "queue", "list", "-c", str(tree.config_path)], capture_output=True, timeout=600, cwd=ROOT
        )
        took = time.monotonic() - t
        maxrss = int(result.stderr.split(b"MAXRSS")[-1].split()[0]) if b"MAXRSS" in result.stderr else 0
        lines = result.stdout.count(b"\n")
        print(f"mailprov queue list: {took:.1f} s, {lines} lines, exit {result.returncode}, peak RSS {maxrss / 1024:.1f} MiB")
        print(f"server RSS after: {group_status(server.proc.pid, 'VmRSS') / 1024:.1f} MiB")
    finally:
        server.stop()
        tree.cleanup()


def password_checks(rounds: int = 10) -> None:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mailprov-soak-auth-"))
    try:
        db = UserDB(folder / "users")
        db.add("alice@soak.test", PASSWORD)
        times: dict[str, list[float]] = defaultdict(list)
        for _ in range(rounds):
            for label, user in (("existing user", "alice@soak.test"), ("unknown user", "nobody@soak.test")):
                t = time.perf_counter()
                db.verify(user, "wrong-password")
                times[label].append(time.perf_counter() - t)
        print("\n== failed password checks (argon2id, one verification each)")
        for label, values in times.items():
            median, low, high = statistics.median(values) * 1000, min(values) * 1000, max(values) * 1000
            print(f"{label:14} median {median:6.1f} ms  min {low:6.1f}  max {high:6.1f}")
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--queue", type=int, default=100_000)
    parser.add_argument("--skip-soak", action="store_true")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
    if not args.skip_soak:
        soak(args.seconds)
    if args.connections:
        hold_connections(args.connections)
    if args.queue:
        big_queue(args.queue)
    password_checks()
    return 0


if __name__ == "__main__":
    sys.exit(main())
