"""The worker-process model: sessions in workers, limits and queue in the main process, no orphans.

Server on 127.0.3.19 with two workers; clients bind 127.0.3.130-139.
"""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import socket
import ssl
import time

from tests.peers.mailprov_server import MailprovTree, alive, children, run_mailprov

IP = "127.0.3.19"


def test_sessions_spread_over_workers_and_workers_die_with_the_master():
    tree = MailprovTree.create(
        hostname="mx.beta.test",
        domains=["beta.test"],
        ip=IP,
        smtp={"processes": 2},
        outbound={"transports": [{"domain": "*", "host": "127.0.3.18", "port": 9, "tls": "none"}]},
    )
    server = None
    try:
        tree.add_user("john@beta.test", "pw")
        tree.add_alias("fwd@beta.test", "john@beta.test", "far@elsewhere.test")
        server = run_mailprov(tree.config_path)
        workers = children(server.proc.pid)
        assert len(workers) == 2
        # Several sessions at once: the master hands them to both workers.
        sessions = [smtplib.SMTP(IP, tree.ports["smtp"], source_address=(f"127.0.3.{130 + i}", 0), timeout=20) for i in range(4)]
        for i, s in enumerate(sessions):
            s.sendmail("a@remote.test", ["john@beta.test"], b"Subject: spread-%d\r\n\r\nx\r\n" % i)
        # Mixed recipients from a worker: queued there, delivered locally by the master's runner.
        assert sessions[0].mail("a@remote.test")[0] == 250
        assert sessions[0].rcpt("fwd@beta.test")[0] == 250
        code, reply = sessions[0].data(b"Subject: via-queue\r\n\r\nx\r\n")
        assert code == 250 and b"queued as" in reply
        for s in sessions:
            s.quit()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(tree.maildir_files("john@beta.test")) < 5:
            time.sleep(0.05)
        files = tree.maildir_files("john@beta.test")
        assert len(files) == 5
        writers = {f.name.split("P", 1)[1].split("Q", 1)[0] for f in files}  # the pid in each Maildir name
        assert writers <= {str(p) for p in [*workers, server.proc.pid]}
        assert len(writers & {str(p) for p in workers}) == 2  # both workers served sessions
        assert str(server.proc.pid) in writers  # the queued one was delivered by the master's runner

        os.kill(server.proc.pid, signal.SIGKILL)  # the master alone
        server.proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(w) for w in workers):
            time.sleep(0.05)
        assert not any(alive(w) for w in workers), "workers outlived their master"
        server = run_mailprov(tree.config_path)  # the ports are free again
    finally:
        if server is not None:
            server.stop()
        tree.cleanup()


def test_failed_tls_handshakes_do_not_use_up_connection_slots():
    tree = MailprovTree.create(
        hostname="mx.beta.test", domains=["beta.test"], ip="127.0.3.21", smtp={"processes": 2, "max_connections_per_client": 2}
    )
    server = None
    source = ("127.0.3.140", 0)
    try:
        server = run_mailprov(tree.config_path)
        port = tree.ports["submissions"]
        for _ in range(4):  # not TLS at all: the handshake fails before any SMTP session exists
            with socket.create_connection((tree.ip, port), source_address=source, timeout=10) as sock:
                sock.sendall(b"EHLO plain-text-on-465\r\n")
                with contextlib.suppress(OSError):
                    sock.recv(100)
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        deadline = time.monotonic() + 10
        while True:  # the releases travel back to the master asynchronously
            held = []
            try:
                for _ in range(2):
                    held.append(smtplib.SMTP_SSL(tree.ip, port, source_address=source, timeout=10, context=context))
                break
            except (OSError, smtplib.SMTPException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
            finally:
                for s in held:
                    s.close()
    finally:
        if server is not None:
            server.stop()
        tree.cleanup()


def test_mail_is_still_accepted_when_every_worker_is_killed():
    """Both workers SIGKILLed: the master restarts them, or, when server.user cannot run the interpreter
    (a checkout under /root, as here and in CI), serves the SMTP sessions itself, plain and implicit TLS."""
    tree = MailprovTree.create(hostname="mx.beta.test", domains=["beta.test"], ip="127.0.3.22", smtp={"processes": 2})
    server = None
    try:
        tree.add_user("john@beta.test", "pw")
        server = run_mailprov(tree.config_path)
        workers = children(server.proc.pid)
        assert len(workers) == 2
        restartable = "an SMTP worker that dies cannot be restarted" not in server.log()
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(w) for w in workers):
            time.sleep(0.05)
        time.sleep(1.5)  # the master waits a second before it restarts (or gives up restarting)
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        deadline = time.monotonic() + 20
        while True:  # a restarted worker may still be loading: bounded retries
            try:
                with smtplib.SMTP(tree.ip, tree.ports["smtp"], timeout=20) as s:
                    s.sendmail("a@remote.test", ["john@beta.test"], b"Subject: after-kill\r\n\r\nx\r\n")
                with smtplib.SMTP_SSL(tree.ip, tree.ports["submissions"], timeout=20, context=context) as s:
                    assert s.ehlo()[0] == 250
                break
            except (OSError, smtplib.SMTPException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        (written,) = tree.maildir_files("john@beta.test")
        writer = written.name.split("P", 1)[1].split("Q", 1)[0]
        now = set(children(server.proc.pid))
        if restartable:
            assert writer in {str(p) for p in now} and not now & set(workers)
        else:
            assert writer == str(server.proc.pid), server.log()
            assert "this process serves the SMTP sessions itself" in server.log()
    finally:
        if server is not None:
            server.stop()
        tree.cleanup()
