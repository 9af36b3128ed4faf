"""fetchmail (Debian's package) fetching from the POP3 server over STLS (110-style) and implicit TLS
(995-style) into a local mailbox, certificate checked, messages deleted from the server after delivery."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_programs
from tests.peers.pop3_server import POP3Thread
from tests.pop3.conftest import PASSWORD
from tests.pop3.helpers import deliver, message, user_maildir

pytestmark = pytest.mark.peers


def run_fetchmail(tmp_path: Path, config, host: str, port: int, *, implicit: bool) -> tuple[subprocess.CompletedProcess, list[bytes]]:
    """One fetchmail run; returns the result and the messages its MDA stored (one file each)."""
    from mailprov.tls import certificate_paths

    cert, _ = certificate_paths(config)
    out = tmp_path / "fetched"
    out.mkdir(exist_ok=True)
    home = tmp_path / "fetchmail-home"
    home.mkdir(exist_ok=True)
    rc = home / "fetchmailrc"
    tls = "ssl" if implicit else "sslproto 'TLS1.2+'"  # sslproto without ssl: STLS is mandatory
    rc.write_text(
        f"set no syslog\n"
        f"poll mail.example.test via {host} port {port} protocol POP3 uidl\n"
        f'  user "john@example.test" there with password "{PASSWORD}" is root here\n'
        f"  {tls} sslcertck sslcertfile {cert} sslcommonname mail.example.test\n"
        f"  mda \"/bin/sh -c 'cat > {out}/msg.$$'\"\n"
    )
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(home), HOME=str(home))
    result = subprocess.run(
        ["fetchmail", "-f", str(rc), "-v", "--nodetach"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    return result, [p.read_bytes() for p in sorted(out.iterdir())]


@pytest.mark.parametrize("implicit", [False, True], ids=["stls", "implicit-tls"])
def test_fetchmail_fetches_everything_byte_for_byte(pop3_config, tmp_path, implicit):
    require_programs("fetchmail")
    config = pop3_config(trusted=False)  # passwords only over TLS
    box = user_maildir(config, "john@example.test")
    bodies = [message(1, size=3000), b"Subject: dots\n\n.dot line\n..\nend\n", message(3, size=70_000)]
    for body in bodies:
        deliver(box, body)
    with POP3Thread(config) as server:
        host, port = server.tls if implicit else server.plain
        result, fetched = run_fetchmail(tmp_path, config, host, port, implicit=implicit)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 messages" in result.stdout + result.stderr
    # fetchmail adds its own Received line on top; the rest is the message exactly, in LF form.
    stored = sorted(f.split(b"\n", 1)[1] if f.startswith(b"Received:") else f for f in fetched)
    assert len(stored) == 3
    for body in bodies:
        assert any(s.endswith(body) or s.replace(b"\r\n", b"\n").endswith(body) for s in stored), body[:60]
    assert not list((box / "new").iterdir()) and not list((box / "cur").iterdir())
