"""Offline mode (``mailprov_base_install: offline``) over a real sshd: every dependency reaches the target
as a wheel, the target's pip never asks a package index, and the venv runs mailprov and the MTA.

Peers: OpenSSH's sshd on 127.0.6.30:2632 (its own, not the two-host lab's), an HTTP server on 127.0.6.31
standing in for the package index (it counts requests and answers 404), and one host, mail.offline.test,
whose MTA listens on 127.0.6.30 with ports of its own.
"""

from __future__ import annotations

import http.server
import json
import os
import smtplib
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from mailprov.deploy.runner import PlaybookResult, run_playbook
from mailprov.deploy.wheel import build as build_wheel
from mailprov.deploy.wheel import build_wheelhouse, file_digest
from tests.conftest import require_programs
from tests.deploy import lab
from tests.peers.sshd import SSHD

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(600)]
ADDRESS, SSHD_PORT = "127.0.6.30", 2632
INDEX_ADDRESS = "127.0.6.31"
PORTS = {"smtp": 4025, "submission": 4587, "submissions": 4465}


class _Index(http.server.BaseHTTPRequestHandler):
    """A package index that has nothing: records every request and answers 404."""

    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Index:
    url: str
    requests: list[str]


@pytest.fixture(scope="module")
def index() -> Iterator[Index]:
    """The only package index the target is told about, with the paths it was asked for."""
    handler = type("Index", (_Index,), {"requests": []})
    server = http.server.ThreadingHTTPServer((INDEX_ADDRESS, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Index(f"http://{INDEX_ADDRESS}:{server.server_address[1]}/simple/", handler.requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Offline:
    host: lab.LabHost
    runs: dict[str, PlaybookResult] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    @property
    def venv(self) -> Path:
        return self.host.prefix / "opt" / "mailprov" / "venv"


@pytest.fixture(scope="session")
def offline_wheels(lab_root: Path) -> tuple[Path, Path]:
    """The controller's wheel cache and the mailprov wheel in it, its dependency wheelhouse built
    (downloaded) once per session where the role's ``--wheel FILE --offline`` build looks for it."""
    out = lab_root / "offline-wheels"
    wheel = Path(build_wheel(lab.REPO, out)["wheel"])
    digest = file_digest(wheel)
    build_wheelhouse(wheel, out / digest[:16] / "wheelhouse", digest)
    return out, wheel


@pytest.fixture(scope="module")
def offline(lab_root: Path, offline_wheels: tuple[Path, Path], index: Index) -> Iterator[Offline]:
    """mail.offline.test deployed in offline mode, then deployed again (the idempotence run)."""
    require_programs("sshd", "ssh", "openssl")
    root = lab_root / "offline"
    host = lab.LabHost("mail.offline.test", "offline.test", ADDRESS, lab.host_root("offline"), "olga@offline.test", "olga-lab-secret")
    cache, wheel = offline_wheels
    result = Offline(host)
    with SSHD(root / "sshd", ADDRESS, SSHD_PORT) as sshd:
        inventory = lab.write_inventory(
            root / "inventory.yml",
            sshd.ansible_vars(),
            [host],
            f"{lab.DNS_ADDRESS}:{lab.DNS_PORT}",
            str(wheel),
            offline_index_url=index.url,
            mailprov_base_install="offline",
            mailprov_base_pip_no_deps=False,
            mailprov_base_venv_site_dirs=[],
            mailprov_base_wheel_cache=str(cache),
            mailprov_base_services=["smtp"],
            mailprov_mta_listen=[f"{ADDRESS}:{PORTS['smtp']}"],
            mailprov_mta_submission_listen=[f"{ADDRESS}:{PORTS['submission']}"],
            mailprov_mta_submissions_listen=[f"{ADDRESS}:{PORTS['submissions']}"],
        )
        try:
            for run in ("first", "second"):
                result.runs[run] = run_playbook("../tests/deploy/offline.yml", str(inventory), echo=result.log.append)
                if not result.runs[run].ok:
                    break
            yield result
        finally:
            lab.stop_services([host])
            lab.remove_hosts([host])


def test_offline_deploy_succeeds_without_a_package_index(offline: Offline, index: Index) -> None:
    first = offline.runs["first"]
    assert first.ok, "\n".join(offline.log[-80:])
    changed = {task for _, task in first.changed_tasks()}
    assert {"mailprov_base : Install the mailprov wheel", "mailprov_base : Install the dependencies"} <= changed
    assert index.requests == []  # pip never asked the index for anything


def test_every_dependency_was_shipped_as_a_wheel(offline: Offline, offline_wheels: tuple[Path, Path]) -> None:
    assert offline.runs["first"].ok
    cache, wheel = offline_wheels
    house = cache / file_digest(wheel)[:16] / "wheelhouse"
    shipped = {p.name for p in (offline.venv / "wheels").glob("*.whl")}
    assert {p.name for p in house.glob("*.whl")} <= shipped
    assert any(name.startswith("aiosmtpd-") for name in shipped)


def test_the_installed_venv_runs_mailprov_on_its_own(offline: Offline) -> None:
    assert offline.runs["first"].ok
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    version = subprocess.run([str(offline.venv / "bin" / "mailprov"), "--version"], capture_output=True, text=True, env=env, cwd="/")
    assert version.returncode == 0, version.stderr
    assert "0.1.0" in version.stdout
    # The dependencies live in the venv itself: no .pth file, no system site-packages.
    where = subprocess.run(
        [str(offline.venv / "bin" / "python"), "-c", "import aiosmtpd, mailprov; print(aiosmtpd.__file__, mailprov.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
    )
    assert where.returncode == 0, where.stderr
    assert all(path.startswith(str(offline.venv)) for path in where.stdout.split())
    assert not list(offline.venv.glob("lib/python*/site-packages/mailprov-site-dirs.pth"))


def test_the_mta_runs_from_the_offline_venv(offline: Offline) -> None:
    assert offline.runs["first"].ok
    with smtplib.SMTP(ADDRESS, PORTS["smtp"], timeout=10) as smtp:
        code, banner = smtp.ehlo("probe.offline.test")
    assert code == 250 and b"mail.offline.test" in banner
    pid = int((offline.host.prefix / "run" / "mailprov" / "smtp.pid").read_text().split()[0])
    exe = os.readlink(f"/proc/{pid}/exe")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert cmdline.startswith(str(offline.venv)) or exe.startswith(str(offline.venv)), (exe, cmdline)


def test_second_offline_run_changes_nothing(offline: Offline, index: Index) -> None:
    second = offline.runs.get("second")
    assert second is not None and second.ok, "\n".join(offline.log[-80:])
    assert second.changed_tasks() == []
    assert index.requests == []


def test_a_prebuilt_wheel_gets_its_wheelhouse_too(offline_wheels: tuple[Path, Path]) -> None:
    """``--wheel FILE --offline`` (the role's build when mailprov_base_wheel is set) reports the cached wheelhouse."""
    cache, wheel = offline_wheels
    cmd = [sys.executable, "-m", "mailprov.deploy.wheel", "--wheel", str(wheel), "--out", str(cache), "--offline"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=lab.REPO)
    assert out.returncode == 0, out.stderr
    house = Path(json.loads(out.stdout)["wheelhouse"])
    assert (house / ".complete").exists() and any(house.glob("aiosmtpd-*.whl"))


def test_a_target_with_another_python_gets_wheels_built_for_it(offline_wheels: tuple[Path, Path]) -> None:
    """A controller on Debian 13 (Python 3.13) deploying to Debian 12 (3.11), or the other way round: the
    shipped binary wheels are the target's (PEP 425 tags), not the controller's, which pip there refuses."""
    from packaging.tags import compatible_tags, cpython_tags
    from packaging.utils import parse_wheel_filename

    cache, wheel = offline_wheels
    minor = 13 if sys.version_info[:2] != (3, 13) else 11
    spec = f"cpython 3.{minor} x86_64 glibc 2.36"
    cmd = [sys.executable, "-m", "mailprov.deploy.wheel", "--wheel", str(wheel), "--out", str(cache), "--offline", "--target", spec]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=lab.REPO)
    assert out.returncode == 0, out.stderr
    described = json.loads(out.stdout)
    house = Path(described["wheelhouses"][spec])
    assert house != Path(described["wheelhouse"])
    platforms = [f"manylinux_2_{n}_x86_64" for n in range(36, 4, -1)] + ["linux_x86_64"]
    target = set(cpython_tags((3, minor), [f"cp3{minor}"], platforms)) | set(compatible_tags((3, minor), f"cp3{minor}", platforms))
    wheels = {p.name: parse_wheel_filename(p.name)[3] for p in house.glob("*.whl")}
    assert not [name for name, tags in wheels.items() if not tags & target], "wheels the target cannot install"
    assert any(name.startswith("cryptography-") for name in wheels) and any(name.startswith("dkimpy-") for name in wheels)
    own = f"cp3{sys.version_info[1]}"
    assert not [name for name in wheels if f"-{own}-{own}-" in name], "the controller's own binary wheels were shipped"
