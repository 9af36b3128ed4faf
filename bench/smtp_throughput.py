#!/usr/bin/env python3
"""SMTP throughput: mailprov against Postfix, same load, same machine, same durability.

Load: Postfix's ``smtp-source`` sends MESSAGES messages of SIZE bytes over SESSIONS concurrent sessions
(a new connection per message, smtp-source's default) to one local user. Two figures per server:

* acceptance rate: messages / seconds until smtp-source has its last 250 to DATA;
* end-to-end rate: messages / seconds until every message is a file in the user's Maildir ``new/``;
* server CPU per message: user + system time of the server's whole process tree during the run, which
  is steadier than the rates on a machine shared with other work.

Both servers fsync what they acknowledge: Postfix its queue file and then the Maildir file; mailprov
the Maildir file (its durable copy for all-local mail, see docs/flow.md). Prints the figures and the
ratio mailprov / Postfix. Usage::

    .venv/bin/python bench/smtp_throughput.py [--messages 5000] [--sessions 20] [--size 1024] [--only mailprov]

Runs on 127.0.3.230-231 (loopback). Needs root for Postfix (skipped, with a note, when not installed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.peers.mailprov_server import MailprovTree, free_port, run_mailprov
from tests.peers.postfix import PostfixPeer

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
USER = "john@beta.test"
SENDER = "alex@alpha.test"


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by process ``root`` and all its descendants, living or
    reaped: the server's whole cost, whatever its process model."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        cpu[pid] = sum(int(f) for f in fields[11:15]) / tick  # utime, stime, cutime, cstime
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += [child for child, parent in parents.items() if parent == pid]
    return total


def count_files(folder: Path) -> int:
    try:
        return len(os.listdir(folder))
    except FileNotFoundError:
        return 0


def drive(
    host: str, port: int, maildir_new: Path, messages: int, sessions: int, size: int, timeout: float, server_pid: int
) -> tuple[float, float, float]:
    """Run smtp-source; return (acceptance seconds, end-to-end seconds, server CPU seconds)."""
    cpu_before = tree_cpu(server_pid)
    start = time.monotonic()
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-l", str(size), "-m", str(messages), "-f", SENDER, "-t", USER, f"{host}:{port}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    accepted = time.monotonic() - start
    if result.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({result.returncode}): {result.stderr.strip()[:500]}")
    deadline = start + timeout
    while count_files(maildir_new) < messages:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count_files(maildir_new)} of {messages} messages reached {maildir_new} in {timeout:.0f} s")
        time.sleep(0.01)
    end_to_end = time.monotonic() - start
    time.sleep(0.5)  # let short-lived children (Postfix's) be reaped into their parents' counts
    return accepted, end_to_end, tree_cpu(server_pid) - cpu_before


def bench_mailprov(args: argparse.Namespace) -> tuple[float, float, float]:
    ip = "127.0.3.230"
    smtp = {"max_connections_per_client": 100, "processes": args.processes}
    tree = MailprovTree.create(hostname="mx.beta.test", domains=["beta.test", "alpha.test"], ip=ip, smtp=smtp)
    try:
        tree.add_user(USER, "bench-password")
        server = run_mailprov(tree.config_path)
        try:
            maildir = tree.mail_dir / "beta.test" / "john" / "new"
            return drive(ip, tree.ports["smtp"], maildir, args.messages, args.sessions, args.size, 600, server.proc.pid)
        finally:
            server.stop()
    finally:
        tree.cleanup()


def bench_postfix(args: argparse.Namespace) -> tuple[float, float, float]:
    ip = "127.0.3.231"
    peer = PostfixPeer(ip=ip, port=free_port(ip), hostname="mx.beta.test", domains=("beta.test",), users=(USER,))
    try:
        peer.start()
        master = int((peer.root / "spool" / "pid" / "master.pid").read_text().strip())
        maildir = peer.mail_dir / "beta.test" / "john" / "new"
        return drive(ip, peer.port, maildir, args.messages, args.sessions, args.size, 600, master)
    finally:
        peer.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--only", choices=("mailprov", "postfix"))
    parser.add_argument("--processes", type=int, default=0, help="mailprov smtp.processes (0: one per CPU, the default)")
    args = parser.parse_args()
    if not Path(SMTP_SOURCE).exists():
        print("smtp-source (Debian package postfix) is not installed: nothing to measure", file=sys.stderr)
        return 1
    print(f"load: {args.messages} messages x {args.size} bytes, {args.sessions} sessions, smtp-source, one local user")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    figures: dict[str, tuple[float, float, float]] = {}
    if args.only in (None, "mailprov"):
        figures["mailprov"] = bench_mailprov(args)
    if args.only in (None, "postfix"):
        if os.geteuid() != 0 or not Path("/usr/sbin/postfix").exists():
            print("postfix: not measured (needs the postfix package and root)")
        else:
            figures["postfix"] = bench_postfix(args)
    for name, (accepted, end_to_end, cpu) in figures.items():
        print(
            f"{name:9} accept {args.messages / accepted:7.0f} msg/s ({accepted:6.2f} s)   "
            f"end-to-end {args.messages / end_to_end:7.0f} msg/s ({end_to_end:6.2f} s)   "
            f"server CPU {1000 * cpu / args.messages:5.2f} ms/msg"
        )
    if len(figures) == 2:
        (ma, me, mc), (pa, pe, pc) = figures["mailprov"], figures["postfix"]
        print(f"ratio mailprov/postfix: accept {pa / ma:.2f}x   end-to-end {pe / me:.2f}x   CPU per message {mc / pc:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
