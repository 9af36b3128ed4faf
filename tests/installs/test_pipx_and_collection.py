"""mailprov outside its checkout: the wheel, a pipx install, a deploy from it, and the Ansible collection.

One session, as a user would go (all on 127.0.15.0/24, nothing from the checkout at run time):

1. ``pip wheel`` builds the wheel; it carries the playbooks, roles and templates;
2. ``pipx install`` of that wheel into a temporary PIPX_HOME; ``mailprov --version`` names the
   installed playbooks;
3. that ``mailprov deploy`` (run from an empty directory) deploys mail.alpha.test over a real sshd with
   ``mailprov_tls_source: acme``: the certificate comes from Pebble (HTTP-01 answered on the host),
   renewals run in the pid-file renewal loop (no systemd here), the site playbook's probe passes;
4. a forced renewal on the host, SIGHUP to the services: ``mailprov probe --expect-cert`` sees the new
   certificate on every port;
5. ``ansible-galaxy collection build`` + ``install``; the user's own playbook calls
   ``mailprov.mail.mailprov_preflight`` for the host, and a bad variable is refused by the argument specs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import require_programs
from tests.deploy import lab
from tests.peers.knot import KnotServer
from tests.peers.pebble import Pebble
from tests.peers.sshd import SSHD

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(900)]

SSHD_ADDRESS, SSHD_PORT = "127.0.15.2", 2722
DNS_ADDRESS, DNS_PORT = "127.0.15.54", 3553
CA_ADDRESS = "127.0.15.3"
HOST = lab.LabHost("mail.alpha.test", "alpha.test", "127.0.15.20", Path("/nonexistent"), "alex@alpha.test", "alex-install-secret")
PROBE_SOURCE = "127.0.15.99"
TIMINGS: dict[str, float] = {}


def zones() -> dict[str, str]:
    """The demo zones moved to this block: mail.alpha.test is 127.0.15.20, mail.beta.test 127.0.15.30."""
    out = {}
    for name, text in lab.zones().items():
        text = text.replace("127.0.6.10", "127.0.15.20").replace("127.0.6.20", "127.0.15.30")
        text = text.replace("6.0.127.in-addr.arpa", "15.0.127.in-addr.arpa")
        text = text.replace("\n10   PTR", "\n20   PTR").replace("\n20   PTR   mail.beta", "\n30   PTR   mail.beta")
        out[name.replace("6.0.127.in-addr.arpa", "15.0.127.in-addr.arpa")] = text
    return out


def run(
    cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)


class Session:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.wheel: Path | None = None
        self.mailprov: Path | None = None
        self.env: dict[str, str] = {}
        self.inventory: Path | None = None
        self.host = HOST
        self.deploy: subprocess.CompletedProcess[str] | None = None
        self.ca: Pebble | None = None


@pytest.fixture(scope="module")
def installed() -> Iterator[Session]:
    """The wheel built, pipx-installed, and deployed with it against sshd + Knot + Pebble."""
    require_programs("pipx", "sshd", "knotd", "pebble")
    root = Path(tempfile.mkdtemp(prefix="mailprov-install-"))
    root.chmod(0o755)
    session = Session(root)
    session.host = lab.LabHost(**{**HOST.__dict__, "prefix": root / "hosts" / "alpha"})
    session.host.prefix.mkdir(parents=True)
    session.host.prefix.chmod(0o755)
    (root / "hosts").chmod(0o755)
    started = time.monotonic()
    built = run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(root / "dist"), str(lab.REPO)])
    assert built.returncode == 0, built.stderr
    session.wheel = next((root / "dist").glob("mailprov-*.whl"))
    TIMINGS["wheel build"] = time.monotonic() - started
    session.env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MAILPROV_", "ANSIBLE_", "VIRTUAL_ENV", "PYTHONPATH"))},
        "PIPX_HOME": str(root / "pipx"),
        "PIPX_BIN_DIR": str(root / "bin"),
        "NO_COLOR": "1",
    }
    started = time.monotonic()
    pipx = run(["pipx", "install", str(session.wheel)], env=session.env)  # pipx's own Python, as a user's pipx
    assert pipx.returncode == 0, pipx.stdout + pipx.stderr
    TIMINGS["pipx install"] = time.monotonic() - started
    session.mailprov = root / "bin" / "mailprov"
    try:
        with (
            SSHD(root / "sshd", SSHD_ADDRESS, SSHD_PORT) as sshd,
            KnotServer(root / "knot", DNS_ADDRESS, DNS_PORT, zones()),
            Pebble(root / "pebble", CA_ADDRESS, 14000, f"{DNS_ADDRESS}:{DNS_PORT}", http_port=5002) as ca,
        ):
            session.ca = ca
            dns = f"{DNS_ADDRESS}:{DNS_PORT}"
            session.inventory = lab.write_inventory(
                root / "inventory.yml",
                sshd.ansible_vars(),
                [session.host],
                dns,
                "",  # no prebuilt wheel: the installed mailprov packs itself into one
                mailprov_probe_source_address=PROBE_SOURCE,
                mailprov_base_venv_site_dirs=[sysconfig.get_paths()["purelib"]],  # the dependencies, shared (no index)
                mailprov_tls_source="acme",
                mailprov_tls_acme_directory=ca.directory,
                mailprov_tls_acme_ca_bundle_src=str(ca.ca_bundle),
                mailprov_tls_acme_http01_listen="{{ lab_address }}:5002",
                mailprov_tls_acme_email="postmaster@alpha.test",
                mailprov_tls_acme_renew_interval=3600,
            )
            workdir = root / "elsewhere"  # not the checkout: nothing may be found relative to it
            workdir.mkdir()
            started = time.monotonic()
            session.deploy = run([str(session.mailprov), "deploy", "-i", str(session.inventory)], env=session.env, cwd=workdir)
            TIMINGS["deploy from the pipx install (first, with ACME)"] = time.monotonic() - started
            yield session
    finally:
        pidfile = session.host.prefix / "run" / "mailprov" / "cert-renew.pid"
        if pidfile.exists():
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
        lab.stop_services([session.host])
        print("\ntimings: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))
        shutil.rmtree(root, ignore_errors=True)


def test_the_wheel_carries_the_ansible_content(installed: Session) -> None:
    assert installed.wheel is not None
    names = zipfile.ZipFile(installed.wheel).namelist()
    for path in (
        "mailprov/ansible_content/playbooks/site.yml",
        "mailprov/ansible_content/roles/mailprov_tls/tasks/acme.yml",
        "mailprov/ansible_content/roles/mailprov_base/meta/argument_specs.yml",
        "mailprov/ansible_content/templates/mailprov.toml.j2",
        "mailprov/ansible_content/galaxy.yml",
        "mailprov/acme/issuer.py",
    ):
        assert path in names, path


def test_version_names_the_installed_playbooks(installed: Session) -> None:
    proc = run([str(installed.mailprov), "--version"], env=installed.env)
    assert proc.returncode == 0
    assert proc.stdout.startswith("mailprov 0.1.0\n"), proc.stdout
    assert f"{installed.root}/pipx/venvs/mailprov/" in proc.stdout and "ansible_content (installed)" in proc.stdout


def test_deploy_from_the_pipx_install_with_an_acme_certificate(installed: Session) -> None:
    deploy = installed.deploy
    assert deploy is not None and deploy.returncode == 0, (deploy.stdout + deploy.stderr)[-6000:]
    changed = [line for line in deploy.stdout.splitlines() if line.startswith("  changed  mail.alpha.test")]
    assert any(line.endswith("mailprov_tls : Issue or renew the certificate from the ACME CA") for line in changed), changed
    assert any(line.endswith("mailprov_tls : Renew in a loop under the pid-file process manager") for line in changed), changed
    assert "FAILED" not in deploy.stdout
    cert = installed.host.cert.read_text()
    issuer = subprocess.run(["openssl", "x509", "-noout", "-issuer"], input=cert, capture_output=True, text=True).stdout
    assert "Pebble Intermediate CA" in issuer
    key = installed.host.prefix / "etc" / "mailprov" / "tls" / "mail.alpha.test.key"
    assert oct(key.stat().st_mode & 0o777) == "0o640" and key.stat().st_uid == 0
    loop_pid = int((installed.host.prefix / "run" / "mailprov" / "cert-renew.pid").read_text())
    os.kill(loop_pid, 0)
    assert "unchanged: valid until" in (installed.host.prefix / "var" / "log" / "mailprov" / "cert-renew.log").read_text()


def probe(installed: Session, *extra: str) -> dict:
    proc = run(
        [
            str(installed.mailprov), "probe", "mail.alpha.test", "--address", installed.host.address,
            "--smtp-port", str(lab.PORTS["smtp"]), "--submission-port", str(lab.PORTS["submission"]),
            "--submissions-port", str(lab.PORTS["submissions"]), "--pop3-port", str(lab.PORTS["pop3"]),
            "--pop3s-port", str(lab.PORTS["pop3s"]), "--imap-port", str(lab.PORTS["imap"]),
            "--imaps-port", str(lab.PORTS["imaps"]), "--resolver", f"{DNS_ADDRESS}:{DNS_PORT}",
            "--source-address", PROBE_SOURCE, "--format", "json", *extra,
        ],
        env=installed.env,
        timeout=120,
    )  # fmt: skip
    return {"rc": proc.returncode, "checks": json.loads(proc.stdout)["domains"][0]["checks"], "stderr": proc.stderr}


def test_renewal_on_the_host_reaches_the_running_services(installed: Session) -> None:
    assert installed.deploy is not None and installed.deploy.returncode == 0
    host = installed.host
    old = host.cert.read_bytes()
    venv_python = host.prefix / "opt" / "mailprov" / "venv" / "bin" / "python"
    acme_toml = host.prefix / "etc" / "mailprov" / "acme.toml"
    started = time.monotonic()
    renewed = run([str(venv_python), "-m", "mailprov.deploy", "cert", "renew", "--force", "-c", str(acme_toml)], timeout=180)
    TIMINGS["forced renewal on the host"] = time.monotonic() - started
    assert renewed.returncode == 0 and "issued by Pebble" in renewed.stdout, renewed.stdout + renewed.stderr
    assert host.cert.read_bytes() != old
    for service in ("smtp", "pop3", "imap"):  # what an operator (or a deploy hook) does to load it at once
        os.kill(int((host.prefix / "run" / "mailprov" / f"{service}.pid").read_text()), signal.SIGHUP)
    deadline = time.monotonic() + 30
    result = probe(installed, "--expect-cert", str(host.cert))
    while time.monotonic() < deadline and not all(c["status"] == "pass" for c in result["checks"] if c["id"] == "probe.tls"):
        time.sleep(0.5)
        result = probe(installed, "--expect-cert", str(host.cert))
    TIMINGS["renewal seen by probe (after SIGHUP)"] = time.monotonic() - started
    tls = [c for c in result["checks"] if c["id"] == "probe.tls"]
    assert len(tls) == 7 and all(c["status"] == "pass" for c in tls), tls
    certs = [c for c in result["checks"] if c["id"] == "probe.cert"]
    assert certs and all(c["status"] == "pass" and "Pebble Intermediate CA" in c["summary"] for c in certs), certs
    assert result["rc"] == 0, result


def user_playbook(installed: Session, name: str, play: dict) -> subprocess.CompletedProcess[str]:
    """Build the collection from the repository, install it, run the user's own playbook with it."""
    root = installed.root / "user"
    collections = root / "collections"
    if not collections.exists():
        root.mkdir()
        galaxy = Path(sys.executable).with_name("ansible-galaxy")
        built = run([str(galaxy), "collection", "build", "--output-path", str(root), str(lab.REPO)], env=installed.env)
        assert built.returncode == 0, built.stdout + built.stderr
        tarball = next(root.glob("mailprov-mail-*.tar.gz"))
        done = run([str(galaxy), "collection", "install", "-p", str(collections), str(tarball)], env=installed.env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert (collections / "ansible_collections" / "mailprov" / "mail" / "roles" / "mailprov_tls" / "tasks" / "acme.yml").exists()
    playbook = root / f"{name}.yml"
    playbook.write_text(yaml.safe_dump([play], sort_keys=False))
    env = {**installed.env, "ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_ROLES_PATH": str(root / "no-roles")}
    env["ANSIBLE_HOST_KEY_CHECKING"] = "False"
    playbook_bin = Path(sys.executable).with_name("ansible-playbook")
    return run([str(playbook_bin), "-i", str(installed.inventory), str(playbook)], env=env, cwd=root)


def test_users_own_playbook_calls_the_collections_roles(installed: Session) -> None:
    assert installed.deploy is not None and installed.deploy.returncode == 0
    play = {
        "name": "My mail host's DNS, checked with the mailprov.mail collection",
        "hosts": "mailprov",
        "gather_facts": False,
        "roles": [{"role": "mailprov.mail.mailprov_preflight"}],
    }
    proc = user_playbook(installed, "preflight", play)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "mailprov.mail.mailprov_preflight : " in proc.stdout and "failed=0" in proc.stdout


def test_the_argument_specs_refuse_a_bad_variable(installed: Session) -> None:
    play = {
        "name": "A typo in the user's variables",
        "hosts": "mailprov",
        "gather_facts": False,
        "vars": {"mailprov_base_install": "pip"},
        "roles": [{"role": "mailprov.mail.mailprov_base"}],
    }
    proc = user_playbook(installed, "bad", play)
    assert proc.returncode != 0
    assert "mailprov_base_install" in proc.stdout and "wheel, offline, link, none" in proc.stdout, proc.stdout[-3000:]
