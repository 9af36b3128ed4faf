"""t03: the queue survives a crash. alpha accepts a message for john@beta.test while beta is down (250:
the queue file is fsynced first), tries, defers it, and is killed with SIGKILL. beta comes up, alpha is
restarted on the same queue, finds the message on disk and delivers it: john's Maildir gets it once,
byte for byte, and alpha's queue is empty.

alpha on 127.0.17.40 routes beta.test to beta on 127.0.17.41 (``outbound.transports``); the client
binds 127.0.17.42. The many-message, random-kill version is tests/smtp/test_crash.py.
"""

from __future__ import annotations

import smtplib
import time

import pytest

from tests.peers.mailprov_server import MailprovTree, run_mailprov

pytestmark = [pytest.mark.peers]

ALPHA, BETA, CLIENT = "127.0.17.40", "127.0.17.41", "127.0.17.42"
BODY = b"Subject: survives\r\nMessage-ID: <t03@alpha.test>\r\n\r\nstill here after a SIGKILL\r\n"


def wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_a_queued_message_is_delivered_after_a_sigkill_and_restart():
    beta = MailprovTree.create(hostname="mx.beta.test", domains=["beta.test"], ip=BETA, smtp={"processes": 1})
    alpha = MailprovTree.create(
        hostname="mx.alpha.test",
        domains=["alpha.test"],
        ip=ALPHA,
        smtp={"processes": 1},  # one process starts fastest; the worker model's crash test is tests/smtp/test_crash.py
        queue={"retry_min": 1, "retry_max": 1},
        outbound={"transports": [{"domain": "beta.test", "host": BETA, "port": beta.ports["smtp"], "tls": "none"}]},
    )
    servers = []
    try:
        beta.add_user("john@beta.test", "pw")
        servers.append(alpha_run := run_mailprov(alpha.config_path))
        with smtplib.SMTP(ALPHA, alpha.ports["smtp"], source_address=(CLIENT, 0), timeout=20) as client:
            assert client.sendmail("alex@alpha.test", ["john@beta.test"], BODY) == {}
        # beta is down: the attempt fails and the message waits in deferred/ for its retry.
        assert wait_for(lambda: alpha.queue_files("deferred"), 15), alpha_run.log()
        alpha_run.kill()
        assert len(alpha.queue_files("deferred") + alpha.queue_files("active")) == 1, "the queue file outlives the process"

        servers.append(run_mailprov(beta.config_path))
        servers.append(run_mailprov(alpha.config_path))
        assert wait_for(lambda: beta.maildir_files("john@beta.test"), 20), servers[-1].log()
        files = beta.maildir_files("john@beta.test")
        assert len(files) == 1 and files[0].read_bytes().endswith(BODY)
        assert wait_for(lambda: not any(alpha.queue_files(s) for s in ("incoming", "active", "deferred")), 10)
        assert "status=sent" in servers[-1].log()
    finally:
        for server in servers:
            server.stop()
        alpha.cleanup()
        beta.cleanup()
