"""Least privilege: bind as root, then run as an unprivileged user; files are the minimum; the systemd
units are hardened ("OK" or better in ``systemd-analyze security --offline=true``).

A throwaway system user is created for the test and removed afterwards. ``mailprov serve all`` starts as
root on ports below 1024 (in 127.0.7.0/24), and the test then checks, from /proc, that every process of
the service (the master and its SMTP workers) runs as that user with no capabilities; that what it
writes (queue and Maildir files) is that user's, mode 0600 in 0700 directories; and that the TLS key can
stay readable by root alone (it is loaded before the drop).
"""

from __future__ import annotations

import contextlib
import grp
import os
import poplib
import pwd
import re
import shutil
import smtplib
import stat
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from tests.conftest import require_programs
from tests.faults.conftest import wait_until
from tests.peers.mailprov_server import MailprovTree, run_mailprov
from tests.security.conftest import insecure_context

ROOT = Path(__file__).resolve().parents[2]
TEST_USER = "mailprov-t7"
IP = "127.0.7.140"


@pytest.fixture
def service_user():
    """A system user for this test only (root required: CI runs ./dev test as root)."""
    if os.geteuid() != 0:
        pytest.fail("bind-then-drop needs root (./dev test runs as root in CI)")
    subprocess.run(["userdel", TEST_USER], capture_output=True, timeout=30)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER], check=True, timeout=30)
    try:
        yield pwd.getpwnam(TEST_USER)
    finally:
        subprocess.run(["userdel", TEST_USER], capture_output=True, timeout=30)
        with contextlib.suppress(KeyError):
            grp.getgrnam(TEST_USER)
            subprocess.run(["groupdel", TEST_USER], capture_output=True, timeout=30)


def group_pids(pgid: int) -> list[int]:
    pids = []
    for path in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(path.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(path.parent.name))
    return pids


def status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def test_bind_as_root_then_run_as_the_service_user(service_user) -> None:
    uid, gid = service_user.pw_uid, service_user.pw_gid
    ports = {"smtp": 25, "submission": 587, "submissions": 465, "pop3": 110, "pop3s": 995}
    tree = MailprovTree.create(
        hostname="mx.priv.test",
        domains=["priv.test"],
        ip=IP,
        server={"user": TEST_USER},
        smtp={
            "listen": [f"{IP}:25"],
            "submission_listen": [f"{IP}:587"],
            "submissions_listen": [f"{IP}:465"],
            "trusted_networks": ["127.0.7.141/32"],
        },
        pop3={"listen": [f"{IP}:110"], "tls_listen": [f"{IP}:995"]},
        queue={"retry_min": 60},
        outbound={"transports": [{"domain": "remote.test", "host": "127.0.7.142", "port": 9, "tls": "none"}]},  # nothing listens
    )
    try:
        tree.add_user("alice@priv.test", "alice-secret-1")
        # Hand the tree to the test user, as the deployment role does; etc/ stays root's.
        for dirpath, _dirs, files in os.walk(tree.root):
            for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
                os.chown(name, 0 if "/etc" in name else uid, 0 if "/etc" in name else gid)
        users_file = tree.root / "etc" / "users"
        os.chown(users_file, 0, gid)  # root:service-group 0640: readable, not writable, by the service
        users_file.chmod(0o640)
        # A root-only TLS key: loaded before the drop, unreadable after it.
        from mailprov.tls import generate_self_signed

        tls_dir = tree.root / "etc" / "tls"
        generate_self_signed("mx.priv.test", tls_dir / "cert.pem", tls_dir / "key.pem")
        os.chown(tls_dir / "key.pem", 0, 0)
        (tls_dir / "key.pem").chmod(0o600)
        tls_table = f'[tls]\ncert = "{tls_dir}/cert.pem"\nkey = "{tls_dir}/key.pem"\n\n'
        config = tree.config_path.read_text().replace("[smtp]", tls_table + "[smtp]", 1)
        tree.config_path.write_text(config)

        server = run_mailprov(tree.config_path, services="all")
        try:
            # Workers load, then drop by themselves: give every process of the group a bounded moment to do so.
            settled = lambda: all(status(p)["Uid"].split()[0] != "0" for p in group_pids(server.proc.pid))  # noqa: E731
            wait_until(settled, 30, 0.2)
            pids = group_pids(server.proc.pid)
            assert pids, "no service process found"
            for pid in pids:
                st = status(pid)
                assert st["Uid"].split() == [str(uid)] * 4, f"pid {pid} runs as {st['Uid']}"
                assert st["Gid"].split() == [str(gid)] * 4, f"pid {pid} group {st['Gid']}"
                assert st["Groups"] in ("", str(gid)), f"pid {pid} keeps supplementary groups {st['Groups']}"
                assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0, f"pid {pid} keeps capabilities"
            listening = subprocess.run(["ss", "-ltnH", "src", IP], capture_output=True, text=True, timeout=30).stdout
            for port in ports.values():
                assert f"{IP}:{port} " in listening, f"port {port} not bound"

            # TLS works with the root-only key; the service user cannot read that key.
            with smtplib.SMTP_SSL(IP, 465, timeout=20, context=insecure_context()) as client:
                client.ehlo("c.test")
            pop = poplib.POP3_SSL(IP, 995, timeout=20, context=insecure_context())
            pop.quit()
            denied = subprocess.run(
                ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "cat", str(tls_dir / "key.pem")],
                capture_output=True,
                timeout=30,
            )
            assert denied.returncode != 0 and b"Permission denied" in denied.stderr
            writable = subprocess.run(
                ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "sh", "-c", f"echo x >> {users_file}"],
                capture_output=True,
                timeout=30,
            )
            assert writable.returncode != 0, "the service user must not be able to change the users file"

            # What it writes is its own, private to it.
            with smtplib.SMTP(IP, 25, timeout=20, source_address=("127.0.7.141", 0)) as client:
                client.sendmail("a@client.test", ["alice@priv.test"], "Subject: local\r\n\r\nhi\r\n")
                client.sendmail("a@client.test", ["bob@remote.test"], "Subject: queued\r\n\r\nhi\r\n")
            assert wait_until(lambda: tree.maildir_files("alice@priv.test"), 20)
            assert wait_until(lambda: tree.queue_files("deferred"), 30), "the remote message should wait in deferred/"
            for path in [*tree.maildir_files("alice@priv.test"), *tree.queue_files("deferred")]:
                info = path.stat()
                assert (info.st_uid, info.st_gid) == (uid, gid), f"{path} owned by {info.st_uid}:{info.st_gid}"
                assert stat.S_IMODE(info.st_mode) == 0o600, f"{path} mode {oct(info.st_mode)}"
                assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, f"{path.parent} is not 0700"
        finally:
            server.stop()
    finally:
        tree.cleanup()


def render_units(tmp: Path, **overrides: str) -> list[Path]:
    """Render the unit templates with the roles' defaults (Jinja2, as Ansible would), plus ``overrides``."""
    values: dict = {}
    for role in ("mailprov_base", "mailprov_mta", "mailprov_pop3", "mailprov_imap"):
        values.update(yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()))
    values.update(overrides, inventory_hostname="mx.example.org")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update(dirname=os.path.dirname, basename=os.path.basename)  # the Ansible filters the defaults use

    def resolve(value, depth: int = 0):  # type: ignore[no-untyped-def]
        while isinstance(value, str) and "{{" in value and depth < 10:
            value, depth = env.from_string(value).render(**context), depth + 1
        return [resolve(v) for v in value] if isinstance(value, list) else value

    context = dict(values)
    for key in values:
        with contextlib.suppress(jinja2.TemplateError, TypeError):  # controller-only values (lookups) stay unresolved
            context[key] = resolve(values[key])
    out = []
    for name in ("mailprov-smtp.service", "mailprov-pop3.service", "mailprov-imap.service"):
        path = tmp / name
        path.write_text(env.from_string((ROOT / "templates" / f"{name}.j2").read_text()).render(**context))
        out.append(path)
    return out


def test_units_are_valid_and_rated_ok_or_better(tmp_path: Path) -> None:
    require_programs("systemd-analyze")
    # The real virtualenv, so that 'verify' finds an executable ExecStart; every other value is a default.
    for unit in render_units(tmp_path, mailprov_base_venv=str(Path(shutil.which("python3") or "").parent.parent)):
        text = unit.read_text()
        assert "User=mailprov" in text and "NoNewPrivileges=yes" in text
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        problems = [ln for ln in verify.stderr.splitlines() if unit.name in ln and "not executable" not in ln]
        assert not problems, problems
        command = ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)]
        security = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", security.stdout)
        assert match, security.stdout[-2000:] + security.stderr
        exposure, rating = float(match.group(1)), match.group(2)
        print(f"{unit.name}: exposure {exposure} {rating}")
        assert rating in ("SAFE", "OK") and exposure <= 4.9, f"{unit.name}: {exposure} {rating}"
