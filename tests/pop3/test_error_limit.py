"""The POP3 error limit counts protocol errors only, compared with Dovecot on the same dialogue.

RFC 1939 5 answers a command about a message that is not there with "-ERR no such message": a
well-formed command, which a well-behaved client sends when another session removed the message.
mailprov counted every -ERR and hung up on the tenth; it now counts only protocol errors. Dovecot (2.3,
measured here) counts every failed command but only while they come in a row: any successful command
resets its count, and the 21st failure in a row ends the session. The dialogue below is what a
well-behaved client does (a refusal, then a command that works, fifteen times): both servers keep it.

Addresses in 127.0.16.0/24: mailprov .41, Dovecot .40.
"""

from __future__ import annotations

import poplib
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import require_programs
from tests.peers.dovecot import DovecotPOP3
from tests.peers.mailprov_server import free_port
from tests.peers.pop3_server import POP3Thread
from tests.pop3.conftest import PASSWORD
from tests.pop3.helpers import deliver, message

REFUSED = ["RETR 99", "DELE 99", "LIST 99", "UIDL 99", "TOP 99 0"] * 3  # 15 refusals, over the limit of 10


@pytest.fixture
def pop3_host() -> str:
    return "127.0.16.41"


def refusals_then_stat(host: str, port: int) -> tuple[int, tuple[int, int]]:
    """Log in as john, send each REFUSED line (it must get -ERR) followed by a NOOP, then STAT:
    (refusals seen, STAT's answer)."""
    client = poplib.POP3(host, port, timeout=20)
    try:
        client.user("john@example.test")
        client.pass_(PASSWORD)
        refused = 0
        for line in REFUSED:
            with pytest.raises(poplib.error_proto):
                client._shortcmd(line)
            refused += 1
            client.noop()
        return refused, client.stat()
    finally:
        client.close()


def test_no_such_message_does_not_count_toward_the_error_limit(pop3_config):
    """15 "no such message" refusals between good commands, then STAT: Dovecot still answers, so must we."""
    require_programs("dovecot", "doveadm")
    body = message("limit")
    config = pop3_config()
    deliver(Path(config.paths.mail_dir) / "example.test" / "john", body)
    root = Path(tempfile.mkdtemp(prefix="dovecot-limit-", dir="/tmp"))
    try:
        dovecot = DovecotPOP3(root, "127.0.16.40", free_port("127.0.16.40"), {"john@example.test": PASSWORD})
        deliver(dovecot.maildir("john@example.test"), body)
        with dovecot:
            theirs = refusals_then_stat(dovecot.host, dovecot.port)
        with POP3Thread(config) as server:
            ours = refusals_then_stat(*server.plain)
        assert ours[0] == theirs[0] == len(REFUSED)
        assert ours[1][0] == theirs[1][0] == 1  # the session is alive: STAT answers, one message
    finally:
        shutil.rmtree(root, ignore_errors=True)
