"""The IMAP session (mailprov/imap/session.py) on a real store, without sockets: LIST attributes, the
metadata FETCH path, and SELECT answered from the per-process folder cache (mailprov/imap/store.py)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from mailprov import maildir as md
from mailprov.imap import store as store_module
from mailprov.imap.parser import CommandReader, Complete, parse_command
from mailprov.imap.session import Session
from mailprov.imap.store import UIDLIST, Store
from tests.imap.conftest import PASSWORD


class Out(list):
    def write(self, data: bytes) -> None:
        self.append(data)

    def text(self) -> str:
        return b"".join(self).decode()


def run(session: Session, line: str) -> str:
    reader = CommandReader(literal_limit=1 << 20)
    reader.feed(line.encode() + b"\r\n")
    command = next(e.command for e in reader.events() if isinstance(e, Complete))
    out = Out()
    session.execute(parse_command(command), out)
    return out.text()


def session_on(root: Path) -> Session:
    """A logged-in session on the Maildir at ``root`` (a new Store, as each login opens one)."""
    session = Session(
        hostname="h", secure=True, tls_available=False, plaintext_ok=False, append_limit=1 << 20, open_store=lambda _u: Store(root)
    )
    session.login_result("t0", "john@example.test", True, Out())
    return session


def deliver(box: Path, count: int = 1) -> None:
    for _ in range(count):
        md.deliver_file(box, b"Subject: hi\n\nhello\n", "mda.test")


def settle(box: Path) -> None:
    """Date the folder's directories and lists a minute back, as if nothing had changed for a while."""
    old = time.time() - 60
    for part in ("new", "cur", UIDLIST):
        os.utime(box / part, (old, old))


def test_list_shows_a_level_without_its_own_folder_noselect_rfc3501_7_2_2(tmp_path: Path) -> None:
    """RFC 3501 7.2.2: \\Noselect - it is not possible to use this name as a selectable mailbox. Dovecot
    leaves '.Projekt.2024' without '.Projekt'; LIST shows 'Projekt' \\Noselect and SELECT fails."""
    root = tmp_path / "john"
    Store(root)
    md.ensure_maildir(root / ".Projekt.2024")
    (root / ".Projekt.2024" / "maildirfolder").touch()
    session = session_on(root)
    listed = run(session, 'a LIST "" "*"')
    assert '* LIST (\\Noselect \\HasChildren) "." Projekt\r\n' in listed
    assert '* LIST (\\HasNoChildren) "." Projekt.2024\r\n' in listed
    assert '* LIST (\\HasNoChildren \\Sent) "." Sent\r\n' in listed  # selectable ones carry no \\Noselect
    assert run(session, "b SELECT Projekt").startswith("b NO ")


def test_metadata_fetch_of_a_subset_numbers_and_flags_each_message_rfc3501_7_4_2(tmp_path: Path) -> None:
    """RFC 3501 7.4.2: each FETCH response carries the message's own sequence number, and \\Recent only
    for messages recent in this session (the column-built path for a non-contiguous set)."""
    root = tmp_path / "john"
    Store(root)
    deliver(root, 3)
    first = session_on(root)
    run(first, "a SELECT INBOX")  # moves 1-3 to cur/: recent for this session only
    run(first, "b STORE 2 +FLAGS (\\Seen)")
    deliver(root, 2)
    second = session_on(root)
    run(second, "a SELECT INBOX")  # 4 and 5 recent here
    out = run(second, "b UID FETCH 2,4:5 (FLAGS RFC822.SIZE)")
    lines = [line for line in out.split("\r\n") if line.startswith("* ")]
    assert lines == [
        "* 2 FETCH (UID 2 FLAGS (\\Seen) RFC822.SIZE 22)",
        "* 4 FETCH (UID 4 FLAGS (\\Recent) RFC822.SIZE 22)",
        "* 5 FETCH (UID 5 FLAGS (\\Recent) RFC822.SIZE 22)",
    ]


def test_select_from_the_process_cache_then_sees_every_later_change_rfc3501_5_2(tmp_path: Path, monkeypatch) -> None:
    """A SELECT of a folder that has not changed since another session of this process synced it takes
    that state over without listing the directories; changes after it (a delivery, another session's
    flags and expunge) still reach the session at its next command (RFC 3501 5.2)."""
    root = tmp_path / "john"
    Store(root)
    deliver(root, 4)
    phone = session_on(root)
    run(phone, "a SELECT INBOX")
    settle(root)
    run(phone, "b NOOP")  # a sync of the settled state: what the cache offers
    inbox = phone.store.open("INBOX")  # type: ignore[union-attr]
    inbox.sync()  # records the settled state for the process
    inbox.close()
    with monkeypatch.context() as m:
        m.setattr(md, "scan", lambda box: pytest.fail("SELECT listed a folder that did not change"))
        m.setattr(store_module.os, "stat", _stat_only_directories)
        desktop = session_on(root)
        selected = run(desktop, "a SELECT INBOX")
    assert "* 4 EXISTS" in selected and "* 0 RECENT" in selected
    run(phone, "c STORE 1 +FLAGS (\\Deleted \\Seen)")
    run(phone, "d EXPUNGE")
    deliver(root)
    later = run(desktop, "b NOOP")
    assert "* 1 EXPUNGE" in later and "* 4 EXISTS" in later and "* 1 RECENT" in later
    flags = run(desktop, "d UID FETCH 1:* (FLAGS)")
    assert "UID 5 FLAGS (\\Recent)" in flags and flags.count(" FETCH (") == 4


_real_stat = os.stat


def _stat_only_directories(path, *args, **kwargs):
    """os.stat that fails the test when asked about a message file (a SELECT from the cache must not)."""
    text = os.fspath(path)
    if "/cur/" in text or "/new/" in text:
        pytest.fail(f"stat of a message file: {text}")
    return _real_stat(path, *args, **kwargs)


def test_a_change_in_the_same_timestamp_tick_is_not_hidden_by_the_cache(tmp_path: Path) -> None:
    """The cache answers only for a state whose directories had been unchanged for SETTLED seconds when
    it was recorded: a delivery right after a sync, even with the same directory times, is seen."""
    root = tmp_path / "john"
    Store(root)
    deliver(root)
    one = Store(root).open("INBOX")
    one.sync()
    stamp = [os.stat(root / part) for part in ("new", "cur")]
    assert len(one.sync()[0]) == 1
    deliver(root)
    for part, st in zip(("new", "cur"), stamp, strict=True):  # hide the change from the times
        os.utime(root / part, ns=(st.st_atime_ns, st.st_mtime_ns))
    two = Store(root).open("INBOX")
    assert len(two.sync()[0]) == 2
    assert len(one.sync()[0]) == 2
    one.close()
    two.close()


def test_after_a_delivery_the_first_view_scans_and_the_others_take_its_result(tmp_path: Path, monkeypatch) -> None:
    """Many sessions idle on one folder: after a delivery the first syncs move and scan; the views that
    sync after them take the result over (inotify saw no change since, however recent the times are)
    and see the new message without listing the directories."""
    from mailprov.imap import watch

    assert watch.watcher() is not None, "inotify is needed (Linux)"
    root = tmp_path / "john"
    Store(root)
    deliver(root, 3)
    phone, desktop, tablet = (Store(root).open("INBOX") for _ in range(3))
    for view in (phone, desktop, tablet):
        view.sync()
    deliver(root)
    assert len(phone.sync()[1]) == 1  # moved it from new/: \Recent for the phone
    assert len(desktop.sync()[0]) == 4  # a scan of the state after the move, shared
    with monkeypatch.context() as m:
        m.setattr(md, "scan", lambda box: pytest.fail("scanned a folder another view had just synced"))
        msgs, recent = tablet.sync()
    assert len(msgs) == 4 and recent == set()
    deliver(root)  # a change after it: scanned again
    assert len(tablet.sync()[0]) == 5
    for view in (phone, desktop, tablet):
        view.close()


class _Transport(asyncio.Transport):
    """Just enough of an asyncio transport for a Connection: what is written is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def test_a_command_right_after_done_is_kept_for_after_idle_rfc2177(imap_config) -> None:
    """RFC 2177: DONE ends IDLE and the client may send its next command at once. When that command
    arrives (its own segment) before the IDLE task has finished, it is kept for after IDLE, not taken for
    a second line of the IDLE: that lost it (its tag never answered, the client hung; seen with 1,000
    IDLE sessions ending at once in bench/imap.py). The two segments are fed back to back here, which is
    the race made certain."""
    from mailprov.imap.server import Connection, IMAPServer

    async def scenario() -> bytes:
        server = IMAPServer(imap_config())
        transport = _Transport()
        conn = Connection(server, implicit_tls=False)
        conn.connection_made(transport)  # type: ignore[arg-type]

        async def until(tag: bytes) -> None:
            for _ in range(500):  # bounded: 5 s
                if tag in transport.out:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"no {tag!r} in {bytes(transport.out)!r}")

        conn.data_received(b'L LOGIN john@example.test "' + PASSWORD.encode() + b'"\r\n')
        await until(b"L OK")
        conn.data_received(b"S SELECT INBOX\r\n")
        await until(b"S OK")
        conn.data_received(b"I IDLE\r\n")
        await until(b"+ idling")
        conn.data_received(b"DONE\r\n")
        conn.data_received(b"N NOOP\r\n")
        await until(b"N OK")
        conn.connection_lost(None)
        await server.stop()
        return bytes(transport.out)

    out = asyncio.run(scenario())
    assert b"I OK IDLE terminated" in out and b"BAD" not in out
