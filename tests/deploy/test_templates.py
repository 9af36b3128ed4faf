"""templates/: the configuration renders with the role defaults into a file mailprov accepts, and the
systemd units pass ``systemd-analyze verify`` and keep only CAP_NET_BIND_SERVICE."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailprov import config as config_mod
from tests.conftest import require_programs
from tests.deploy.lab import REPO

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    venv = Path(sys.executable).parent.parent
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible-playbook")),
            "tests/deploy/render_templates.yml",
            "-e",
            f"out_dir={out}",
            "-e",
            f"unit_venv={venv}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "ANSIBLE_NOCOLOR": "1", "HOME": str(out)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_config_renders_with_role_defaults_and_loads(rendered: Path) -> None:
    smtp = config_mod.load(rendered / "mailprov.toml")
    assert smtp.server.hostname == "mail.example.org"
    assert smtp.server.domains == ["example.org"]
    assert smtp.smtp.listen == ["0.0.0.0:25"] and smtp.outbound.port == 25
    assert smtp.tls.cert == "/etc/mailprov/tls/mail.example.org.crt"
    assert smtp.paths.queue_dir == "/var/spool/mailprov"
    pop3 = config_mod.load(rendered / "pop3.toml")
    assert pop3.pop3.listen == ["0.0.0.0:110"] and pop3.pop3.tls_listen == ["0.0.0.0:995"]
    assert "[smtp]" not in (rendered / "pop3.toml").read_text()  # each service restarts only for its own file
    imap = config_mod.load(rendered / "imap.toml")
    assert imap.imap.listen == ["0.0.0.0:143"] and imap.imap.tls_listen == ["0.0.0.0:993"]
    assert imap.imap.idle_timeout == 1800 and imap.imap.append_limit == 52428800
    assert "[pop3]" not in (rendered / "imap.toml").read_text() and "[smtp]" not in (rendered / "imap.toml").read_text()


@pytest.mark.parametrize("unit", ["mailprov-smtp.service", "mailprov-pop3.service", "mailprov-imap.service"])
def test_units_verify_and_are_hardened(rendered: Path, unit: str) -> None:
    require_programs("systemd-analyze")
    path = rendered / unit
    verify = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "", verify.stderr
    text = path.read_text()
    for line in (
        "User=mailprov",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
    ):
        assert line in text.splitlines(), line
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=30", str(path)], capture_output=True, text=True
    )
    assert security.returncode == 0, security.stdout[-2000:]
    exposure = [line for line in security.stdout.splitlines() if "Overall exposure level" in line]
    assert exposure and float(exposure[0].split(":")[1].split()[0]) < 3.0, exposure
