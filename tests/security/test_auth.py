"""Authentication: brute force is slowed and cut off per client address, password checks do the same
work whether or not the user exists, and no password or secret ever reaches a log.

Timing is never asserted here (bench/soak.py prints measured check times); the equal-work property is
checked structurally: one argon2id verification per attempt, against a hash of the same parameters.
"""

from __future__ import annotations

import base64
import poplib
import smtplib
import socket
from pathlib import Path

import argon2
import pytest

from mailprov import users
from mailprov.limits import FailureThrottle
from mailprov.users import UserDB
from tests.peers.mailprov_server import MailprovTree, run_mailprov, worker_holding
from tests.security.conftest import insecure_context, next_ip

pytestmark = [pytest.mark.peers]

USER, PASSWORD = "alice@sec.test", "Corr3ct-Horse-Battery-Staple"
ATTACKER, HONEST = "127.0.7.152", "127.0.7.153"


@pytest.fixture
def mta():
    tree = MailprovTree.create(
        hostname="mx.sec.test",
        domains=["sec.test"],
        ip=next_ip(),
        server={"log_level": "debug"},
        smtp={"auth_failure_delay": 0.05, "max_auth_failures": 4},
        pop3={"auth_failure_delay": 0.05, "max_auth_failures": 3},
    )
    tree.add_user(USER, PASSWORD)
    server = run_mailprov(tree.config_path, services="all")
    yield tree, server
    server.stop()
    tree.cleanup()


class BoundPOP3SSL(poplib.POP3_SSL):
    """POP3 over TLS from a chosen source address (poplib has no source_address)."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self.source = source
        super().__init__(host, port, timeout=20, context=insecure_context())

    def _create_socket(self, timeout: float):  # type: ignore[no-untyped-def]
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
        return self.context.wrap_socket(sock, server_hostname=self.host)


def smtps(tree: MailprovTree, source: str) -> smtplib.SMTP_SSL:
    client = smtplib.SMTP_SSL(tree.ip, tree.ports["submissions"], timeout=20, context=insecure_context(), source_address=(source, 0))
    client.ehlo("client.test")
    return client


def try_login(tree: MailprovTree, source: str, password: str) -> int:
    """One AUTH PLAIN on a fresh connection: the reply code (421 when the server hung up on us)."""
    try:
        client = smtps(tree, source)
    except smtplib.SMTPServerDisconnected:
        return 421
    try:
        blob = base64.b64encode(f"\0{USER}\0{password}".encode()).decode()
        code, _ = client.docmd("AUTH", f"PLAIN {blob}")
        return code
    except smtplib.SMTPServerDisconnected:
        return 421
    finally:
        client.close()


def test_limiters_slow_each_failure_more_and_count_per_address() -> None:
    now = [0.0]
    smtp = FailureThrottle(0.5, 3, clock=lambda: now[0])
    assert [smtp.fail("192.0.2.1") for _ in range(3)] == [0.5, 1.0, 1.5]  # each failure answered later
    assert smtp.blocked("192.0.2.1") and not smtp.blocked("192.0.2.2")
    now[0] += 901
    assert not smtp.blocked("192.0.2.1"), "failures are forgotten after the window"
    # SMTP and POP3 share this one class (mailprov.limits); the live tests below prove both servers use it.


def test_smtp_brute_force_is_cut_off_per_address(mta) -> None:
    tree, _server = mta
    codes = [try_login(tree, ATTACKER, f"guess-{i}") for i in range(8)]
    assert codes[:3] == [535, 535, 535], codes
    assert all(code == 421 for code in codes[4:]), f"a blocked address kept guessing: {codes}"
    assert try_login(tree, ATTACKER, PASSWORD) == 421, "a blocked address must not get in even with the right password"
    assert try_login(tree, HONEST, PASSWORD) == 235, "another address is not affected"


def test_pop3_brute_force_is_cut_off_per_address(mta) -> None:
    tree, _server = mta
    host, port = tree.data["pop3"]["tls_listen"][0].rsplit(":", 1)
    replies = []
    for i in range(3):
        client = BoundPOP3SSL(host, int(port), ATTACKER)
        try:
            client.user(USER)
            client.pass_(f"guess-{i}")
        except poplib.error_proto as exc:
            replies.append(exc.args[0])
        try:
            client.capa()
            replies.append(b"still connected")
        except (poplib.error_proto, OSError):
            replies.append(b"disconnected")
        client.close()
    assert replies[0].startswith(b"-ERR [AUTH]") and replies[1] == b"still connected", replies
    assert replies[-1] == b"disconnected", f"the third failure must disconnect: {replies}"
    honest = BoundPOP3SSL(host, int(port), HONEST)
    honest.user(USER)
    honest.pass_(PASSWORD)
    honest.quit()


def test_unknown_users_cost_one_argon2_verify_of_the_same_parameters(tmp_path: Path, monkeypatch) -> None:
    db = UserDB(tmp_path / "users")
    db.add(USER, PASSWORD)
    calls: list[str] = []
    real = users._hasher

    class Counting:
        def verify(self, hashed: str, password: str) -> bool:
            calls.append(hashed)
            return real.verify(hashed, password)

    monkeypatch.setattr(users, "_hasher", Counting())
    for login, password in [(USER, PASSWORD), (USER, "wrong"), ("nobody@sec.test", "wrong"), ("nobody@sec.test", PASSWORD)]:
        calls.clear()
        db.verify(login, password)
        assert len(calls) == 1, f"{login}: {len(calls)} argon2 verifications (must be exactly one)"
        params = argon2.extract_parameters(calls[0])
        assert params == argon2.extract_parameters(db._users[USER]), "the dummy hash must cost what a real one costs"
    assert db.verify(USER, PASSWORD) and not db.verify("nobody@sec.test", PASSWORD)


def test_no_password_or_secret_in_any_log(mta) -> None:
    tree, server = mta
    secrets_seen = [PASSWORD, base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(), base64.b64encode(PASSWORD.encode()).decode()]
    wrong = "Wr0ng-but-Secret-Too"
    secrets_seen += [wrong, base64.b64encode(f"\0{USER}\0{wrong}".encode()).decode(), base64.b64encode(wrong.encode()).decode()]
    # SMTP: AUTH PLAIN and LOGIN, right and wrong, on 465; the right one then sends a message.
    for password in (PASSWORD, wrong):
        client = smtps(tree, HONEST)
        try:
            client.user, client.password = USER, password
            client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        except smtplib.SMTPAuthenticationError:
            pass
        client.close()
    client = smtps(tree, HONEST)
    client.login(USER, PASSWORD)
    client.sendmail(USER, [USER], f"Subject: s\r\n\r\nmy password is not {wrong[:3]}\r\n")
    client.quit()
    # POP3: USER/PASS and AUTH PLAIN over TLS, right and wrong.
    host, port = tree.data["pop3"]["tls_listen"][0].rsplit(":", 1)
    for password in (PASSWORD, wrong):
        pop = BoundPOP3SSL(host, int(port), HONEST)
        try:
            pop.user(USER)
            pop.pass_(password)
        except poplib.error_proto:
            pass
        pop.close()
        pop = BoundPOP3SSL(host, int(port), HONEST)
        try:
            blob = base64.b64encode(f"\0{USER}\0{password}".encode()).decode()
            pop._shortcmd(f"AUTH PLAIN {blob}")
        except poplib.error_proto:
            pass
        pop.close()
    server.stop()
    text = server.log()
    assert "AUTH failure" in text or "failed login" in text, "the failures should be logged (without the password)"
    for secret in secrets_seen:
        assert secret not in text, f"a secret ({secret[:6]}...) appears in the log"
    key = (tree.root / "state" / "tls").glob("*.key")
    for path in key:
        pem = path.read_text().splitlines()[1]
        assert pem not in text, "the TLS private key appears in the log"


def test_smtp_auth_failures_are_counted_across_worker_processes() -> None:
    """smtp.max_auth_failures is per client address, not per worker: with two workers an attacker that
    spreads its attempts over both still gets 5 in all (addresses 127.0.17.10 and .50)."""
    tree = MailprovTree.create(
        hostname="mx.sec.test",
        domains=["sec.test"],
        ip="127.0.17.10",
        smtp={"processes": 2, "auth_failure_delay": 0.01, "max_auth_failures": 5},
    )
    tree.add_user(USER, PASSWORD)
    server = run_mailprov(tree.config_path)
    sessions: list[smtplib.SMTP_SSL] = []
    try:
        # Two sessions held open at once: the master hands the second to the other (less busy) worker.
        sessions = [smtps(tree, "127.0.17.50") for _ in range(2)]
        address = (tree.ip, tree.ports["submissions"])
        served_by = {worker_holding(server.proc.pid, address, s.sock.getsockname()) for s in sessions}
        assert len(served_by) == 2, "the two sessions should be served by the two workers"

        def attempt(session: smtplib.SMTP_SSL, password: str) -> int:
            blob = base64.b64encode(f"\0{USER}\0{password}".encode()).decode()
            try:
                return session.docmd("AUTH", f"PLAIN {blob}")[0]
            except smtplib.SMTPServerDisconnected:
                return 421

        codes = [attempt(sessions[i % 2], f"guess-{i}") for i in range(4)]  # two failures on each worker
        assert codes == [535, 535, 535, 535], codes
        assert attempt(sessions[0], "guess-4") == 421, "the fifth failure in all uses up the address's attempts"
        # Worker 2 has itself seen only two failures; the master's count says the address is blocked.
        assert attempt(sessions[1], "guess-5") == 421, "the sixth attempt must be refused on the other worker too"
        assert try_login(tree, "127.0.17.50", PASSWORD) == 421, "blocked whatever worker serves it, even with the right password"
        assert try_login(tree, "127.0.17.51", PASSWORD) == 235, "another address is not affected"
    finally:
        for session in sessions:
            session.close()
        server.stop()
        tree.cleanup()
