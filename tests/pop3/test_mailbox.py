"""Maildir access for POP3: sizes, rendering, UIDs, order, UPDATE and the lock."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailprov import maildir as md
from mailprov.maildir import crlf_size
from mailprov.pop3 import mailbox as mb
from mailprov.pop3.mailbox import Mailbox, MailboxBusy, MailboxLock, read_top, render_bytes, top_bytes, uid_for
from tests.pop3.helpers import deliver, ensure_maildir, message


def received(rendered: bytes) -> bytes:
    """What a POP3 client gets: strip the terminating line and undo byte-stuffing (RFC 1939 3)."""
    assert rendered.endswith(b"\r\n.\r\n") or rendered == b".\r\n"
    body = rendered[:-3]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def normalized(data: bytes) -> bytes:
    out = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return out + b"\r\n" if out and not out.endswith(b"\n") else out


messages = st.lists(st.sampled_from([b"a", b".", b"\n", b"\r", b"\r\n", b"..", b"x.y", b"\n.\n", b"\xff"]), max_size=60).map(b"".join)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("scratch") / "msg"


@settings(max_examples=250, deadline=None)
@given(data=messages, chunk=st.integers(min_value=1, max_value=9))
def test_render_and_size_agree_whole_and_streamed(scratch, data, chunk):
    """RETR octets (unstuffed) equal the normalized message and LIST's size, however it is read."""
    path = scratch
    path.write_bytes(data)
    whole = render_bytes(data)
    assert received(whole) == normalized(data)
    assert crlf_size(data) == len(normalized(data))
    # No line in the output carries a bare CR-less LF.
    assert whole.count(b"\n") == whole.count(b"\r\n")
    saved = mb.CHUNK, md.CHUNK, md.FIRST_READ
    mb.CHUNK = md.CHUNK = md.FIRST_READ = chunk  # force the streaming paths with tiny pieces
    try:
        assert md.file_crlf_size(str(path)) == len(normalized(data))
        fd = os.open(path, os.O_RDONLY)
        streamed = b"".join(mb._render_stream(fd, b""))
        assert streamed == whole
    finally:
        mb.CHUNK, md.CHUNK, md.FIRST_READ = saved


@settings(max_examples=150, deadline=None)
@given(data=messages, lines=st.integers(min_value=0, max_value=5), chunk=st.integers(min_value=1, max_value=9))
def test_top_reads_only_what_it_needs_and_agrees(scratch, data, lines, chunk):
    path = scratch
    path.write_bytes(data)
    saved = mb.CHUNK
    mb.CHUNK = chunk
    try:
        assert read_top(str(path), lines) == top_bytes(data, lines)
    finally:
        mb.CHUNK = saved


def test_top_examples():
    data = b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n"
    assert top_bytes(data, 0) == b"A: 1\r\nB: 2\r\n\r\n.\r\n"
    assert top_bytes(data, 2) == b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n"
    assert top_bytes(data, 99) == render_bytes(data)
    assert top_bytes(b"A: 1\n", 3) == b"A: 1\r\n.\r\n"


def test_render_file_large_is_streamed(tmp_path):
    path = tmp_path / "big"
    data = b"".join(b".line %d\n" % i for i in range(200_000))  # ~2.4 MB, leading dots everywhere
    path.write_bytes(data)
    pieces = mb.render_file(str(path))
    out = list(pieces)
    # Input is cut into pieces of at most 2 CHUNKs; CRLF and stuffing at most double them.
    assert len(out) > 2 and max(len(p) for p in out) <= 4 * mb.CHUNK + 1
    assert b"".join(out) == render_bytes(data)


def test_uids():
    assert uid_for("1700000000.M1P2Q3.host,S=120") == "1700000000.M1P2Q3.host,S=120"
    long = "x" * 71
    assert uid_for(long) != long and len(uid_for(long)) <= 70 and uid_for(long) == uid_for(long)
    assert uid_for("a b") != "a b" and uid_for("ünïcode") != uid_for("unicode")


def test_natural_delivery_order(tmp_path):
    box = ensure_maildir(tmp_path / "md")
    for name in ("100.M99P1.h", "100.M100P1.h", "99.M5P1.h", "100.M99P1Q2.h:2,S"):
        (box / ("cur" if ":" in name else "new") / name).write_bytes(b"x\n")
    msgs = Mailbox(box, tmp_path / "state" / "u").open()
    assert [m.name for m in msgs] == ["99.M5P1.h", "100.M99P1.h", "100.M99P1Q2.h:2,S", "100.M100P1.h"]


def test_missing_maildir_is_empty(tmp_path):
    box = Mailbox(tmp_path / "nowhere", tmp_path / "state" / "u")
    assert box.open() == []
    box.close()


def test_size_hint_cache_and_duplicates(tmp_path):
    box = ensure_maildir(tmp_path / "md")
    (box / "new" / "1.M1P1.h,S=5,W=777").write_bytes(b"abc\n")  # Dovecot's W= is trusted as the POP3 size
    name = deliver(box, b"one\ntwo\n")
    (box / "cur" / f"{name}:2,S").write_bytes(b"one\ntwo\n")  # an interrupted move: counted once
    state = tmp_path / "state" / "u"
    mailbox = Mailbox(box, state)
    msgs = mailbox.open()
    mailbox.close()
    assert [m.size for m in msgs] == [777, 10]
    cache = (tmp_path / "state" / "u.sizes").read_text()
    assert f"{name} 10" in cache and ",W=" not in cache
    # The cache is what later sessions use: sizes are not recomputed from the file.
    (tmp_path / "state" / "u.sizes").write_text(cache.replace(f"{name} 10", f"{name} 11"))
    again = Mailbox(box, state)
    assert [m.size for m in again.open()] == [777, 11]
    again.close()
    # A damaged cache is ignored and rebuilt.
    (tmp_path / "state" / "u.sizes").write_text("garbage\n")
    third = Mailbox(box, state)
    assert [m.size for m in third.open()] == [777, 10]
    third.close()


def test_commit_deletes_and_marks_seen(tmp_path):
    box = ensure_maildir(tmp_path / "md")
    names = [deliver(box, message(i)) for i in range(4)]
    os.rename(box / "new" / names[3], box / "cur" / f"{names[3]}:2,RF")
    mailbox = Mailbox(box, tmp_path / "state" / "u")
    msgs = mailbox.open()
    msgs[0].deleted = True
    msgs[1].retrieved = True
    msgs[3].retrieved = True
    result = mailbox.commit()
    mailbox.close()
    assert (result.deleted, result.marked_seen, result.failed) == (1, 2, [])
    assert sorted(os.listdir(box / "new")) == [names[2]]
    assert sorted(os.listdir(box / "cur")) == sorted([f"{names[1]}:2,S", f"{names[3]}:2,FRS"])


def test_commit_tolerates_other_programs(tmp_path):
    box = ensure_maildir(tmp_path / "md")
    names = [deliver(box, message(i)) for i in range(2)]
    mailbox = Mailbox(box, tmp_path / "state" / "u")
    msgs = mailbox.open()
    os.unlink(box / "new" / names[0])  # removed by another client meanwhile
    os.rename(box / "new" / names[1], box / "cur" / f"{names[1]}:2,F")  # moved and flagged by another
    msgs[0].deleted = True
    msgs[1].retrieved = True
    assert b"Subject: test 1" in b"".join(mailbox.render(msgs[1]))  # found again after the rename
    result = mailbox.commit()
    mailbox.close()
    assert result.failed == [] and os.listdir(box / "cur") == [f"{names[1]}:2,FS"]


def test_lock_is_exclusive_and_freed_with_the_descriptor(tmp_path):
    first = MailboxLock(tmp_path / "l.lock")
    first.acquire()
    with pytest.raises(MailboxBusy):
        MailboxLock(tmp_path / "l.lock").acquire()
    first.release()
    second = MailboxLock(tmp_path / "l.lock")
    second.acquire()
    second.release()
    box = Mailbox(tmp_path / "md", tmp_path / "state" / "u")
    box.open()
    with pytest.raises(MailboxBusy):
        Mailbox(tmp_path / "md", tmp_path / "state" / "u").open()
    box.close()
