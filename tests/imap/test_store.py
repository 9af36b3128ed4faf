"""The IMAP mailbox store (mailprov/imap/store.py) on real directories: UIDs, flags, folders, races."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailprov import maildir as md
from mailprov.imap import watch
from mailprov.imap.store import UIDLIST, Store, StoreError, parse_uidlist
from mailprov.pop3.mailbox import Mailbox


def deliver(box: Path, body: bytes = b"Subject: hi\n\nhello\n") -> Path:
    """What the MDA does: tmp, fsync, rename into new/."""
    md.ensure_maildir(box)
    return md.deliver_file(box, body, "mda.test")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "john")


def test_special_folders_created_subscribed_and_marked(store: Store) -> None:
    """RFC 6154: every user gets Sent, Drafts, Trash and Junk, with their SPECIAL-USE attribute."""
    folders = {f.name: f for f in store.folders()}
    assert set(folders) == {"INBOX", "Sent", "Drafts", "Trash", "Junk"}
    assert folders["Sent"].special_use == "\\Sent" and folders["Junk"].special_use == "\\Junk"
    assert folders["INBOX"].special_use is None
    assert all(folders[n].subscribed for n in ("Sent", "Drafts", "Trash", "Junk"))
    for name in ("Sent", "Drafts", "Trash", "Junk"):  # Dovecot's Maildir++ layout
        assert (store.root / f".{name}" / "maildirfolder").is_file()
        assert (store.root / f".{name}" / "cur").is_dir()


def test_uids_ascend_persist_and_survive_restart(store: Store) -> None:
    """RFC 3501 2.3.1.1: UIDs strictly ascending, kept across sessions with the same UIDVALIDITY."""
    for _ in range(3):
        deliver(store.root)
    inbox = store.open("INBOX")
    msgs, recent = inbox.sync()
    assert [m.uid for m in msgs] == [1, 2, 3] and recent == {1, 2, 3}
    assert inbox.uidnext == 4
    again = Store(store.root).open("inbox")  # a new process: same UIDs, nothing recent any more
    msgs2, recent2 = again.sync()
    assert [(m.uid, m.key) for m in msgs2] == [(m.uid, m.key) for m in msgs]
    assert recent2 == set() and again.uidvalidity == inbox.uidvalidity


def test_uids_never_reused_after_expunge(store: Store) -> None:
    deliver(store.root)
    deliver(store.root)
    inbox = store.open("INBOX")
    inbox.sync()
    inbox.store_flags([2], ["\\Deleted"], "add")
    assert inbox.expunge() == [2]
    deliver(store.root)
    msgs, _ = inbox.sync()
    assert [m.uid for m in msgs] == [1, 3]  # 2 is gone for good


def test_lost_or_corrupt_uidlist_starts_new_uidvalidity(store: Store) -> None:
    """A damaged uidlist is never half-trusted: a new UIDVALIDITY tells clients to forget their UIDs."""
    deliver(store.root)
    inbox = store.open("INBOX")
    inbox.sync()
    old = inbox.uidvalidity
    (store.root / UIDLIST).write_text("3 V12 N9\n5 :a\n3 :b\n")  # UIDs out of order: corrupt
    fresh = store.open("INBOX")
    fresh.sync()
    assert fresh.uidvalidity > old
    (store.root / UIDLIST).unlink()
    lost = store.open("INBOX")
    assert lost.uidvalidity > fresh.uidvalidity


def test_uidlist_parsing_follows_dovecot() -> None:
    """Dovecot appends records without updating N (the next UID is past the last record), and a reader
    without the lock may see a partial last line (ignored); version 1 lists are read too."""
    appended = parse_uidlist(b"3 V7 N1 Gab\n1 :x,S=1:2,S\n2 W9 S8 :y\n3 :partial")
    assert appended is not None and appended.next_uid == 3 and appended.header == {"G": "ab"}
    assert appended.entries == {1: ("x,S=1", ""), 2: ("y", "W9 S8")}
    old = parse_uidlist(b"1 5 10\n4 a\n")
    assert old is not None and (old.uidvalidity, old.next_uid, old.entries) == (5, 10, {4: ("a", "")})
    for bad in (b"", b"garbage\n", b"3 N5\n", b"3 V0 N5\n", b"3 V1 N5\n2 :a\n2 :b\n", b"3 V1 N5\n1 x\n"):
        assert parse_uidlist(bad) is None, bad


def test_uidlist_is_dovecot_version_3(store: Store) -> None:
    deliver(store.root)
    inbox = store.open("INBOX")
    msgs, _ = inbox.sync()
    lines = (store.root / UIDLIST).read_text().splitlines()
    assert lines[0].startswith(f"3 V{inbox.uidvalidity} N2 G")
    assert lines[1] == f"1 :{msgs[0].key}"
    parsed = parse_uidlist((store.root / UIDLIST).read_bytes())
    assert parsed is not None and parsed.entries[1][0] == msgs[0].key


def test_flags_are_maildir_letters_and_keywords(store: Store) -> None:
    deliver(store.root)
    inbox = store.open("INBOX")
    inbox.sync()
    (info,) = inbox.store_flags([1], ["\\Seen", "\\Flagged", "$Forwarded", "\\Answered"], "add")
    assert info.flags == {"\\Seen", "\\Flagged", "$Forwarded", "\\Answered"}
    (name,) = os.listdir(store.root / "cur")
    assert name.endswith(":2,FRSa")  # ASCII order; keyword 0 is 'a'
    assert (store.root / "dovecot-keywords").read_text() == "0 $Forwarded\n"
    (info,) = inbox.store_flags([1], ["\\seen"], "remove")  # system flags are case-insensitive
    assert info.flags == {"\\Flagged", "$Forwarded", "\\Answered"}
    (info,) = inbox.store_flags([1], ["\\Draft"], "set")
    assert info.flags == {"\\Draft"}


def test_unknown_letters_are_kept(store: Store) -> None:
    """'P' (passed) has no IMAP flag: STORE must not drop what another program recorded."""
    md.ensure_maildir(store.root)
    (store.root / "cur" / "1.M1P1.h:2,PS").write_bytes(b"x\n")
    inbox = store.open("INBOX")
    inbox.sync()
    inbox.store_flags([1], ["\\Flagged"], "set")
    assert os.listdir(store.root / "cur") == ["1.M1P1.h:2,FP"]


def test_read_gives_crlf_and_size_matches(store: Store) -> None:
    deliver(store.root, b"Subject: x\n\nbare LF\nand CRLF\r\nno end")
    inbox = store.open("INBOX")
    (msg,), _ = inbox.sync()
    data = inbox.read(1)
    assert data == b"Subject: x\r\n\r\nbare LF\r\nand CRLF\r\nno end"
    assert msg.size == len(data)


def test_size_without_hint_is_measured(store: Store) -> None:
    md.ensure_maildir(store.root)
    (store.root / "new" / "1.M1P1.other").write_bytes(b"a\nb\n")
    inbox = store.open("INBOX")
    (msg,), _ = inbox.sync()
    assert msg.size == 6 and inbox.read(1) == b"a\r\nb\r\n"


def test_append_copy_move(store: Store) -> None:
    inbox = store.open("INBOX")
    uid = inbox.append(b"Subject: a\r\n\r\nx\r\n", ["\\Seen", "work"], 1_000_000.0)
    assert uid == 1
    (msg,), recent = inbox.sync()
    assert msg.flags == {"\\Seen", "work"} and msg.internaldate == 1_000_000.0 and recent == set()
    trash = store.open("Trash")
    assert inbox.copy([1, 99], trash) == [(1, 1)]
    (copied,), _ = trash.sync()
    assert copied.flags == {"\\Seen", "work"} and copied.internaldate == 1_000_000.0
    assert trash.read(1) == inbox.read(1)
    sent = store.open("Sent")
    assert inbox.move([1], sent) == [(1, 1)]
    assert inbox.sync()[0] == []
    (moved,), _ = sent.sync()
    assert moved.flags == {"\\Seen", "work"}


def test_moved_back_gets_a_new_uid(store: Store) -> None:
    """A message that leaves and comes back is a new message there (its old UID stays unused)."""
    deliver(store.root)
    inbox, trash = store.open("INBOX"), store.open("Trash")
    inbox.sync()
    inbox.move([1], trash)
    trash.sync()
    assert trash.move([1], inbox) == [(1, 2)]


def test_expunge_only_deleted_among_uids(store: Store) -> None:
    for _ in range(3):
        deliver(store.root)
    inbox = store.open("INBOX")
    inbox.sync()
    inbox.store_flags([1, 2, 3], ["\\Deleted"], "add")
    inbox.store_flags([3], ["\\Deleted"], "remove")
    assert inbox.expunge([2]) == [2]
    assert inbox.expunge() == [1]
    assert [m.uid for m in inbox.sync()[0]] == [3]


def test_read_of_expunged_message_is_nonexistent(store: Store) -> None:
    deliver(store.root)
    a, b = store.open("INBOX"), Store(store.root).open("INBOX")
    a.sync()
    b.sync()
    b.store_flags([1], ["\\Deleted"], "add")
    b.expunge()
    with pytest.raises(StoreError) as caught:
        a.read(1)
    assert caught.value.code == "NONEXISTENT"


def test_other_sessions_see_flag_changes(store: Store) -> None:
    """RFC 3501 7.4.1: a second session sees the first one's flag change at its next sync."""
    deliver(store.root)
    phone, desktop = store.open("INBOX"), Store(store.root).open("INBOX")
    phone.sync()
    desktop.sync()
    desktop.store_flags([1], ["\\Seen"], "add")
    (msg,), _ = phone.sync()
    assert msg.flags == {"\\Seen"}
    phone.store_flags([1], ["\\Flagged"], "add")  # merged, not overwriting the other session's \Seen
    (msg,), _ = desktop.sync()
    assert msg.flags == {"\\Seen", "\\Flagged"}


def test_pop3_delete_is_an_expunge(store: Store, tmp_path: Path) -> None:
    deliver(store.root)
    deliver(store.root)
    inbox = store.open("INBOX")
    assert len(inbox.sync()[0]) == 2
    pop = Mailbox(store.root, tmp_path / "state" / "john")
    pop.open()
    pop.messages[0].deleted = True
    pop.commit()
    pop.close()
    msgs, _ = inbox.sync()
    assert [m.uid for m in msgs] == [2]


def test_folders_create_rename_delete(store: Store) -> None:
    store.create("Archive.2024")
    names = {f.name: f for f in store.folders()}
    assert "Archive" in names and names["Archive"].has_children and "Archive.2024" in names
    with pytest.raises(StoreError) as caught:
        store.create("Archive")
    assert caught.value.code == "ALREADYEXISTS"
    store.create("Entwürfe")
    assert (store.root / ".Entw&APw-rfe").is_dir()  # modified UTF-7 on disk, as Dovecot stores it
    store.rename("Archive", "Old")
    assert {"Old", "Old.2024"} <= {f.name for f in store.folders()}
    store.delete("Old.2024")
    assert "Old.2024" not in {f.name for f in store.folders()}
    for bad, code in (("INBOX", "CANNOT"), ("Nope", "NONEXISTENT")):
        with pytest.raises(StoreError) as caught:
            store.delete(bad)
        assert caught.value.code == code
    with pytest.raises(StoreError):
        store.create("a..b")
    with pytest.raises(StoreError):
        store.open("Nope")


def test_rename_inbox_moves_messages(store: Store) -> None:
    """RFC 3501 6.3.5: renaming INBOX moves its messages to the new name and leaves INBOX empty."""
    deliver(store.root)
    store.rename("INBOX", "Saved")
    assert store.open("INBOX").sync()[0] == []
    assert len(store.open("Saved").sync()[0]) == 1


def test_deleted_and_recreated_folder_has_new_uidvalidity(store: Store) -> None:
    """RFC 3501 2.3.1.1: a new mailbox with an old name must not repeat the old UIDVALIDITY."""
    store.create("Tmp")
    first = store.open("Tmp").uidvalidity
    store.delete("Tmp")
    store.create("Tmp")
    assert store.open("Tmp").uidvalidity > first


def test_subscriptions(store: Store) -> None:
    store.create("Lists")
    store.subscribe("Lists", True)
    assert {f.name for f in store.folders() if f.subscribed} >= {"Lists", "Sent"}
    store.subscribe("Lists", False)
    assert "Lists" not in {f.name for f in store.folders() if f.subscribed}


def test_concurrent_delivery_and_syncs_lose_and_duplicate_nothing(store: Store) -> None:
    """Deliveries racing several sessions' syncs: every message gets exactly one UID, all distinct."""
    stop = threading.Event()
    delivered: list[str] = []

    def mda() -> None:
        for _ in range(150):
            delivered.append(md.base_name(deliver(store.root).name))

    def session(out: dict[str, int]) -> None:
        folder = Store(store.root).open("INBOX")
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            for m in folder.sync()[0]:
                assert out.setdefault(m.key, m.uid) == m.uid
        for m in folder.sync()[0]:
            assert out.setdefault(m.key, m.uid) == m.uid

    seen = [{}, {}, {}]
    threads = [threading.Thread(target=session, args=(s,)) for s in seen]
    for t in threads:
        t.start()
    mda()
    stop.set()
    for t in threads:
        t.join(60)
    for s in seen:
        assert sorted(s) == sorted(delivered)
        assert len(set(s.values())) == len(delivered)
    assert seen[0] == seen[1] == seen[2]


def test_wait_for_change_wakes_on_delivery(store: Store) -> None:
    inbox = store.open("INBOX")
    inbox.sync()

    async def scenario() -> tuple[bool, float, bool]:
        quiet = await inbox.wait_for_change(0.3)
        loop = asyncio.get_running_loop()
        start = loop.time()
        loop.call_later(0.1, deliver, store.root)
        woke = await inbox.wait_for_change(5)
        return quiet, loop.time() - start, woke

    quiet, elapsed, woke = asyncio.run(scenario())
    assert not quiet and woke and elapsed < 1.0


def test_wait_for_change_polls_without_inotify(store: Store, monkeypatch) -> None:
    """The bounded-poll fallback (no inotify, or no watches left) still wakes within a second."""
    monkeypatch.setattr(watch, "watcher", lambda: None)
    inbox = store.open("INBOX")
    inbox.sync()

    async def scenario() -> tuple[bool, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        loop.call_later(0.1, deliver, store.root)
        return await inbox.wait_for_change(5), loop.time() - start

    woke, elapsed = asyncio.run(scenario())
    assert woke and elapsed < 1.0


def test_wait_wakes_on_other_sessions_flag_change_and_expunge(store: Store) -> None:
    deliver(store.root)
    phone, desktop = store.open("INBOX"), Store(store.root).open("INBOX")
    phone.sync()
    desktop.sync()

    async def scenario() -> list[bool]:
        results = []
        for action in (lambda: desktop.store_flags([1], ["\\Deleted"], "add"), desktop.expunge):
            asyncio.get_running_loop().call_later(0.05, action)
            results.append(await phone.wait_for_change(5))
            phone.sync()
        results.append(await phone.wait_for_change(0.2))  # nothing more happened
        return results

    assert asyncio.run(scenario()) == [True, True, False]


def test_one_inotify_descriptor_for_many_sessions(store: Store) -> None:
    """Watches are shared per directory and released on close; the descriptor is one per process."""
    shared = watch.watcher()
    assert shared is not None
    folders = [Store(store.root, create_special=False).open("INBOX") for _ in range(200)]
    assert {id(f._watcher) for f in folders} == {id(shared)}
    assert len({f._wds for f in folders}) == 1
    wds = folders[0]._wds
    for folder in folders:
        folder.close()
    assert all(wd not in shared._refs for wd in wds)


MDA_SCRIPT = """
import sys
from pathlib import Path
from mailprov import maildir as md
box = Path(sys.argv[1])
for i in range(int(sys.argv[2])):
    md.deliver_file(box, b"Subject: %d\\n\\nbody\\n" % i, "other.process")
"""

SYNC_SCRIPT = """
import sys, json, time
from pathlib import Path
from mailprov.imap.store import Store
folder = Store(Path(sys.argv[1]), create_special=False).open("INBOX")
seen = {}
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    msgs = folder.sync()[0]
    for m in msgs:
        assert seen.setdefault(m.key, m.uid) == m.uid, "a message changed UID"
    if len(msgs) >= int(sys.argv[2]):
        break
print(json.dumps(seen))
"""


def test_processes_racing_deliveries_agree_on_uids(store: Store) -> None:
    """Two IMAP processes syncing while another process delivers: one UID per message, the same in both
    (the uidlist dotlock works across processes)."""
    count = 120
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    syncers = [
        subprocess.Popen([sys.executable, "-c", SYNC_SCRIPT, str(store.root), str(count)], stdout=subprocess.PIPE, env=env)
        for _ in range(2)
    ]
    try:
        subprocess.run([sys.executable, "-c", MDA_SCRIPT, str(store.root), str(count)], check=True, timeout=60, env=env)
        outputs = [json.loads(p.communicate(timeout=60)[0]) for p in syncers]
    finally:
        for p in syncers:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert outputs[0] == outputs[1]
    assert sorted(outputs[0].values()) == list(range(1, count + 1))


def test_delivery_racing_copy_and_expunge(store: Store) -> None:
    """COPY and EXPUNGE while the MDA delivers: nothing delivered is lost, nothing copied twice."""
    for _ in range(20):
        deliver(store.root)
    inbox, trash = store.open("INBOX"), store.open("Trash")
    inbox.sync()
    done = threading.Event()
    delivered: list[str] = []

    def mda() -> None:
        for _ in range(60):
            delivered.append(md.base_name(deliver(store.root).name))
        done.set()

    thread = threading.Thread(target=mda)
    thread.start()
    copied = rounds = 0
    expunged: set[str] = set()
    while not done.is_set() or rounds < 3:
        msgs, _ = inbox.sync()
        uids = [m.uid for m in msgs[:5]]  # fewer than 5 once the expunges outrun a slow MDA
        pairs = inbox.copy(uids, trash)
        assert [s for s, _d in pairs] == uids
        copied += len(uids)
        rounds += 1
        inbox.store_flags(uids[:2], ["\\Deleted"], "add")
        keys = {m.uid: m.key for m in msgs}
        expunged.update(keys[u] for u in inbox.expunge())
    thread.join(60)
    remaining = {m.key for m in inbox.sync()[0]}
    assert set(delivered) <= remaining | expunged
    trash_msgs, _ = trash.sync()
    assert len({m.uid for m in trash_msgs}) == len(trash_msgs) == copied


def test_unchanged_settled_folder_skips_the_scan(store: Store, monkeypatch) -> None:
    """An idle folder's sync answers from memory; a change (even within the same timestamp tick, which
    the SETTLED window covers) is still seen at the next sync."""
    deliver(store.root)
    inbox = store.open("INBOX")
    first, _ = inbox.sync()
    old = time.time() - 60
    for part in ("new", "cur", UIDLIST):
        os.utime(store.root / part, (old, old))
    inbox.sync()  # records the settled stamp
    monkeypatch.setattr(md, "scan", lambda box: pytest.fail("scanned a settled folder"))
    assert inbox.sync()[0] == first
    monkeypatch.undo()
    deliver(store.root)
    assert len(inbox.sync()[0]) == 2


def test_changed_is_false_until_someone_changes_the_folder(store: Store) -> None:
    """Folder.changed(): the session's cheap check before a command (inotify generations)."""
    inbox = store.open("INBOX")
    inbox.sync()
    inbox.sync()  # the first sync's own moves count as changes; the second settles
    assert not inbox.changed()
    deliver(store.root)
    assert inbox.changed()
    inbox.sync()
    other = Store(store.root).open("INBOX")
    other.sync()
    other.store_flags([1], ["\\Seen"], "add")
    assert inbox.changed()
