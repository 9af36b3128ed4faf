"""Benchmark: retrieve and delete N messages over POP3, mailprov against Dovecot on the same machine.

Scenarios (defaults: 5,000 messages of 4 KiB):
  * one session: one user with all N messages;
  * ten sessions at once: ten users with N/10 messages each.
Each runs twice: "fresh" (the first session ever over just-delivered mail: sizes and indexes are
built then) and "warm" (a previous session listed and read every message, nothing deleted).

Both servers read the same kind of Maildir, check the same argon2id hash, serve plaintext on
loopback (127.0.4.0/24) and are driven by the same poplib client: RETR n, DELE n for every message,
then QUIT (which is when the deletions happen, so QUIT is timed). Each server runs in its own
processes; clients run as threads of this script.

Figures: messages per second over the whole run (connect, login, RETR+DELE, QUIT) and over the
retrieval alone (first STAT to the QUIT reply, login excluded: argon2id costs ~0.1-0.3 s per login).

Both servers run side by side; the rounds interleave them so that load from other work on the machine
hits both alike, and the best figure of each is shown.

Usage: python bench/pop3_retrieve.py [--messages 5000] [--size 4096] [--sessions 10] [--rounds 3] [--no-dovecot]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import poplib
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mailprov.config import from_dict  # noqa: E402
from mailprov.maildir import maildir_path  # noqa: E402
from mailprov.users import hash_password  # noqa: E402
from tests.peers.dovecot import DovecotPOP3  # noqa: E402
from tests.peers.pop3_server import POP3Process, free_port  # noqa: E402

HOST = "127.0.4.240"
PASSWORD = "bench-password"


def make_message(number: int, size: int) -> bytes:
    """A message of exactly ``size`` bytes with LF line endings, as an MDA stores it."""
    head = f"From: alex@alpha.test\nTo: john@beta.test\nSubject: bench {number}\nMessage-ID: <{number}.bench@alpha.test>\n\n"
    data = head.encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\n"
    while len(data) < size:
        data += line
    return data[: size - 1] + b"\n"


def deliver(maildir: Path, count: int, size: int, tag: str) -> None:
    """Write ``count`` messages tmp -> new, as an MDA does (without fsync: the benchmark is not about disks)."""
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    stamp = int(time.time())
    for i in range(count):
        name = f"{stamp}.M{i}P{os.getpid()}Q{tag}.bench"
        tmp = maildir / "tmp" / name
        tmp.write_bytes(make_message(i, size))
        os.rename(tmp, maildir / "new" / name)


def session(
    host: str, port: int, user: str, *, delete: bool, out: list[tuple[float, float, float, int]], barrier: threading.Barrier | None = None
) -> None:
    """One poplib session: RETR (and DELE) every message, then QUIT. Appends (start, logged-in, end, count).

    With a ``barrier``, retrieval starts only once every session has logged in, so the retrieval figure
    of concurrent sessions is not mixed with other sessions' logins."""
    start = time.perf_counter()
    client = poplib.POP3(host, port, timeout=120)
    client.user(user)
    client.pass_(PASSWORD)
    if barrier is not None:
        barrier.wait(300)
    logged_in = time.perf_counter()
    count, _ = client.stat()
    if not delete:
        client.list()
    got = 0
    for number in range(1, count + 1):
        _, lines, _ = client.retr(number)
        got += 1 if lines else 0
        if delete:
            client.dele(number)
    client.quit()
    end = time.perf_counter()
    out.append((start, logged_in, end, got))


def run_sessions(host: str, port: int, users: list[str], *, delete: bool) -> tuple[float, float, int]:
    """All sessions at once, one thread each. Returns (wall s, retrieval s, messages): retrieval runs from
    the moment every session is logged in to the last QUIT reply."""
    results: list[tuple[float, float, float, int]] = []
    barrier = threading.Barrier(len(users))
    threads = [
        threading.Thread(target=session, args=(host, port, u), kwargs={"delete": delete, "out": results, "barrier": barrier}) for u in users
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - start
    if len(results) != len(users):
        raise RuntimeError("a session failed (see the traceback above)")
    return wall, max(r[2] for r in results) - max(r[1] for r in results), sum(r[3] for r in results)


def tree_cpu(root_pid: int) -> float:
    """CPU seconds (user + system) of a process, its live children and its reaped children: for Dovecot,
    whose master reaps the per-session processes, and for our single process alike."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == root_pid or int(fields[1]) == root_pid:
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def scenario(
    name: str,
    host: str,
    port: int,
    users: list[str],
    maildir: Callable[[str], Path],
    per_user: int,
    size: int,
    prepare: Callable[[], None],
    pid: int,
) -> dict[str, tuple[float, float, float]]:
    """Fresh and warm runs of one scenario; returns {"fresh"/"warm": (msg/s whole, msg/s retrieval,
    server CPU ms per 1,000 messages)}."""
    figures = {}
    for kind in ("fresh", "warm"):
        for user in users:
            deliver(maildir(user), per_user, size, f"{kind}{user.split('@')[0]}")
        prepare()
        if kind == "warm":
            run_sessions(host, port, users, delete=False)
        cpu = tree_cpu(pid)
        wall, retrieval, got = run_sessions(host, port, users, delete=True)
        time.sleep(0.2)  # let Dovecot's master reap the session processes, so their CPU is counted
        cpu = tree_cpu(pid) - cpu
        expected = per_user * len(users)
        left = sum(len(os.listdir(maildir(u) / "new")) + len(os.listdir(maildir(u) / "cur")) for u in users)
        if got != expected or left:
            raise RuntimeError(f"{name} {kind}: retrieved {got} of {expected}, {left} left in the Maildirs")
        figures[kind] = (got / wall, got / retrieval, cpu * 1e6 / got)
    return figures


@dataclass
class Target:
    """One server under test: where it listens, where its Maildirs are, what to do after delivering."""

    name: str
    port: int
    maildir: Callable[[str], Path]
    prepare: Callable[[], None]
    pid: int
    log: Path | None = None


@contextlib.contextmanager
def mailprov_target(tmp: Path, users: list[str], hashed: str) -> Iterator[Target]:
    """mailprov's POP3 service in its own process, plaintext allowed from loopback."""
    tmp.mkdir(parents=True, exist_ok=True)
    users_file = tmp / "users"
    users_file.write_text("".join(f"{u}:{hashed}\n" for u in users))
    port = free_port(HOST)
    config = from_dict(
        {
            "server": {"hostname": "bench.test", "domains": ["bench.test"], "log_level": "warning"},
            "paths": {
                "mail_dir": str(tmp / "mail"),
                "state_dir": str(tmp / "state"),
                "queue_dir": str(tmp / "queue"),
                "users_file": str(users_file),
            },
            "pop3": {
                "listen": [f"{HOST}:{port}"],
                "tls_listen": [f"{HOST}:{free_port(HOST)}"],
                "plaintext_networks": ["127.0.0.0/8"],
                "max_connections_per_client": 50,
            },
        }
    )
    with POP3Process(config) as process:
        assert process.proc is not None
        yield Target("mailprov", port, lambda u: maildir_path(config.paths.mail_dir, u), lambda: None, process.proc.pid)


@contextlib.contextmanager
def dovecot_target(tmp: Path, users: list[str], hashed: str) -> Iterator[Target]:
    """Dovecot configured alike: same Maildir layout, same argon2id hashes, plaintext on loopback."""
    port = free_port(HOST)
    dovecot = DovecotPOP3(tmp, HOST, port, {u: hashed for u in users})
    with dovecot:
        master = int((tmp / "run" / "master.pid").read_text())
        yield Target("dovecot", port, dovecot.maildir, dovecot.own, master, tmp / "dovecot.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages in all (default 5000)")
    parser.add_argument("--size", type=int, default=4096, help="bytes per message (default 4096)")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent sessions/users in the second scenario (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, servers interleaved; the best of each is shown (default 3)")
    parser.add_argument("--no-dovecot", action="store_true", help="skip Dovecot even when installed")
    args = parser.parse_args()
    hashed = hash_password(PASSWORD)
    scenarios = [
        ("1 session", ["solo@bench.test"], args.messages),
        (f"{args.sessions} sessions", [f"u{i}@bench.test" for i in range(args.sessions)], args.messages // args.sessions),
    ]
    users = [u for _, group, _ in scenarios for u in group]
    use_dovecot = not args.no_dovecot and DovecotPOP3.available()
    if not args.no_dovecot and not use_dovecot:
        print("dovecot is not installed: mailprov figures only")
    best: dict[tuple[str, str, str], tuple[float, float, float]] = {}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="pop3-bench-") as tmp, contextlib.ExitStack() as stack:
        targets = [stack.enter_context(mailprov_target(Path(tmp) / "mailprov", users, hashed))]
        if use_dovecot:
            targets.append(stack.enter_context(dovecot_target(Path(tmp) / "dovecot", users, hashed)))
        for _ in range(args.rounds):
            for label, group, per_user in scenarios:
                for target in targets:  # interleaved, so a burst of load on the machine hits both alike
                    try:
                        figures = scenario(label, HOST, target.port, group, target.maildir, per_user, args.size, target.prepare, target.pid)
                    except Exception:
                        if target.log:
                            print("server log (tail):\n" + "".join(target.log.read_text().splitlines(True)[-15:]), file=sys.stderr)
                        raise
                    for kind, (whole, retr, cpu) in figures.items():
                        old = best.get((target.name, label, kind), (0.0, 0.0, float("inf")))
                        best[(target.name, label, kind)] = (max(old[0], whole), max(old[1], retr), min(old[2], cpu))

    print(f"POP3 RETR+DELE of {args.messages} messages of {args.size} bytes, best of {args.rounds} interleaved rounds")
    print(f"(load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end; {os.cpu_count()} CPUs)")
    print("messages per second: whole run (connect, login, RETR+DELE, QUIT) / retrieval only (login excluded);")
    print("server CPU: user+system ms per 1,000 messages over the whole run (lower is better; less sensitive to load)")
    print(f"{'scenario':<20} {'mailprov':>21} {'dovecot':>21} {'ratio (>1: mailprov ahead)':>27}")
    for label, _, _ in scenarios:
        for kind in ("fresh", "warm"):
            whole, retr, cpu = best[("mailprov", label, kind)]
            row = f"{label + ', ' + kind:<20} {whole:>5.0f} / {retr:>5.0f} {cpu:>5.0f}ms"
            if use_dovecot:
                d_whole, d_retr, d_cpu = best[("dovecot", label, kind)]
                row += f" {d_whole:>5.0f} / {d_retr:>5.0f} {d_cpu:>5.0f}ms"
                row += f"   {whole / d_whole:>4.2f} / {retr / d_retr:>4.2f} cpu {d_cpu / cpu:>4.2f}"
            print(row)


if __name__ == "__main__":
    main()
