"""Dovecot and mailprov's IMAP store on the same Maildirs: an operator can switch, or run both side by side.

A private Dovecot (``dovecot-imapd``) serves ``ROOT/mail/DOMAIN/LOCAL`` on 127.0.12.x, the layout mailprov
writes. What mailprov wrote, Dovecot serves with the same folders, UIDs, UIDVALIDITY, flags, keywords,
sizes and bodies (read with Python's imaplib); what Dovecot wrote, mailprov's store reads the same way;
and with both running at once while mail is delivered, every message gets one UID that both agree on
(Dovecot's ``dovecot-uidlist.lock`` convention, followed by both).
"""

from __future__ import annotations

import calendar
import imaplib
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mailprov import maildir as md
from mailprov.imap import mutf7
from mailprov.imap.store import Store
from tests.conftest import require_programs
from tests.peers.dovecot import MAIL_USER, DovecotIMAP

HOST = "127.0.12.10"
PASSWORD = "interop-pw"
USERS = ("john@example.test", "mary@example.test", "live@example.test")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dovecot():
    require_programs("dovecot", "doveadm")
    if not Path("/usr/lib/dovecot/imap").exists():
        pytest.fail("Dovecot's IMAP server is missing: install the Debian package dovecot-imapd (./dev test does)")
    # Not under pytest's base directory: every pytest run on the machine resets that to mode 0700, which
    # would lock Dovecot's mail processes (user mail) out in the middle of the tests.
    root = Path(tempfile.mkdtemp(prefix="mailprov-dovecot-imap-"))
    with socket.socket() as probe:  # a free port: a Dovecot stopped just before may still hold the last one
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    server = DovecotIMAP(root, HOST, port, {u: PASSWORD for u in USERS})
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def login(server: DovecotIMAP, user: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4(server.host, server.port, timeout=30)
    client.login(user, PASSWORD)
    return client


def ok(reply: tuple[str, list]) -> list:
    status, data = reply
    assert status == "OK", data
    return data


def select(client: imaplib.IMAP4, name: str) -> tuple[int, int]:
    """SELECT; returns (UIDVALIDITY, UIDNEXT)."""
    ok(client.select(mutf7.encode(name)))
    validity = int(client.untagged_responses["UIDVALIDITY"][-1])
    uidnext = int(client.untagged_responses["UIDNEXT"][-1])
    return validity, uidnext


_ITEM = re.compile(rb"UID (\d+)|FLAGS \(([^)]*)\)|RFC822\.SIZE (\d+)|INTERNALDATE \"([^\"]+)\"")


def fetch_all(client: imaplib.IMAP4) -> dict[int, dict]:
    """``UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[])`` as {uid: fields}."""
    data = ok(client.uid("FETCH", "1:*", "(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[])"))
    out: dict[int, dict] = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        fields: dict = {"body": item[1]}
        for m in _ITEM.finditer(item[0]):
            if m.group(1):
                fields["uid"] = int(m.group(1))
            elif m.group(2) is not None:
                fields["flags"] = set(m.group(2).decode().split()) - {"\\Recent"}
            elif m.group(3):
                fields["size"] = int(m.group(3))
            else:
                fields["date"] = calendar.timegm(time.strptime(m.group(4).decode()[:20], "%d-%b-%Y %H:%M:%S")) - _zone(m.group(4).decode())
        out[fields["uid"]] = fields
    return out


def _zone(stamp: str) -> int:
    sign, hours, minutes = stamp[-5], int(stamp[-4:-2]), int(stamp[-2:])
    return (1 if sign == "+" else -1) * (hours * 3600 + minutes * 60)


def listed(client: imaplib.IMAP4, command: str = "LIST") -> set[str]:
    data = ok(client.list('""', "*") if command == "LIST" else client.lsub('""', "*"))
    return {mutf7.decode(line.decode().rsplit(" ", 1)[1].strip('"')) for line in data if line}


def test_dovecot_serves_what_mailprov_wrote(dovecot: DovecotIMAP) -> None:
    box = dovecot.maildir("john@example.test")
    store = Store(box)
    md.deliver_file(box, b"Subject: one\r\n\r\nfirst\r\n", "mail.example.test")
    md.deliver_file(box, b"Subject: two\n\nbare LF endings\n", "mail.example.test")
    (box / "new" / "1700000000.M1P1.othermda").write_bytes(b"Subject: three\n\nno size hints\n")
    inbox = store.open("INBOX")
    inbox.sync()
    inbox.store_flags([1], ["\\Seen", "$Label1"], "add")
    inbox.store_flags([2], ["\\Flagged", "\\Answered", "work"], "add")
    store.create("Archive.2024")
    store.create("Entwürfe")
    store.subscribe("Entwürfe", True)
    archive = store.open("Archive.2024")
    assert inbox.copy([2], archive) == [(2, 1)]
    sent = store.open("Sent")
    sent.append(b"Subject: sent\r\n\r\nby me\r\n", ["\\Seen"], 1_500_000_000.0)
    ours = {name: store.open(name) for name in ("INBOX", "Archive.2024", "Sent")}
    expected = {name: (f.sync()[0], f) for name, f in ours.items()}
    dovecot.own()

    client = login(dovecot, "john@example.test")
    try:
        assert listed(client) == {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive", "Archive.2024", "Entwürfe"}
        assert listed(client, "LSUB") == {f.name for f in store.folders() if f.subscribed}
        for name, (messages, folder) in expected.items():
            validity, uidnext = select(client, name)
            assert (validity, uidnext) == (folder.uidvalidity, folder.uidnext), name
            theirs = fetch_all(client)
            assert sorted(theirs) == [m.uid for m in messages]
            for m in messages:
                got = theirs[m.uid]
                assert got["flags"] == set(m.flags), (name, m.uid)
                assert got["size"] == m.size == len(got["body"]), (name, m.uid)
                assert got["body"] == folder.read(m.uid)
                assert got["date"] == int(m.internaldate)
    finally:
        client.logout()
    # Dovecot's session changed nothing mailprov disagrees with.
    for name, (messages, _folder) in expected.items():
        assert Store(box).open(name).sync()[0] == messages


def test_mailprov_reads_what_dovecot_wrote(dovecot: DovecotIMAP) -> None:
    client = login(dovecot, "mary@example.test")
    try:
        appended = []
        for flags, body in ((r"(\Seen work)", b"Subject: a\n\nfrom dovecot\n"), (None, b"Subject: b\r\n\r\nsecond\r\n")):
            data = ok(client.append("INBOX", flags, imaplib.Time2Internaldate(1_600_000_000), body))
            appended.append(int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1)))
        folder = "Projekt.Überblick"
        ok(client.create(mutf7.encode(folder)))
        ok(client.subscribe(mutf7.encode(folder)))
        select(client, "INBOX")
        ok(client.uid("STORE", str(appended[1]), "+FLAGS", r"(\Answered $Forwarded \Deleted)"))
        ok(client.uid("COPY", f"{appended[0]}:{appended[1]}", mutf7.encode(folder)))
        ok(client.uid("STORE", str(appended[0]), "+FLAGS", r"(\Deleted)"))
        ok(client.expunge())
        theirs = {}
        for name in ("INBOX", folder):
            validity, uidnext = select(client, name)
            theirs[name] = (validity, uidnext, fetch_all(client))
    finally:
        client.logout()

    store = Store(dovecot.maildir("mary@example.test"), create_special=False)
    folders = {f.name: f for f in store.folders()}
    assert {"INBOX", "Projekt", "Projekt.Überblick"} <= set(folders)
    assert folders["Projekt.Überblick"].subscribed and folders["Projekt"].has_children
    assert not folders["Projekt"].selectable  # Dovecot made no .Projekt: LIST shows it \Noselect
    for name, (validity, uidnext, fetched) in theirs.items():
        mine = store.open(name)
        messages, _recent = mine.sync()
        assert (mine.uidvalidity, mine.uidnext) == (validity, uidnext), name
        assert [m.uid for m in messages] == sorted(fetched)
        for m in messages:
            got = fetched[m.uid]
            assert set(m.flags) == got["flags"], (name, m.uid)
            assert m.size == got["size"] and mine.read(m.uid) == got["body"]
            assert int(m.internaldate) == got["date"]
    assert store.open("INBOX").sync()[0] == []  # both expunged in Dovecot
    copies = store.open("Projekt.Überblick").sync()[0]
    assert [m.flags for m in copies] == [{"\\Seen", "work"}, {"\\Answered", "$Forwarded", "\\Deleted"}]


LIVE_SCRIPT = """
import json, sys, time
from pathlib import Path
from mailprov import maildir as md
from mailprov.imap.store import Store
box, count = Path(sys.argv[1]), int(sys.argv[2])
folder = Store(box, create_special=False).open("INBOX")
seen = {}
for i in range(count):
    md.deliver_file(box, b"Subject: live %d\\r\\n\\r\\nbody\\r\\n" % i, "mail.example.test")
    if i % 3 == 0:
        for m in folder.sync()[0]:
            assert seen.setdefault(m.key, m.uid) == m.uid
for m in folder.sync()[0]:
    assert seen.setdefault(m.key, m.uid) == m.uid
subjects = {}
for m in folder.sync()[0]:
    subjects[folder.read(m.uid).split(b"\\r\\n", 1)[0].decode()] = m.uid
print(json.dumps({"uidvalidity": folder.uidvalidity, "subjects": subjects}))
"""


def test_both_servers_live_agree_on_uids(dovecot: DovecotIMAP) -> None:
    """mailprov's store (as the mail user, in its own process) delivers and syncs while a Dovecot IMAP
    session polls the same INBOX: every message has the same UID in both."""
    box = dovecot.maildir("live@example.test")
    md.ensure_maildir(box)
    dovecot.own()
    # The mail user cannot be assumed to read this checkout or the venv's interpreter (they may live
    # under /root): it runs Debian's python3 on a copy of the package, which needs only the stdlib.
    code = dovecot.root / "code"
    shutil.copytree(REPO / "mailprov", code / "mailprov", dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    for path in [code, *code.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    count = 40
    client = login(dovecot, "live@example.test")
    try:
        select(client, "INBOX")
        stop = threading.Event()

        def poll() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                ok(client.noop())
                time.sleep(0.01)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            done = subprocess.run(
                ["/usr/bin/python3", "-c", LIVE_SCRIPT, str(box), str(count)],
                user=MAIL_USER,
                group=MAIL_USER,
                cwd=code,
                env={"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin"},
                capture_output=True,
                timeout=120,
                check=False,
            )
        finally:
            stop.set()
            poller.join(60)
        assert done.returncode == 0, done.stderr.decode()
        ours = json.loads(done.stdout)
        validity, _uidnext = select(client, "INBOX")
        data = ok(client.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    finally:
        client.logout()
    theirs = {}
    for item in data:
        if isinstance(item, tuple):
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            theirs[item[1].decode().strip()] = uid
    assert validity == ours["uidvalidity"]
    assert theirs == ours["subjects"] and len(theirs) == count
