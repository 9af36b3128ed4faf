"""mailprov's IMAP server against real clients: Python's imaplib and IMAPClient (PyPI), on 127.0.13.x."""

from __future__ import annotations

import imaplib
import socket
import threading
import time
from pathlib import Path

import pytest
from imapclient import IMAPClient

from mailprov.maildir import deliver_file
from tests.imap.conftest import PASSWORD
from tests.peers.imap_server import IMAPThread
from tests.peers.pop3_server import client_tls_context

MSG = b"From: alex@example.test\r\nTo: john@example.test\r\nSubject: hello\r\n\r\nhi john\r\n"


def login(server: IMAPThread, user: str = "john@example.test") -> imaplib.IMAP4:
    client = imaplib.IMAP4(*server.plain, timeout=10)
    client.login(user, PASSWORD)
    return client


def inbox(server: IMAPThread) -> Path:
    return Path(server.config.paths.mail_dir) / "example.test" / "john"


def test_imaplib_append_select_fetch_store_copy_expunge(imap_server):
    c = login(imap_server)
    typ, data = c.append("INBOX", "(\\Flagged)", imaplib.Time2Internaldate(1700000000), MSG)
    assert typ == "OK" and b"[APPENDUID " in data[0]  # RFC 4315
    typ, data = c.select("INBOX")
    assert data == [b"1"]
    typ, data = c.fetch("1", "(FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
    head, body = data[0]
    assert b"FLAGS (\\Flagged)" in head and b'INTERNALDATE "14-Nov-2023 22:13:20 +0000"' in head
    assert body == MSG and f"RFC822.SIZE {len(MSG)}".encode() in head
    typ, data = c.fetch("1", "(BODY[TEXT])")  # not PEEK: sets \Seen and reports it (RFC 3501 6.4.5)
    assert b"\\Seen" in data[-1] if isinstance(data[-1], bytes) else b"\\Seen" in data[0][0]
    typ, data = c.copy("1", "Trash")
    assert typ == "OK" and b"COPYUID" in data[0]
    typ, data = c.store("1", "+FLAGS.SILENT", "(\\Deleted)")
    assert data == [None]  # .SILENT: no untagged FETCH
    typ, data = c.expunge()
    assert data == [b"1"]
    assert c.status("Trash", "(MESSAGES UNSEEN)")[1] == [b"Trash (MESSAGES 1 UNSEEN 0)"]
    c.logout()


def test_two_sessions_see_each_others_changes_rfc3501_5_2(imap_server):
    phone, desktop = login(imap_server), login(imap_server)
    for _ in range(3):
        phone.append("INBOX", None, None, MSG)
    phone.select("INBOX")
    desktop.select("INBOX")
    desktop.store("2", "+FLAGS", "(\\Deleted)")
    desktop.expunge()
    desktop.store("1", "+FLAGS", "(\\Answered)")
    phone.untagged_responses.clear()
    phone.noop()
    assert phone.untagged_responses.get("EXPUNGE") == [b"2"]
    fetches = phone.untagged_responses.get("FETCH", [])
    assert any(b"\\Answered" in f for f in fetches)
    # a delivery by the MDA (a file in new/) shows up as EXISTS at the next command
    deliver_file(inbox(imap_server), MSG, "test")
    phone.untagged_responses.clear()
    phone.noop()
    assert phone.untagged_responses.get("EXISTS") == [b"3"]
    phone.logout()
    desktop.logout()


def test_imapclient_folders_move_search_idle(imap_server):
    host, port = imap_server.plain
    with IMAPClient(host, port=port, ssl=False, timeout=10) as c:
        c.login("john@example.test", PASSWORD)
        folders = {name: flags for flags, _delim, name in c.list_folders()}
        assert b"\\Sent" in folders["Sent"] and b"\\Trash" in folders["Trash"]  # RFC 6154
        assert c.namespace().personal == (("", "."),)
        c.create_folder("Archive.2026")
        assert c.folder_exists("Archive.2026")
        c.append("INBOX", MSG)
        c.select_folder("INBOX")
        assert c.search(["SUBJECT", "hello"]) == [1]
        uids = c.search(["ALL"])
        c.move(uids, "Archive.2026")  # RFC 6851
        assert c.search(["ALL"]) == []
        assert c.folder_status("Archive.2026", [b"MESSAGES"])[b"MESSAGES"] == 1
        c.idle()
        deliver_file(inbox(imap_server), MSG, "test")
        started = time.monotonic()
        responses = c.idle_check(timeout=5)
        latency = time.monotonic() - started
        c.idle_done()
        assert (2, b"EXISTS") in responses or (1, b"EXISTS") in responses, responses
        assert latency < 5
        c.rename_folder("Archive.2026", "Old")
        c.delete_folder("Old")


def test_logindisabled_before_starttls_then_capabilities_again_rfc3501_6_2_1(imap_config):
    with IMAPThread(imap_config(trusted=False)) as server:
        c = imaplib.IMAP4(*server.plain, timeout=10)
        assert "LOGINDISABLED" in c.capabilities and "STARTTLS" in c.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            c.login("john@example.test", PASSWORD)
        c.starttls(ssl_context=client_tls_context(server.config))
        assert "AUTH=PLAIN" in c.capabilities and "LOGINDISABLED" not in c.capabilities
        c.login("john@example.test", PASSWORD)
        c.logout()
        s = imaplib.IMAP4_SSL(*server.tls, ssl_context=client_tls_context(server.config), timeout=10)  # RFC 8314
        s.authenticate("PLAIN", lambda _: b"\0john@example.test\0" + PASSWORD.encode())
        s.logout()


def raw(server: IMAPThread) -> socket.socket:
    sock = socket.create_connection(server.plain, timeout=10)
    assert sock.recv(4096).startswith(b"* OK")
    return sock


def exchange(sock: socket.socket, data: bytes, until: bytes) -> bytes:
    sock.sendall(data)
    out = b""
    deadline = time.monotonic() + 10
    while until not in out and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def test_bad_input_keeps_the_session_usable(imap_server):
    sock = raw(imap_server)
    assert b"a BAD" in exchange(sock, b"a FROB\r\n", b"\r\n")
    assert b"b BAD" in exchange(sock, b"b SELECT INBOX\r\n", b"\r\n")  # wrong state
    assert b"c BAD [TOOBIG]" in exchange(sock, b"c LOGIN {999999999}\r\n", b"\r\n")
    assert b"d BAD" in exchange(sock, b"d NOOP " + b"x" * 70000 + b"\r\n", b"d BAD")
    assert b"e OK" in exchange(sock, b"e NOOP\r\n", b"e ")
    assert b"f BAD" in exchange(sock, b'f LOGIN "a\r\n', b"f ")
    assert b"g NO [AUTHENTICATIONFAILED]" in exchange(sock, b"g LOGIN john@example.test wrong\r\n", b"g ")
    assert b"h OK" in exchange(sock, b"h CAPABILITY\r\n", b"h ")
    sock.close()


def test_disconnect_mid_append_leaves_nothing(imap_server):
    sock = raw(imap_server)
    exchange(sock, f'a LOGIN john@example.test "{PASSWORD}"\r\n'.encode(), b"a OK")
    assert b"+ " in exchange(sock, b"b APPEND INBOX {100000}\r\n", b"\r\n")
    sock.sendall(b"x" * 50000)
    sock.close()
    time.sleep(0.3)
    c = login(imap_server)
    assert c.select("INBOX")[1] == [b"0"]
    c.logout()
    leftovers = [p for p in inbox(imap_server).rglob("*") if p.is_file() and p.parent.name in ("tmp", "new", "cur")]
    assert leftovers == []


def test_failed_logins_are_throttled_then_disconnected(imap_config):
    with IMAPThread(imap_config(max_auth_failures=2, auth_failure_delay=0.2)) as server:
        sock = raw(server)
        started = time.monotonic()
        assert b"NO" in exchange(sock, b"a LOGIN john@example.test bad\r\n", b"a NO")
        out = exchange(sock, b"b LOGIN john@example.test bad\r\n", b"BYE")
        assert b"* BYE" in out and time.monotonic() - started >= 0.6  # 0.2 + 0.4 s
        sock.close()


def test_idle_across_threads_many_sessions(imap_server):
    """Five IDLE sessions all see one delivery (bounded: 10 s)."""
    clients = []
    host, port = imap_server.plain
    for _ in range(5):
        c = IMAPClient(host, port=port, ssl=False, timeout=10)
        c.login("john@example.test", PASSWORD)
        c.select_folder("INBOX")
        c.idle()
        clients.append(c)
    deliver_file(inbox(imap_server), MSG, "test")
    results = []

    def check(c: IMAPClient) -> None:
        results.append(c.idle_check(timeout=5))

    threads = [threading.Thread(target=check, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 5 and all(any(r[1] == b"EXISTS" for r in res) for res in results)
    for c in clients:
        c.idle_done()
        c.logout()


def test_large_append_within_the_limit_and_over_it(imap_config):
    """A 6 MiB APPEND arrives whole (reading is not paused mid-literal); one over APPENDLIMIT is refused
    before the client sends it (RFC 7889 APPENDLIMIT, RFC 3501 7.5)."""
    with IMAPThread(imap_config(append_limit=8 * 1024 * 1024)) as server:
        c = login(server)
        big = MSG + (b"x" * 998 + b"\r\n") * 6300
        assert c.append("INBOX", None, None, big)[0] == "OK"
        c.select("INBOX")
        assert c.fetch("1", "RFC822.SIZE")[1][0] == f"1 (RFC822.SIZE {len(big)})".encode()
        with pytest.raises(imaplib.IMAP4.error, match="TOOBIG"):
            c.append("INBOX", None, None, big + big)
        assert c.noop()[0] == "OK"
        c.logout()


def test_connection_limit_per_client(imap_config):
    with IMAPThread(imap_config(max_connections_per_client=1)) as server:
        first = raw(server)
        second = socket.create_connection(server.plain, timeout=10)
        assert second.recv(4096).startswith(b"* BYE [UNAVAILABLE]")
        second.close()
        assert b"a OK" in exchange(first, b"a NOOP\r\n", b"a ")
        first.close()


def test_autologout_after_the_idle_timeout_rfc3501_5_4(imap_config):
    config = imap_config()
    config.imap.idle_timeout = 1  # the schema refuses less than RFC 3501's 30 minutes; shortened for the test
    with IMAPThread(config) as server:
        sock = raw(server)
        started = time.monotonic()
        out = exchange(sock, b"", b"BYE")
        assert b"* BYE Autologout" in out and 0.9 <= time.monotonic() - started < 5
        sock.close()


def test_commands_pipelined_after_starttls_are_discarded_rfc3501_6_2_1(imap_config):
    """A command sent in plaintext behind STARTTLS must not run inside the TLS session (CVE-2011-0411
    class); the handshake that follows the OK at once must still succeed."""
    with IMAPThread(imap_config(trusted=True)) as server:
        sock = raw(server)
        out = exchange(sock, b'a STARTTLS\r\nb LOGIN john@example.test "' + PASSWORD.encode() + b'"\r\n', b"a OK")
        assert b"a OK" in out and b"b " not in out
        tls = client_tls_context(server.config).wrap_socket(sock, server_hostname="mail.example.test")
        out = exchange(tls, b"c CAPABILITY\r\n", b"c OK")
        assert b"b OK" not in out and b"b NO" not in out and b"c OK" in out
        assert b"AUTH=PLAIN" in out  # still not authenticated: the pipelined LOGIN never ran
        tls.close()


def test_a_client_that_stops_reading_is_dropped_after_the_idle_timeout(imap_config):
    """FETCH of 12 MB, then the client reads nothing: once the idle timeout passes with the output
    stalled, the session is aborted (its unsent output dropped) and the server goes on serving others."""
    config = imap_config(append_limit=16 * 1024 * 1024)
    with IMAPThread(config) as server:
        c = login(server)
        one = MSG + (b"y" * 998 + b"\r\n") * 300  # 40 x 300 kB: output in many batches, more than buffers hold
        for _ in range(40):
            c.append("INBOX", None, None, one)
        big = one * 40
        c.logout()
        config.imap.idle_timeout = 1  # shortened for the test (the schema requires RFC 3501's 30 minutes)
        sock = raw(server)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        exchange(sock, f'a LOGIN john@example.test "{PASSWORD}"\r\n'.encode(), b"a OK")
        exchange(sock, b"b SELECT INBOX\r\n", b"b OK")
        sock.sendall(b"c FETCH 1:* BODY.PEEK[]\r\n")
        time.sleep(4)  # read nothing meanwhile: the server's writes stall
        got = 0
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        except ConnectionResetError:
            pass
        assert got < len(big), "the whole message arrived: the server never gave up on the stalled client"
        sock.close()
        c = login(server)  # the server is fine and serves others
        c.logout()
