"""A full mail or queue file system: 452 4.3.1, nothing accepted is lost or truncated, service resumes.

The queue and the mailboxes each live on their own small tmpfs mounted by the test. A filler file
takes the space; freeing it gives the space back, without restarting the server.
"""

from __future__ import annotations

import smtplib

import pytest

from mailprov.queue.store import parse
from tests.faults.conftest import queue_empty, wait_until

pytestmark = [pytest.mark.peers, pytest.mark.timeout(180)]

LOCAL, REMOTE = "alice@faults.test", "carol@remote.test"


def body(n: int, size: int = 20000) -> bytes:
    return (f"Subject: disk full {n}\r\nMessage-ID: <full-{n}@client.test>\r\n\r\n").encode() + (f"line {n} " * 8 + "\r\n").encode() * (
        size // 60
    )


def send(host: str, port: int, n: int, rcpts: list[str]) -> tuple[int, bytes]:
    """One transaction; returns the DATA reply (code, text), or the first refusal."""
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.ehlo("full.client.test")
        code, text = client.mail("load@client.test")
        if code != 250:
            return code, text
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code != 250:
                return code, text
        return client.data(body(n))


def test_full_disks_refuse_with_452_and_lose_nothing(make_tree, mailprov_server, smtp_sink, tmpfs) -> None:
    sink = smtp_sink()
    tree = make_tree(
        queue={"retry_min": 1, "retry_max": 1, "scan_interval": 0.3},
        outbound={"transports": [{"domain": "remote.test", "host": sink.ip, "port": sink.port, "tls": "none"}]},
    )
    queue_fs = tmpfs(tree.queue_dir, "2m")
    mail_fs = tmpfs(tree.mail_dir, "2m")
    tree.chown()
    server = mailprov_server(tree)
    host, port = tree.ip, tree.ports["smtp"]
    accepted: dict[int, list[str]] = {}

    # 1. Mailboxes full, queue fine: local mail is still accepted (into the queue) and its delivery defers.
    mail_fs.fill()
    for n in range(3):
        code, text = send(host, port, n, [LOCAL])
        assert code == 250, text
        accepted[n] = [LOCAL]
    assert wait_until(lambda: tree.queue_files("deferred"), 20), "local delivery to a full disk must defer"
    assert not tree.maildir_files(LOCAL)

    # 2. Both full: the client is told to come back later, 452 4.3.1 (RFC 3463: mail system full).
    queue_fs.fill()
    refused = [send(host, port, 100 + n, [LOCAL, REMOTE]) for n in range(3)]
    for code, text in refused:
        assert code == 452 and text.startswith(b"4.3.1"), (code, text)

    # Retries keep failing while both stay full (retry_min is 1 s); queued items stay intact meanwhile.
    attempts = server.log().count("status=deferred")
    assert wait_until(lambda: server.log().count("status=deferred") >= attempts + 6, 30), server.log()[-2000:]
    for path in tree.queue_files("deferred") + tree.queue_files("active") + tree.queue_files("incoming"):
        item, message = parse(path.read_bytes())
        n = int(item.id and message.split(b"Message-ID: <full-", 1)[1].split(b"@", 1)[0])
        assert message.endswith(body(n)), f"queue file {path.name} is truncated"

    # 3. Space returns: everything accepted is delivered, in full, without a restart.
    queue_fs.free()
    mail_fs.free()
    for n in range(200, 203):
        code, text = send(host, port, n, [LOCAL, REMOTE])
        assert code == 250, text
        accepted[n] = [LOCAL, REMOTE]
    stuck = lambda: [f"{p.parent.name}/{p.name}" for s in ("active", "deferred") for p in tree.queue_files(s)]  # noqa: E731
    assert wait_until(lambda: queue_empty(tree), 60, 0.2), f"queue did not drain (stranded after a failed write?): {stuck()}"
    local = {p.read_bytes().split(b"Message-ID: <full-", 1)[1].split(b"@", 1)[0]: p.read_bytes() for p in tree.maildir_files(LOCAL)}
    for n, rcpts in accepted.items():
        if LOCAL in rcpts:
            data = local.get(str(n).encode())
            assert data is not None, f"message {n} lost"
            assert data.endswith(body(n)), f"message {n} truncated in the Maildir"
    assert len(local) == sum(1 for r in accepted.values() if LOCAL in r)
    remote_ids = [p.read_bytes() for p in sink.files()]
    assert sum(1 for d in remote_ids if b"Message-ID: <full-2" in d) == 3
    assert not tree.queue_files("corrupt")
