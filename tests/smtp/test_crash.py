"""Crash safety: a 250 to DATA means the message is on disk. Several clients send a few thousand messages,
the server is killed with SIGKILL mid-stream, restarted, and every message that got a 250 is delivered.

Four in five messages go to john@beta.test (all-local: the Maildir file is the durable copy); one in five
to fwd@beta.test, an alias for john and a remote address (the queue file is the durable copy; the remote
copy waits in the queue because the route leads to a closed port). Server on 127.0.3.17, clients bind
127.0.3.120-127.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time

import pytest

from tests.peers.mailprov_server import MailprovTree, run_mailprov

IP = "127.0.3.17"
TOTAL = 3000
KILL_AFTER = 1200
CLIENTS = 8


@pytest.mark.slow
def test_sigkill_mid_stream_loses_no_acknowledged_message():
    tree = MailprovTree.create(
        hostname="mx.beta.test",
        domains=["beta.test"],
        ip=IP,
        smtp={"max_connections_per_client": 50},
        queue={"retry_min": 3600, "retry_max": 3600},
        outbound={"transports": [{"domain": "*", "host": "127.0.3.18", "port": 9, "tls": "none"}]},
    )
    server = None
    try:
        tree.add_user("john@beta.test", "pw")
        tree.add_alias("fwd@beta.test", "john@beta.test", "far@elsewhere.test")
        server = run_mailprov(tree.config_path)
        acked: set[int] = set()
        lock = threading.Lock()
        numbers = iter(range(TOTAL))
        stop = threading.Event()

        def client(k: int) -> None:
            s = None
            while not stop.is_set():
                with lock:
                    n = next(numbers, None)
                if n is None:
                    return
                rcpt = "fwd@beta.test" if n % 5 == 0 else "john@beta.test"
                try:
                    if s is None:
                        s = smtplib.SMTP(IP, tree.ports["smtp"], source_address=(f"127.0.3.{120 + k}", 0), timeout=10)
                        s.ehlo("crash.test")
                    s.mail("sender@remote.test")
                    s.rcpt(rcpt)
                    code, _ = s.data(b"Subject: crash-%d\r\n\r\nmessage %d\r\n" % (n, n))
                    if code == 250:
                        with lock:
                            acked.add(n)
                except (OSError, smtplib.SMTPException):
                    return  # the server is gone: this message was never acknowledged

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while len(acked) < KILL_AFTER and time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        server.kill()  # SIGKILL, mid-stream
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert len(acked) >= KILL_AFTER, f"only {len(acked)} messages acknowledged before the kill"

        server = run_mailprov(tree.config_path)  # restart: the queue is scanned and resumed
        pattern = re.compile(rb"Subject: crash-(\d+)\r\n")
        deadline = time.monotonic() + 120
        while True:
            delivered: dict[int, int] = {}
            for path in tree.maildir_files("john@beta.test"):
                match = pattern.search(path.read_bytes())
                if match:
                    delivered[int(match.group(1))] = delivered.get(int(match.group(1)), 0) + 1
            missing = acked - delivered.keys()
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:10]}"

        # Every acknowledged message for the alias also waits in the queue for its remote copy.
        queued = set()
        for state in ("incoming", "active", "deferred"):
            for path in tree.queue_files(state):
                match = pattern.search(path.read_bytes())
                if match:
                    queued.add(int(match.group(1)))
        forwarded = {n for n in acked if n % 5 == 0}
        assert forwarded <= queued, f"{len(forwarded - queued)} forwarded messages missing from the queue"
        duplicates = sum(1 for c in delivered.values() if c > 1)
        print(f"acknowledged {len(acked)}, delivered {len(delivered)}, duplicates {duplicates}")
    finally:
        if server is not None:
            server.stop()
        tree.cleanup()
