"""Fixtures shared by every test area."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from mailprov import config as config_mod


def require_programs(*names: str) -> None:
    """Fail (not skip) when a peer program is missing: ./dev test installs them, so absence is a bug."""
    missing = [n for n in names if not shutil.which(n) and not Path(f"/usr/sbin/{n}").exists()]
    if missing:
        pytest.fail(f"peer programs missing: {', '.join(missing)} (run ./dev test, which installs them)")


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
