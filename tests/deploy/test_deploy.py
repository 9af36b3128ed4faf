"""Two hosts deployed over real SSH: pre-flight passes, both deploy, a second run and check mode change
nothing, the seed's story runs across them, and ``mailprov probe`` proves both (and catches an open relay).

Peers: OpenSSH's sshd on 127.0.6.2 (both inventory hosts connect through it), Knot on 127.0.6.53 with
the A, MX and PTR records of mail.alpha.test (127.0.6.10) and mail.beta.test (127.0.6.20).
"""

from __future__ import annotations

import contextlib
import json
import os
import poplib
import shutil
import smtplib
import ssl
import subprocess
import sys
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailprov.deploy.runner import run_playbook
from tests.deploy import lab

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(1500)]
DELIVERY_TIMEOUT = 60.0  # upper bound for the relay hop; not an assertion on speed


def _client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the lab's certificates are self-signed
    return context


def test_first_deploy_succeeds_on_both_hosts(deployed) -> None:
    first = deployed.runs["first"]
    assert first.ok, "\n".join(deployed.log[-80:])
    assert set(first.hosts) == {"mail.alpha.test", "mail.beta.test"}
    for name, stats in first.hosts.items():
        assert stats["failed"] == 0 and stats["unreachable"] == 0, name
        assert stats["changed"] > 0, name
    # Progress was shown per task and host as it went.
    assert any("mail.alpha.test" in line and "Run mailprov-smtp as a process" in line for line in deployed.log)


def test_check_mode_on_a_fresh_host_reports_changes_and_touches_nothing(deployed) -> None:
    fresh = deployed.runs["fresh-check"]
    assert fresh.ok, str(fresh.failures)
    changed = {task for host, task in fresh.changed_tasks()}
    assert "mailprov_mta : Write the MTA configuration" in changed and "mailprov_base : Create the venv" in changed
    assert set(fresh.hosts) == {"mail.alpha.test"}  # --limit
    assert deployed.runs["fresh-check-files"] == []  # nothing was created under either prefix


def test_pre_flight_ran_before_anything_changed(deployed) -> None:
    events = [e for e in deployed.runs["first"].events if e["event"] == "result"]
    first_change = next(i for i, e in enumerate(events) if e["status"] == "changed")
    preflight = [i for i, e in enumerate(events) if "mailprov_preflight : Check DNS" in e["task"]]
    assert len(preflight) == 2 and max(preflight) < first_change


def test_second_run_changes_nothing(deployed) -> None:
    second = deployed.runs["second"]
    assert second.ok
    assert second.changed_tasks() == []
    assert all(s["changed"] == 0 for s in second.hosts.values())


def test_check_mode_changes_nothing(deployed) -> None:
    check = deployed.runs["check"]
    assert check.ok
    assert check.changed_tasks() == []


def test_each_host_lives_under_its_own_prefix(deployed) -> None:
    from mailprov import config as config_mod

    for host in deployed.hosts:
        cfg = config_mod.load(host.config)
        assert cfg.server.hostname == host.name
        assert cfg.smtp.listen == [f"{host.address}:{lab.PORTS['smtp']}"]
        assert cfg.paths.queue_dir.startswith(str(host.prefix))
        assert (host.prefix / "opt" / "mailprov" / "venv" / ".mailprov-wheel-digest").is_file()
        assert host.cert.is_file()
        pop3 = config_mod.load(host.prefix / "etc" / "mailprov" / "pop3.toml")
        assert pop3.pop3.tls_listen == [f"{host.address}:{lab.PORTS['pop3s']}"]


def test_seed_scenario_across_the_two_hosts(deployed) -> None:
    """alex@alpha.test submits with AUTH to john@beta.test; alpha finds beta by MX and relays; john fetches by POP3."""
    alpha, beta = deployed.host("mail.alpha.test"), deployed.host("mail.beta.test")
    token = uuid.uuid4().hex
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = alpha.user, beta.user, f"seed scenario {token}"
    message.set_content(f"Hello John, this is Alex. {token}\n")
    with smtplib.SMTP(alpha.address, lab.PORTS["submission"], local_hostname="client.alpha.test", timeout=30) as smtp:
        smtp.starttls(context=_client_tls())
        smtp.login(alpha.user, alpha.password)
        refused = smtp.send_message(message)
    assert refused == {}

    deadline = time.monotonic() + DELIVERY_TIMEOUT
    body = b""
    while not body:
        pop = poplib.POP3_SSL(beta.address, lab.PORTS["pop3s"], context=_client_tls(), timeout=30)
        try:
            pop.user(beta.user)
            pop.pass_(beta.password)
            count, _ = pop.stat()
            for number in range(1, count + 1):
                text = b"\r\n".join(pop.retr(number)[1])
                if token.encode() in text:
                    body = text
        finally:
            pop.quit()
        if not body:
            assert time.monotonic() < deadline, f"message {token} did not reach john's mailbox on mail.beta.test"
            time.sleep(0.2)
    # It went through both hosts: beta's Received header names alpha as the sending host.
    assert b"mail.alpha.test" in body and b"mail.beta.test" in body
    assert any(p.is_file() for p in (beta.mail_dir / "beta.test" / "john").rglob("*") if p.parent.name in ("cur", "new"))


def _probe(host: lab.LabHost, dns: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mailprov.deploy", "probe", host.name, "--address", host.address]
    cmd += [f"--{name}-port={port}" for name, port in lab.PORTS.items()]
    cmd += ["--resolver", dns, "--source-address", lab.PROBE_SOURCE, "--expect-cert", str(host.cert), "--format", "json", *extra]
    return subprocess.run(cmd, input=host.password + "\n", capture_output=True, text=True, timeout=300, cwd=lab.REPO)


@pytest.mark.parametrize("name", ["mail.alpha.test", "mail.beta.test"])
def test_probe_passes_on_both_hosts(deployed, name: str) -> None:
    host = deployed.host(name)
    proc = _probe(host, deployed.dns, "--user", host.user, "--password-stdin")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = json.loads(proc.stdout)["domains"][0]["checks"]
    by_id: dict[str, list[str]] = {}
    for check in checks:
        by_id.setdefault(check["id"], []).append(check["status"])
    expected = ("probe.port", "probe.ptr", "probe.banner", "probe.ehlo", "probe.tls", "probe.relay", "probe.submission", "probe.pop3")
    for check_id in (*expected, "probe.imap"):
        assert by_id.get(check_id) and set(by_id[check_id]) == {"pass"}, (check_id, checks)
    # STARTTLS on 25, 587 and IMAP 143, STLS on POP3 110, implicit TLS on 465, 995 and 993
    assert len(by_id["probe.tls"]) == 7
    assert len(by_id["probe.port"]) == 7


def test_probe_fails_on_an_open_relay_naming_the_reason(deployed) -> None:
    """A copy of alpha's configuration with trusted_networks = 0.0.0.0/0, served on 127.0.6.30."""
    alpha = deployed.host("mail.alpha.test")
    relay = lab.LabHost("mail.alpha.test", "alpha.test", "127.0.6.30", lab.host_root("openrelay"), alpha.user, alpha.password)
    etc = relay.prefix / "etc" / "mailprov"
    shutil.copytree(alpha.prefix / "etc", relay.prefix / "etc")
    for path in [etc, *etc.rglob("*")]:  # copies lose the group that lets the service user read them
        src = alpha.prefix / path.relative_to(relay.prefix)
        os.chown(path, src.stat().st_uid, src.stat().st_gid)
    for name in ("mailprov.toml", "pop3.toml"):
        text = (etc / name).read_text().replace(str(alpha.prefix), str(relay.prefix)).replace(alpha.address, relay.address)
        (etc / name).write_text(text.replace("trusted_networks = []", 'trusted_networks = ["0.0.0.0/0"]'))
    assert 'trusted_networks = ["0.0.0.0/0"]' in (etc / "mailprov.toml").read_text()
    daemon = [sys.executable, "-m", "mailprov.deploy.daemon"]
    run = relay.prefix / "run"
    try:
        for service, config in (("smtp", "mailprov.toml"), ("pop3", "pop3.toml")):
            started = subprocess.run(
                [
                    *daemon,
                    "start",
                    "--service",
                    service,
                    "--config",
                    str(etc / config),
                    "--pidfile",
                    str(run / f"{service}.pid"),
                    "--logfile",
                    str(relay.prefix / f"{service}.log"),
                    "--timeout",
                    "60",
                ],
                capture_output=True,
                text=True,
                cwd=lab.REPO,
            )
            assert started.returncode == 0, started.stderr
        proc = _probe(relay, deployed.dns)
        assert proc.returncode == 1, proc.stdout
        relay_checks = [c for c in json.loads(proc.stdout)["domains"][0]["checks"] if c["id"] == "probe.relay"]
        on_25 = [c for c in relay_checks if c["subject"] == f"smtp {relay.address}:{lab.PORTS['smtp']}"]
        assert len(on_25) == 1 and on_25[0]["status"] == "fail", relay_checks
        assert "OPEN RELAY" in on_25[0]["summary"] and "trusted_networks" in on_25[0]["fix"]
    finally:
        for service in ("smtp", "pop3"):
            with contextlib.suppress(Exception):
                subprocess.run([*daemon, "stop", "--pidfile", str(run / f"{service}.pid")], capture_output=True, cwd=lab.REPO, timeout=60)
        lab.remove_hosts([relay])


def test_teardown_helper_stops_services(deployed, tmp_path: Path) -> None:
    """The process manager's status command sees both services of both hosts running (teardown stops them)."""
    for host in deployed.hosts:
        for service in ("smtp", "pop3"):
            pidfile = host.prefix / "run" / "mailprov" / f"{service}.pid"
            status = subprocess.run(
                [sys.executable, "-m", "mailprov.deploy.daemon", "status", "--pidfile", str(pidfile)], capture_output=True, text=True
            )
            assert status.returncode == 0 and status.stdout.startswith("running pid"), (host.name, service, status.stdout)


def test_users_playbook_takes_passwords_from_ansible_vault(deployed) -> None:
    """playbooks/users.yml adds mary@beta.test with a vault-encrypted password; she can then log in over POP3S."""
    beta = deployed.host("mail.beta.test")
    vault_pass = deployed.root / "vault-pass"
    vault_pass.write_text("lab-vault-secret\n")
    vault = str(Path(sys.executable).with_name("ansible-vault"))
    encrypted = subprocess.run(
        [vault, "encrypt_string", "--vault-password-file", str(vault_pass), "--name", "password", "mary-vault-secret"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    block = "\n".join("      " + line for line in encrypted.strip().splitlines())
    extra = deployed.root / "mary.yml"
    extra.write_text(f"mailprov_users_list:\n  - address: mary@beta.test\n{block.replace('      password', '    password', 1)}\n")
    env = {"ANSIBLE_VAULT_PASSWORD_FILE": str(vault_pass)}
    result = run_playbook("users.yml", str(deployed.inventory), limit="mail.beta.test", env=env, extra_args=["-e", f"@{extra}"])
    assert result.ok, "\n".join(result.output[-20:]) + str(result.failures)
    assert ("mail.beta.test", "mailprov_users : Bring users and aliases to the listed state") in result.changed_tasks()
    assert "mary-vault-secret" not in "\n".join(str(e) for e in result.events)  # no_log keeps it out of the output
    pop = poplib.POP3_SSL(beta.address, lab.PORTS["pop3s"], context=_client_tls(), timeout=30)
    try:
        pop.user("mary@beta.test")
        assert pop.pass_("mary-vault-secret").startswith(b"+OK")
    finally:
        pop.quit()
    again = run_playbook("users.yml", str(deployed.inventory), limit="mail.beta.test", env=env, extra_args=["-e", f"@{extra}"])
    assert again.ok and again.changed_tasks() == []
