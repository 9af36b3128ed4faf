"""A service that drops privileges never depends on what its caller's environment lets its user read.

Started as root from code its user cannot read (a private copy of mailprov, dnspython, aiosmtplib and
dkimpy, first on PYTHONPATH in a mode-0700 directory, as a clone under /root is), ``mailprov serve all``
still delivers locally, relays by MX (dnspython's asyncio backend and record types, aiosmtplib,
MTA-STS, DKIM signing), and serves POP3: every module it needs was imported before the drop, and none
is imported after it (the late-import audit hook would log it). A server whose data directory its
user cannot reach refuses to start (exit code 2), naming the path, what blocks it and the fix, instead
of answering 451 at delivery time.

Addresses in 127.0.18.0/24: server .30, DNS .53, the receiving MX .20, clients .40.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import poplib
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.faults.conftest import wait_until
from tests.peers.mailprov_server import MailprovTree, free_port, run_mailprov
from tests.security.conftest import insecure_context
from tests.security.test_privilege import service_user  # noqa: F401 - the throwaway system user fixture

IP, DNS_IP, MX_IP, CLIENT_IP = "127.0.18.30", "127.0.18.53", "127.0.18.20", "127.0.18.40"
PRIVATE_PACKAGES = ("mailprov", "dns", "aiosmtplib", "dkim")
ZONE = """$ORIGIN remote.test.
$TTL 300
@     SOA  ns.remote.test. hostmaster.remote.test. 1 3600 600 86400 300
@     NS   ns.remote.test.
ns    A    {mx}
@     MX   10 mail.remote.test.
mail  A    {mx}
"""


class Sink:
    """The receiving MX: aiosmtpd keeping every message it is given."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.messages.append(envelope.original_content or envelope.content)
        return "250 2.0.0 kept"


@pytest.fixture
def private_code() -> Iterator[Path]:
    """mailprov and the libraries it imports lazily, copied into a directory only root can enter."""
    root = Path(tempfile.mkdtemp(prefix="mailprov-private-code-"))  # mode 0700, owned by root
    for name in PRIVATE_PACKAGES:
        source = Path(importlib.import_module(name).__file__ or "").parent
        shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def remote_mx() -> Iterator[tuple[Sink, int, str]]:
    """The receiving MX on 127.0.18.20 and an authoritative server for remote.test on 127.0.18.53."""
    sink, port, dns_port = Sink(), free_port(MX_IP), free_port(DNS_IP)
    controller = Controller(sink, hostname=MX_IP, port=port, server_hostname="mail.remote.test")
    controller.start()
    zone_dir = Path(tempfile.mkdtemp(prefix="mailprov-zone-"))
    (zone_dir / "remote.test.zone").write_text(ZONE.format(mx=MX_IP))
    zone = zone_dir / "remote.test.zone"
    command = [sys.executable, "-m", "mailprov.deploy", "dns", "serve-zones", "--listen", f"{DNS_IP}:{dns_port}", str(zone)]
    zone_server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        def answers() -> bool:
            with contextlib.suppress(Exception):
                dns.query.udp(dns.message.make_query("remote.test.", "MX"), DNS_IP, timeout=0.5, port=dns_port)
                return True
            return False

        assert wait_until(answers, 20), "the zone server did not answer"
        yield sink, port, f"{DNS_IP}:{dns_port}"
    finally:
        zone_server.terminate()
        zone_server.wait(timeout=10)
        controller.stop()
        shutil.rmtree(zone_dir, ignore_errors=True)


def test_started_from_unreadable_code_it_still_delivers_relays_and_serves(service_user, private_code: Path, remote_mx) -> None:  # noqa: F811
    sink, mx_port, resolver = remote_mx
    uid, gid = service_user.pw_uid, service_user.pw_gid
    tree = MailprovTree.create(
        hostname="mx.priv.test",
        domains=["priv.test"],
        ip=IP,
        server={"user": service_user.pw_name},
        smtp={"trusted_networks": [f"{CLIENT_IP}/32"], "processes": 1},
        queue={"retry_min": 1},
        outbound={"port": mx_port, "resolvers": [resolver], "dkim_selector": "s1", "dkim_key": "DKIM"},
    )
    try:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_path = tree.root / "etc" / "s1.key"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        key_path.chmod(0o600)  # root's only: loaded before the drop
        tree.config_path.write_text(tree.config_path.read_text().replace('"DKIM"', f'"{key_path}"'))
        tree.add_user("alice@priv.test", "alice-secret-1")
        for dirpath, _dirs, files in os.walk(tree.root):
            for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
                os.chown(name, uid, gid)
        os.chown(key_path, 0, 0)
        # The service user really cannot read the code it runs.
        denied = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "cat", str(private_code / "mailprov" / "__init__.py")],
            capture_output=True,
            timeout=30,
        )
        assert denied.returncode != 0 and b"Permission denied" in denied.stderr

        server = run_mailprov(tree.config_path, services="all", env={"PYTHONPATH": f"{private_code}:{Path(__file__).resolve().parents[2]}"})
        try:
            with smtplib.SMTP(IP, tree.ports["smtp"], timeout=20, source_address=(CLIENT_IP, 0)) as client:
                client.sendmail("carol@client.test", ["alice@priv.test"], "Subject: local\r\n\r\nhello alice\r\n")
                client.sendmail("alice@priv.test", ["bob@remote.test"], "From: alice@priv.test\r\nSubject: out\r\n\r\nhello bob\r\n")
            assert wait_until(lambda: tree.maildir_files("alice@priv.test"), 20), server.log()
            assert wait_until(lambda: sink.messages, 30), "not relayed by MX:\n" + server.log()
            assert b"DKIM-Signature:" in sink.messages[0] and b"hello bob" in sink.messages[0]
            pop = poplib.POP3(IP, int(tree.data["pop3"]["listen"][0].rsplit(":", 1)[1]), timeout=20)
            pop.stls(insecure_context())
            pop.user("alice@priv.test")
            pop.pass_("alice-secret-1")
            assert b"hello alice" in b"\r\n".join(pop.retr(1)[1])
            pop.quit()
            time.sleep(0.2)
            log = server.log()
            assert "dropped privileges to" in log
            assert "after dropping privileges" not in log, log
            assert "internal error" not in log and "451" not in log, log
        finally:
            server.stop()
    finally:
        tree.cleanup()


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from mailprov.cli import main; main()", "serve", "all", "-c", str(config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_refuses_to_start_when_its_user_cannot_reach_the_data_dir(service_user) -> None:  # noqa: F811
    private = Path(tempfile.mkdtemp(prefix="mailprov-private-data-"))  # mode 0700, root's: not enterable by the user
    tree = MailprovTree.create(hostname="mx.priv.test", domains=["priv.test"], ip=IP, server={"user": service_user.pw_name})
    try:
        queue_dir = private / "spool" / "queue"
        tree.config_path.write_text(tree.config_path.read_text().replace(f'"{tree.root / "queue"}"', f'"{queue_dir}"'))
        result = _serve(tree.config_path)
        assert result.returncode == 2, result.stderr
        message = result.stderr
        assert f"user {service_user.pw_name} cannot enter {private} (mode 0700, owner root:root)" in message, message
        assert f"queue directory (paths.queue_dir) {queue_dir}" in message, message
        assert "fix: give" in message and "chmod o+x on every parent directory" in message, message
        assert "Traceback" not in message
        # Nothing was bound or served: the ports are free again at once.
        with smtplib.SMTP() as probe, contextlib.suppress(OSError):
            probe.connect(IP, tree.ports["smtp"])
            pytest.fail("the refused server is listening")
    finally:
        tree.cleanup()
        shutil.rmtree(private, ignore_errors=True)


def test_refuses_to_start_when_its_user_cannot_read_the_users_file(service_user) -> None:  # noqa: F811
    tree = MailprovTree.create(hostname="mx.priv.test", domains=["priv.test"], ip=IP, server={"user": service_user.pw_name})
    try:
        tree.add_user("alice@priv.test", "alice-secret-1")
        users = tree.root / "etc" / "users"
        os.chown(users, 0, 0)
        users.chmod(0o600)
        result = _serve(tree.config_path)
        assert result.returncode == 2, result.stderr
        assert f"cannot read {users} (mode 0600, owner root:root)" in result.stderr, result.stderr
        assert f"users file (paths.users_file) {users}" in result.stderr
        assert f"chgrp {service_user.pw_name} {users} && chmod g+r {users}" in result.stderr
    finally:
        tree.cleanup()


def test_what_the_user_must_reach_after_the_drop(make_config, tmp_path: Path) -> None:
    from mailprov.privileges import needs

    config = make_config(smtp={"processes": 1})
    required, restart = needs(config, ["smtp", "pop3"])
    assert [(n.path, n.mode) for n in required] == [
        (config.paths.users_file, "r"),
        (config.paths.aliases_file, "r"),
        (config.paths.queue_dir, "rwx"),
        (config.paths.mail_dir, "rwx"),
        (config.paths.state_dir, "rwx"),
    ]
    assert restart == []  # one process: nothing is started after the drop
    config_file = tmp_path / "mailprov.toml"
    config_file.write_text("")
    workers = make_config(smtp={"processes": 2})
    workers.source = str(config_file)
    _, restart = needs(workers, ["smtp"])
    assert [n.what for n in restart] == ["Python interpreter", "mailprov's code", "Python's standard library", "configuration file"]
    assert needs(workers, ["pop3"])[1] == []  # POP3 starts no workers
