"""Build hook: the wheel carries the Ansible content (playbooks/, roles/, templates/, meta/, galaxy.yml).

Those directories stay at the top of the repository (an Ansible collection's layout, built with
``ansible-galaxy collection build``); this copies them into the built package as
``mailprov/ansible_content/`` so that an installed mailprov (pipx, pip) finds its playbooks without a
checkout (``mailprov.deploy.runner.ansible_dir``). Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# inventories and examples/zones serve `mailprov demo up` from an installed wheel.
ANSIBLE_CONTENT = ("playbooks", "roles", "templates", "meta", "galaxy.yml", "inventories", "examples/zones")


class BuildWithAnsibleContent(build_py):
    """build_py, plus a copy of the Ansible content under mailprov/ansible_content."""

    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "mailprov" / "ansible_content"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for name in ANSIBLE_CONTENT:
            source = root / name
            if source.is_dir():
                shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif source.is_file():
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildWithAnsibleContent})
