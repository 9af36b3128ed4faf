"""Fixtures shared by every test area."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from mailprov import config as config_mod

# The Debian package of each peer program the tests run (all listed in tests/debian-packages.txt).
PACKAGES = {
    "knotd": "knot",
    "knotc": "knot",
    "kdig": "knot-dnsutils",
    "dig": "bind9-dnsutils",
    "unbound": "unbound",
    "postfix": "postfix",
    "smtp-sink": "postfix",
    "smtp-source": "postfix",
    "dovecot": "dovecot-core",
    "swaks": "swaks",
    "fetchmail": "fetchmail",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ss": "iproute2",
    "systemd-analyze": "systemd",
    "openssl": "openssl",
    "setpriv": "util-linux",
}
# Perl modules swaks needs for --tls and --auth: Recommends of swaks, which ./dev test installs by name.
PERL_MODULES = {"Net::SSLeay": "libnet-ssleay-perl", "Authen::SASL": "libauthen-sasl-perl"}


def require_programs(*names: str) -> None:
    """Fail (not skip) when a peer program is missing, naming its Debian package: ./dev test installs them
    (tests/debian-packages.txt), so absence is a bug."""
    missing = [n for n in names if not shutil.which(n) and not Path(f"/usr/sbin/{n}").exists()]
    if missing:
        packages = ", ".join(f"{n} (Debian package {PACKAGES.get(n, '?')})" for n in missing)
        pytest.fail(f"peer programs missing: {packages}; run ./dev test, which installs tests/debian-packages.txt")


def require_perl_modules(*names: str) -> None:
    """Fail (not skip) when a Perl module a peer needs is missing, naming its Debian package."""
    missing = [n for n in names if subprocess.run(["perl", f"-M{n}", "-e", "1"], capture_output=True, timeout=30).returncode != 0]
    if missing:
        packages = ", ".join(f"{n} (Debian package {PERL_MODULES.get(n, '?')})" for n in missing)
        pytest.fail(f"Perl modules missing: {packages}; run ./dev test, which installs tests/debian-packages.txt")


@pytest.fixture
def make_config(tmp_path: Path):
    """Build a validated Config rooted in a temporary directory; keyword tables override sections."""

    def build(hostname: str = "mail.example.test", domains: tuple[str, ...] = ("example.test",), **sections) -> config_mod.Config:
        data = {
            "server": {"hostname": hostname, "domains": list(domains)},
            "paths": {
                "queue_dir": str(tmp_path / "queue"),
                "mail_dir": str(tmp_path / "mail"),
                "state_dir": str(tmp_path / "state"),
                "users_file": str(tmp_path / "etc" / "users"),
                "aliases_file": str(tmp_path / "etc" / "aliases"),
            },
        }
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return config_mod.from_dict(data, source=str(tmp_path / "mailprov.toml"))

    return build


def write_toml(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# The two-host Ansible deployment is built once per session and shared by tests/deploy and the deploy
# scenario (tests/scenarios/t04_deploy_twice): declared here, above both, so there is one instance.
from tests.deploy.fixtures import deployed, lab_peers, lab_root  # noqa: E402, F401
