"""TargetPython: which wheels an offline deploy ships to a host, from what the host's Python says (pure logic)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mailprov.deploy.wheel import TargetPython
from mailprov.errors import MailprovError

BOOKWORM = TargetPython.parse("cpython 3.11 x86_64 glibc 2.36")
TRIXIE = TargetPython.parse("cpython 3.13 x86_64 glibc 2.41")


def test_the_probe_runs_on_this_python_and_reads_back_as_the_controller() -> None:
    out = subprocess.run([sys.executable, "-c", TargetPython.probe], capture_output=True, text=True, check=True).stdout
    assert TargetPython.parse(out) == TargetPython.controller()


def test_parse_and_tag() -> None:
    assert TargetPython("cpython", (3, 11), "x86_64", (2, 36)) == BOOKWORM
    assert BOOKWORM.tag == "cp311-x86_64-glibc2.36"
    assert TargetPython.parse("cpython 3.12 aarch64 other").glibc is None
    with pytest.raises(MailprovError, match="cannot read"):
        TargetPython.parse("Python 3.11.2")


def test_wheels_built_for_the_controller_serve_only_the_same_python_with_no_older_glibc() -> None:
    assert BOOKWORM.served_by(BOOKWORM)
    assert TRIXIE.served_by(TargetPython.parse("cpython 3.13 x86_64 glibc 2.36"))  # manylinux: older glibc runs on newer
    assert not BOOKWORM.served_by(TRIXIE)  # another Python version
    assert not TargetPython.parse("cpython 3.13 x86_64 glibc 2.36").served_by(TRIXIE)  # the controller's glibc is newer
    assert not TargetPython.parse("cpython 3.11 aarch64 glibc 2.36").served_by(BOOKWORM)


def test_pip_selects_the_targets_tags() -> None:
    args = BOOKWORM.pip_args()
    assert args[:6] == ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
    platforms = args[7::2]
    # PEP 600: every manylinux_2_N up to the host's glibc, the legacy aliases, and plain linux.
    assert platforms[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in platforms and "manylinux_2_37_x86_64" not in platforms
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"} <= set(platforms)


def test_a_host_without_glibc_is_refused_naming_the_other_install_mode() -> None:
    with pytest.raises(MailprovError) as err:
        TargetPython.parse("cpython 3.12 x86_64 other").pip_args()
    assert "mailprov_base_install: wheel" in (err.value.fix or "")
