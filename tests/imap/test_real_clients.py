"""mailprov's IMAP server against mail programs written by others: mbsync (isync) both ways, offlineimap,
getmail6 and fetchmail over IMAP (Debian packages, see tests/debian-packages.txt, IMAP section)."""

from __future__ import annotations

import imaplib
import os
import subprocess
from pathlib import Path

from tests.conftest import require_programs
from tests.imap.conftest import PASSWORD

MSG = b"From: alex@example.test\r\nTo: john@example.test\r\nSubject: %s\r\nMessage-ID: <%s@example.test>\r\n\r\nbody of %s\r\n"


def message(name: str) -> bytes:
    return MSG % (name.encode(), name.encode(), name.encode())


def append(server, *names: str, folder: str = "INBOX") -> None:
    c = imaplib.IMAP4(*server.plain, timeout=10)
    c.login("john@example.test", PASSWORD)
    for name in names:
        c.append(folder, None, None, message(name))
    c.logout()


def run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, f"{argv[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def files(maildir: Path) -> list[Path]:
    return sorted(p for sub in ("new", "cur") if (maildir / sub).is_dir() for p in (maildir / sub).iterdir())


def test_mbsync_syncs_both_ways(imap_server, tmp_path):
    require_programs("mbsync")
    host, port = imap_server.plain
    append(imap_server, "server-one", "server-two")
    local = tmp_path / "local"
    for sub in ("cur", "new", "tmp"):
        (local / "Projects" / sub).mkdir(parents=True)
    (local / "Projects" / "new" / "1700000000.M1P1.desk").write_bytes(message("desktop-one").replace(b"\r\n", b"\n"))
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f'IMAPAccount acc\nHost {host}\nPort {port}\nUser john@example.test\nPass "{PASSWORD}"\nSSLType None\nAuthMechs LOGIN\n\n'
        "IMAPStore remote\nAccount acc\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        "Channel ch\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\nSyncState *\n"
    )
    run(["mbsync", "-c", str(rc), "-a"], tmp_path)
    assert len(files(local / "INBOX")) == 2
    assert {p.name for p in (local).iterdir()} >= {"INBOX", "Projects", "Sent", "Trash", "Drafts", "Junk"}
    c = imaplib.IMAP4(*imap_server.plain, timeout=10)
    c.login("john@example.test", PASSWORD)
    assert c.select("Projects")[1] == [b"1"]
    assert b"desktop-one" in c.fetch("1", "BODY.PEEK[]")[1][0][1]
    # Flag locally (Maildir name), delete on the server: the next sync carries both across.
    first = files(local / "INBOX")[0]
    first.rename(first.parent.parent / "cur" / (first.name.split(":")[0] + ":2,FS"))
    c.select("Projects")
    c.store("1", "+FLAGS", "(\\Deleted)")
    c.expunge()
    run(["mbsync", "-c", str(rc), "-a"], tmp_path)
    assert files(local / "Projects") == []
    c.select("INBOX")
    flags = c.fetch("1:*", "FLAGS")[1]
    assert sum(b"\\Flagged" in f and b"\\Seen" in f for f in flags) == 1
    c.logout()


def test_offlineimap_mirrors_the_folders(imap_server, tmp_path):
    require_programs("offlineimap")
    host, port = imap_server.plain
    append(imap_server, "oi-one", "oi-two")
    append(imap_server, "oi-sent", folder="Sent")
    rc = tmp_path / "offlineimaprc"
    rc.write_text(
        f"[general]\naccounts = a\nmetadata = {tmp_path}/meta\n\n[Account a]\nlocalrepository = l\nremoterepository = r\n\n"
        f"[Repository l]\ntype = Maildir\nlocalfolders = {tmp_path}/oi\n\n"
        f"[Repository r]\ntype = IMAP\nremotehost = {host}\nremoteport = {port}\nremoteuser = john@example.test\n"
        f"remotepass = {PASSWORD}\nssl = no\nstarttls = no\n"
    )
    run(["offlineimap", "-c", str(rc), "-o", "-u", "basic"], tmp_path)
    assert len(files(tmp_path / "oi" / "INBOX")) == 2
    assert len(files(tmp_path / "oi" / "Sent")) == 1


def test_getmail6_retrieves_over_imap(imap_server, tmp_path):
    require_programs("getmail")
    host, port = imap_server.plain
    append(imap_server, "gm-one", "gm-two", "gm-three")
    dest = tmp_path / "gm"
    dest.mkdir()
    rc = tmp_path / "getmailrc"
    rc.write_text(
        f"[retriever]\ntype = SimpleIMAPRetriever\nserver = {host}\nport = {port}\nusername = john@example.test\n"
        f'password = {PASSWORD}\nmailboxes = ("INBOX",)\n\n'
        # An external MDA: getmail's own Maildir delivery refuses to run as root, which the tests are.
        f'[destination]\ntype = MDA_external\npath = /bin/sh\narguments = ("-c", "cat > {dest}/msg.$$")\nallow_root_commands = true\n\n'
        "[options]\nread_all = true\ndelete = false\nverbose = 0\n"
    )
    run(["getmail", "--rcfile", str(rc), "--getmaildir", str(tmp_path)], tmp_path)
    got = sorted(p.read_bytes() for p in dest.iterdir())
    assert len(got) == 3 and all(b"body of gm-" in g for g in got)


def test_fetchmail_retrieves_over_imap(imap_server, tmp_path):
    require_programs("fetchmail")
    host, port = imap_server.plain
    append(imap_server, "fm-one", "fm-two")
    out = tmp_path / "out"
    out.mkdir()
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f'poll {host} service {port} protocol IMAP auth password user "john@example.test" password "{PASSWORD}" '
        f"sslproto '' keep mda \"/bin/sh -c 'cat > {out}/msg.$$'\"\n"
    )
    rc.chmod(0o600)
    run(["fetchmail", "-f", str(rc), "--nosyslog", "-d0", "--pidfile", str(tmp_path / "pid")], tmp_path)
    got = sorted(p.read_bytes() for p in out.iterdir())
    assert len(got) == 2 and all(b"body of fm-" in g for g in got)


def test_mutt_saves_every_message_to_a_new_folder(imap_server, tmp_path):
    """mutt, driven by keystrokes it pushes to itself (under script(1) for a terminal): tag all in the
    INBOX, save them to =Archive (created on the fly), quit purging: the server ends with them moved."""
    require_programs("mutt", "script")
    host, port = imap_server.plain
    append(imap_server, "mutt-one", "mutt-two")
    rc = tmp_path / "muttrc"
    rc.write_text(
        f'set imap_user="john@example.test"\nset imap_pass="{PASSWORD}"\nset ssl_starttls=no\nset ssl_force_tls=no\n'
        f'set folder="imap://{host}:{port}/"\nset spoolfile="+INBOX"\nset record=""\nset confirmcreate=no\n'
        "set confirmappend=no\nset delete=yes\nset move=no\nset mbox_type=Maildir\nset imap_keepalive=30\n"
    )
    keys = "<tag-pattern>~A<enter><tag-prefix><save-message>=Archive<enter><quit>"
    env = {**os.environ, "HOME": str(tmp_path), "TERM": "xterm", "COLUMNS": "100", "LINES": "30"}
    # script(1) gives the new terminal its own terminal's size: 0x0 with none here. mutt on ncurses 6.5
    # (Debian 13) then exits "Error opening terminal: xterm." (LINES and COLUMNS do not help it): set a size.
    done = subprocess.run(
        ["script", "-qec", f"stty rows 30 cols 100 && mutt -n -F {rc} -e 'push \"{keys}\"'", "/dev/null"],
        capture_output=True, timeout=60, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    c = imaplib.IMAP4(*imap_server.plain, timeout=10)
    c.login("john@example.test", PASSWORD)
    assert c.select("Archive")[1] == [b"2"]
    assert c.select("INBOX")[1] == [b"0"]
    c.logout()
