"""SIGKILL of the MTA at random moments during a stream of messages, repeated.

Promise under test: a 250 to DATA means the message is on disk. After each kill the server is started
again; at the end every message that got 250 is found at each of its destinations (the local Maildir,
the remote MX) at least once and at most twice: a second copy is only possible when the crash fell
between a delivery and the queue's record of it. The test reports how many such duplicates it saw.

The remote MX is Postfix's smtp-sink (one dump file per transaction); local mail goes to Maildir. A third
of the messages are local only (written straight into Maildir before the 250), a third remote only
(through the queue) and a third both (queue, then both couriers).
"""

from __future__ import annotations

import random
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tests.faults.conftest import message_ids, queue_empty, wait_until

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(600)]

TOTAL = 2400
KILLS = 3
WORKERS = 8
LOCAL, REMOTE = "alice@faults.test", "carol@remote.test"


def recipients_for(n: int) -> tuple[str, ...]:
    return ((LOCAL,), (REMOTE,), (LOCAL, REMOTE))[n % 3]


def build_message(n: int) -> bytes:
    rcpts = recipients_for(n)
    return (
        f"From: <load@client.test>\r\nTo: {', '.join(rcpts)}\r\nSubject: crash stream {n}\r\n"
        f"Message-ID: <crash-{n}@client.test>\r\n\r\nmessage {n}\r\n" + "x" * (200 + n % 700) + "\r\n"
    ).encode()


@dataclass
class Stream:
    """Shared state of the load: what is left to send and what got a 250."""

    todo: list[int]
    acked: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)

    def take(self) -> int | None:
        with self.lock:
            return self.todo.pop() if self.todo else None

    def put_back(self, n: int) -> None:
        with self.lock:
            self.todo.append(n)


def sender(stream: Stream, host: str, port: int, deadline: float) -> None:
    """One client: sends messages over a reused session; reconnects after the server died."""
    client: smtplib.SMTP | None = None
    while time.monotonic() < deadline:
        n = stream.take()
        if n is None:
            break
        if client is None:
            try:
                client = smtplib.SMTP(host, port, timeout=20)
                client.ehlo("load.client.test")
            except (OSError, smtplib.SMTPException):
                client = None
                stream.put_back(n)  # never sent: the server is down, try it again later
                time.sleep(0.05)
                continue
        try:
            refused = client.sendmail("load@client.test", list(recipients_for(n)), build_message(n))
            with stream.lock:
                (stream.failed if refused else stream.acked).add(n)
        except (OSError, smtplib.SMTPException):
            with stream.lock:
                stream.failed.add(n)  # in flight when the server died: no 250, no promise
            try:
                client.close()
            finally:
                client = None
    if client is not None:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def test_sigkill_during_stream_loses_nothing(make_tree, mailprov_server, smtp_sink) -> None:
    sink = smtp_sink()
    tree = make_tree(
        queue={"retry_min": 1, "retry_max": 2, "scan_interval": 0.5},
        outbound={"transports": [{"domain": "remote.test", "host": sink.ip, "port": sink.port, "tls": "none"}]},
    )
    server = mailprov_server(tree)
    stream = Stream(todo=list(range(TOTAL - 1, -1, -1)))
    deadline = time.monotonic() + 400
    threads = [threading.Thread(target=sender, args=(stream, tree.ip, tree.ports["smtp"], deadline)) for _ in range(WORKERS)]
    for t in threads:
        t.start()

    rng = random.Random()
    kills = 0
    marks = sorted(rng.randint(TOTAL * (k + 1) // (KILLS + 2), TOTAL * (k + 2) // (KILLS + 2)) for k in range(KILLS))
    try:
        for mark in marks:
            assert wait_until(lambda mark=mark: len(stream.acked) + len(stream.failed) >= mark, 300, 0.005), "load stalled"
            time.sleep(rng.uniform(0, 0.05))  # a random moment: accepting, writing, delivering or removing
            server.kill()
            kills += 1
            time.sleep(rng.uniform(0, 0.3))
            server = mailprov_server(tree)
    finally:
        for t in threads:
            t.join(timeout=deadline - time.monotonic() + 5)
    assert not stream.todo and not any(t.is_alive() for t in threads), "the load did not finish in time"
    assert wait_until(lambda: queue_empty(tree), 120, 0.2), f"queue not drained: {[p.name for p in tree.queue_files('deferred')][:5]}"
    server.stop()

    local = message_ids(tree.maildir_files(LOCAL, "new") + tree.maildir_files(LOCAL, "cur"))
    remote = message_ids(sink.files())
    lost: list[str] = []
    dups: Counter[str] = Counter()
    for n in sorted(stream.acked):
        mid = f"crash-{n}@client.test"
        for rcpt, seen in ((LOCAL, local), (REMOTE, remote)):
            if rcpt not in recipients_for(n):
                continue
            if seen[mid] == 0:
                lost.append(f"{mid} -> {rcpt}")
            elif seen[mid] > 1:
                dups[rcpt] += seen[mid] - 1
                assert seen[mid] == 2, f"{mid} delivered {seen[mid]} times to {rcpt}"
    unacked_delivered = sum(1 for n in stream.failed if local[f"crash-{n}@client.test"] or remote[f"crash-{n}@client.test"])
    stray = [m for m in list(local) + list(remote) if not m.startswith("crash-")]
    summary = (
        f"crash test: {TOTAL} messages, {kills} SIGKILLs, {len(stream.acked)} got 250, {len(stream.failed)} did not "
        f"({unacked_delivered} of those delivered anyway); lost {len(lost)}; duplicates: {dict(dups) or 0}"
    )
    print(summary)
    assert kills == KILLS
    assert not lost, f"{len(lost)} accepted messages lost, e.g. {lost[:5]}\n{summary}"
    assert not stray, stray[:5]
    assert not tree.queue_files("corrupt"), "a crash must never leave an unreadable queue file"
    assert len(stream.acked) > TOTAL * 0.9
