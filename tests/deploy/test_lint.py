"""ansible-lint (production profile, .ansible-lint at the repository root) passes on roles/ and playbooks/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailprov.deploy.runner import collections_dir
from tests.deploy.lab import REPO

pytestmark = pytest.mark.timeout(900)


def test_ansible_lint_passes(tmp_path: Path) -> None:
    lint = Path(sys.executable).with_name("ansible-lint")
    env = dict(os.environ, NO_COLOR="1", ANSIBLE_NOCOLOR="1", PATH=f"{lint.parent}:{os.environ.get('PATH', '')}")
    # The playbooks name the roles as mailprov.mail.*: lint them as the collection they are (as mailprov deploy runs them).
    env["ANSIBLE_COLLECTIONS_PATH"] = str(collections_dir(REPO, tmp_path))
    proc = subprocess.run([str(lint), "--offline", "roles/", "playbooks/"], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
