"""Corrupt and truncated queue files are quarantined in corrupt/ with a log line; the rest of the queue flows.

Files are planted before the server starts (in incoming/, active/ and deferred/) and one more while it
runs. Quarantined files are moved, never deleted or changed.
"""

from __future__ import annotations

import smtplib
import time

import pytest

from mailprov.queue.store import QueueItem, QueueStore, Recipient, new_queue_id
from tests.faults.conftest import message_ids, queue_empty, wait_until

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

LOCAL = "alice@faults.test"


def item_bytes(n: int, *, recipients: list[Recipient] | None = None) -> tuple[QueueItem, bytes]:
    message = f"Subject: queued {n}\r\nMessage-ID: <queued-{n}@client.test>\r\n\r\n".encode() + b"hello\r\n" * 50
    item = QueueItem(
        id=new_queue_id(),
        sender="sender@client.test",
        recipients=recipients if recipients is not None else [Recipient(LOCAL, LOCAL, True)],
        arrival=time.time(),
        size=len(message),
    )
    return item, message


def test_corrupt_files_are_quarantined_and_the_rest_flows(make_tree, mailprov_server) -> None:
    tree = make_tree(queue={"retry_min": 1, "retry_max": 1, "scan_interval": 0.3})
    store = QueueStore(tree.queue_dir)
    store.ensure_dirs()
    good = []
    for n, state in enumerate(("incoming", "incoming", "deferred", "active", "deferred")):
        item, message = item_bytes(n)
        (tree.queue_dir / state / item.id).write_bytes(item.header_bytes() + message)
        good.append(f"queued-{n}@client.test")

    bad: dict[str, tuple[str, bytes]] = {}
    item, message = item_bytes(100)
    bad[item.id] = ("incoming", b"\x00\xff garbage, not a queue file\n" * 3)
    item, message = item_bytes(101)
    bad[item.id] = ("deferred", (item.header_bytes() + message)[:40])  # cut inside the JSON header
    item, message = item_bytes(102)
    bad[item.id] = ("incoming", (item.header_bytes() + message)[:-100])  # header intact, message cut short
    item, message = item_bytes(103, recipients=[])
    bad[item.id] = ("active", item.header_bytes() + message)  # no recipients
    item, message = item_bytes(104)
    bad[item.id] = ("deferred", item.header_bytes().replace(b'"sender"', b'"sender":{"x":1},"y"', 1) + message)
    for name, (state, data) in bad.items():
        (tree.queue_dir / state / name).write_bytes(data)
    tree.chown()

    server = mailprov_server(tree)
    # One more while it runs, and live traffic must flow beside the quarantine.
    late, _ = item_bytes(105)
    bad[late.id] = ("incoming", b"MAILPROV-QUEUE 1\n{not json}\n")
    (tree.queue_dir / "incoming" / late.id).write_bytes(bad[late.id][1])
    tree.chown()
    with smtplib.SMTP(tree.ip, tree.ports["smtp"], timeout=30) as client:
        client.sendmail("sender@client.test", [LOCAL], "Subject: live\r\nMessage-ID: <live@client.test>\r\n\r\nlive\r\n")

    assert wait_until(lambda: len(tree.queue_files("corrupt")) == len(bad), 30), (
        f"quarantined {[p.name for p in tree.queue_files('corrupt')]} of {sorted(bad)}\n{server.log()[-3000:]}"
    )
    assert wait_until(lambda: queue_empty(tree), 30), server.log()[-3000:]
    server.stop()

    for name, (state, data) in bad.items():
        assert (tree.queue_dir / "corrupt" / name).read_bytes() == data, f"{state}/{name} changed in quarantine"
        assert any(name in line and "quarantined" in line for line in server.log().splitlines()), f"no log line for {state}/{name}"
    delivered = message_ids(tree.maildir_files(LOCAL))
    for mid in [*good, "live@client.test"]:
        assert delivered[mid] == 1, (mid, dict(delivered))
    for n in range(100, 106):
        assert delivered[f"queued-{n}@client.test"] == 0, "a corrupt queue file was delivered"
