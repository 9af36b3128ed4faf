"""Build the mailprov wheel on the controller, keyed by a digest of its source, for idempotent installs.

The base role runs this on the controller::

    python -m mailprov.deploy.wheel --source /path/to/checkout --out /tmp/mailprov-wheels [--offline]

and reads one JSON object: ``{"wheel": PATH, "digest": SHA256, "wheelhouse": DIR or ""}``. The digest
covers every file that goes into the wheel (``pyproject.toml``, ``README.md``, the ``mailprov`` package),
so the same source gives the same digest whatever the build's timestamps; the role reinstalls on a
target only when the digest differs from the one recorded in the target's venv. A build for a digest
that is already in ``--out`` is reused. ``--offline`` also collects every dependency as a wheel into a
wheelhouse that the role ships, so targets need no package index. Binary wheels are made for one Python
version and platform: ``--target SPEC`` (repeatable; SPEC as ``TargetPython.probe`` prints it on the host,
e.g. ``cpython 3.11 x86_64 glibc 2.36``) collects one for each target whose Python differs from the
controller's, and the JSON then also maps each SPEC to its wheelhouse (``"wheelhouses"``). ``--wheel FILE`` skips the build and
reports the digest of a wheel built elsewhere (with ``--offline``, its wheelhouse is cached under ``--out``).
``--installed`` (the role's default) takes the controller's own mailprov: built from its checkout when it
runs from one, else its installed files (a pipx or pip install from the wheel) packed back into a wheel
with ``wheel pack``, so a deploy from an install needs no checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mailprov.errors import MailprovError

SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01: the earliest timestamp a zip can hold


# What the wheel is built from (setup.py copies the Ansible content into it).
SOURCE_FILES = ("pyproject.toml", "README.md", "setup.py", "MANIFEST.in", "galaxy.yml")
SOURCE_TREES = ("mailprov", "playbooks", "roles", "templates", "meta", "inventories", "examples/zones")
# Files pip adds to an installed distribution that are not part of the wheel.
INSTALL_RECORDS = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def source_digest(source: Path) -> str:
    """SHA-256 over the relative path and content of every file the wheel is built from."""
    files = [source / name for name in SOURCE_FILES]
    for tree in SOURCE_TREES:
        files += sorted(p for p in (source / tree).rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    digest = hashlib.sha256()
    for path in files:
        if path.exists():
            digest.update(str(path.relative_to(source)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pip(args: list[str]) -> None:
    _run([sys.executable, "-m", "pip", *args], f"pip {args[0]}")


def _run(cmd: list[str], what: str) -> None:
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-10:])
        raise MailprovError(f"{what} failed:\n{tail}", fix="check that the controller can build the project (pip, setuptools, wheel)")


@dataclass(frozen=True)
class TargetPython:
    """The Python a target host runs mailprov with: what its binary wheels must be built for."""

    implementation: str  # sys.implementation.name: "cpython"
    version: tuple[int, int]
    machine: str  # platform.machine(): "x86_64", "aarch64"
    glibc: tuple[int, int] | None  # None on a libc other than glibc

    # Run with the target's Python (the role does, before it builds anything); prints a SPEC for parse().
    probe = (
        "import os, platform, sys; v = sys.version_info; "
        "print(sys.implementation.name, f'{v[0]}.{v[1]}', platform.machine(), os.confstr('CS_GNU_LIBC_VERSION') or 'other')"
    )

    @classmethod
    def parse(cls, spec: str) -> TargetPython:
        """``cpython 3.11 x86_64 glibc 2.36`` (the probe's output) as a TargetPython."""
        m = re.fullmatch(r"(\w+) (\d+)\.(\d+) (\w+) (?:glibc (\d+)\.(\d+)|other)", spec.strip())
        if m is None:
            raise MailprovError(f"cannot read the target's Python from {spec!r}", fix="give it as 'cpython 3.11 x86_64 glibc 2.36'")
        glibc = (int(m[5]), int(m[6])) if m[5] else None
        return cls(m[1], (int(m[2]), int(m[3])), m[4], glibc)

    @classmethod
    def controller(cls) -> TargetPython:
        """The Python running this module."""
        import platform

        libc = os.confstr("CS_GNU_LIBC_VERSION") or "other"
        v = sys.version_info
        return cls.parse(f"{sys.implementation.name} {v[0]}.{v[1]} {platform.machine()} {libc}")

    @property
    def tag(self) -> str:
        """A name for this target's wheelhouse: ``cp311-x86_64-glibc2.36``."""
        libc = f"glibc{self.glibc[0]}.{self.glibc[1]}" if self.glibc else "other"
        return f"{self.abi}-{self.machine}-{libc}"

    @property
    def abi(self) -> str:
        return f"cp{self.version[0]}{self.version[1]}"

    def served_by(self, controller: TargetPython) -> bool:
        """Whether wheels built for ``controller`` install here: same Python and machine, no newer glibc."""
        return (
            (self.implementation, self.version, self.machine) == (controller.implementation, controller.version, controller.machine)
            and controller.glibc is not None
            and self.glibc is not None
            and controller.glibc <= self.glibc
        )

    def pip_args(self) -> list[str]:
        """pip's options selecting the wheels this target can install (PEP 425 tags, PEP 600 manylinux)."""
        if self.implementation != "cpython" or self.glibc is None:
            raise MailprovError(
                f"cannot collect wheels for a {self.implementation} Python on a non-glibc host ({self.machine})",
                fix="use mailprov_base_install: wheel (the target installs from its package index) or a controller with its Python",
            )
        major, minor = self.glibc
        platforms = [f"manylinux_{major}_{n}_{self.machine}" for n in range(minor, 4, -1)]
        platforms += [f"manylinux{alias}_{self.machine}" for alias, floor in (("2014", 17), ("2010", 12), ("1", 5)) if minor >= floor]
        platforms.append(f"linux_{self.machine}")
        args = ["--python-version", f"{self.version[0]}.{self.version[1]}", "--implementation", "cp", "--abi", self.abi]
        for platform in platforms:
            args += ["--platform", platform]
        return args


def build(source: Path, out: Path, *, offline: bool = False, targets: Mapping[str, TargetPython] | None = None) -> dict[str, object]:
    """Build (or reuse) the wheel for ``source`` under ``out``; with ``offline`` also its dependencies."""
    if not (source / "pyproject.toml").exists():
        raise MailprovError(f"{source} has no pyproject.toml", fix="point mailprov_base_source_dir at a mailprov checkout")
    digest = source_digest(source)
    target = out / digest[:16]
    wheels = sorted(target.glob("mailprov-*.whl"))
    if not wheels:
        target.mkdir(parents=True, exist_ok=True)
        _pip(["wheel", "--quiet", "--no-deps", "--wheel-dir", str(target), str(source)])
        wheels = sorted(target.glob("mailprov-*.whl"))
        if not wheels:
            raise MailprovError(f"pip built no mailprov wheel in {target}")
    return _described(wheels[0], digest, target, offline, targets)


def _described(wheel: Path, digest: str, cache: Path, offline: bool, targets: Mapping[str, TargetPython] | None) -> dict[str, object]:
    """The JSON the role reads: the wheel, its digest, and with ``offline`` the wheelhouse(s)."""
    result: dict[str, object] = {"wheel": str(wheel), "digest": digest, "wheelhouse": ""}
    if offline:
        house = build_wheelhouse(wheel, cache / "wheelhouse", digest)
        result["wheelhouse"] = str(house)
        if targets:
            result["wheelhouses"] = {spec: str(house_for(wheel, house, cache, target)) for spec, target in targets.items()}
    return result


def running_checkout() -> Path | None:
    """The checkout the running mailprov is imported from, or None when it is an installed package."""
    import mailprov

    root = Path(mailprov.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "setup.py").is_file() else None


def installed(out: Path, *, offline: bool = False, targets: Mapping[str, TargetPython] | None = None) -> dict[str, object]:
    """The running mailprov as a wheel: built from its checkout, or its installed files packed back into one."""
    checkout = running_checkout()
    if checkout is not None:
        return build(checkout, out, offline=offline, targets=targets)
    from importlib import metadata

    try:
        dist = metadata.distribution("mailprov")
    except metadata.PackageNotFoundError:
        raise MailprovError("mailprov is neither a checkout nor an installed distribution here", fix="set mailprov_base_wheel") from None
    files = sorted(f for f in dist.files or [] if f.parts[0] != ".." and "__pycache__" not in f.parts and f.name not in INSTALL_RECORDS)
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f).encode() + b"\0" + Path(dist.locate_file(f)).read_bytes() + b"\0")
    target = out / f"installed-{digest.hexdigest()[:16]}"
    wheels = sorted(target.glob("mailprov-*.whl"))
    if not wheels:
        import shutil
        import tempfile

        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="mailprov-repack-") as stage:
            for f in files:
                dest = Path(stage) / f
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(dist.locate_file(f), dest)
                dest.chmod(0o644)
            _run([sys.executable, "-m", "wheel", "pack", "--dest-dir", str(target), stage], "wheel pack")
        wheels = sorted(target.glob("mailprov-*.whl"))
    wheel = wheels[0]
    return _described(wheel, file_digest(wheel), target, offline, targets)


def build_wheelhouse(wheel: Path, house: Path, digest: str) -> Path:
    """Collect ``wheel`` and every dependency as wheels in ``house`` (reused once complete).

    The dependency wheels are built for the controller's Python; ``house_for`` gives a target whose Python
    differs its own wheelhouse.
    """
    if not (house / ".complete").exists():
        house.mkdir(parents=True, exist_ok=True)
        _pip(["wheel", "--quiet", "--wheel-dir", str(house), str(wheel)])
        (house / ".complete").write_text(digest + "\n")
    return house


def house_for(wheel: Path, house: Path, cache: Path, target: TargetPython) -> Path:
    """The wheelhouse for ``target``: the controller's own when its wheels install there, else one of its own.

    A target's own is resolved for its Python (environment markers, Requires-Python) from binary wheels
    for its tags, with the controller's wheelhouse as a source too: a dependency published only as a
    source archive (dkimpy) was built there into a pure-Python wheel, which installs anywhere.
    """
    if target.served_by(TargetPython.controller()):
        return house
    own = cache / f"wheelhouse-{target.tag}"
    if not (own / ".complete").exists():
        own.mkdir(parents=True, exist_ok=True)
        _pip(["download", "--quiet", "--dest", str(own), "--only-binary=:all:", "--find-links", str(house), *target.pip_args(), str(wheel)])
        (own / ".complete").write_text(target.tag + "\n")
    return own


def main(argv: list[str] | None = None) -> int:
    """Print the JSON description of the wheel to install; exit 1 with a message on failure."""
    parser = argparse.ArgumentParser(prog="python -m mailprov.deploy.wheel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, help="mailprov checkout to build from")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mailprov-wheels"), help="build cache directory")
    parser.add_argument("--wheel", type=Path, help="use this prebuilt wheel instead of building")
    parser.add_argument("--installed", action="store_true", help="the running mailprov: its checkout, or its installed files")
    parser.add_argument("--offline", action="store_true", help="also build a wheelhouse of every dependency")
    parser.add_argument("--target", action="append", default=[], help="a target's Python as TargetPython.probe prints it (repeatable)")
    parser.add_argument("--probe", action="store_true", help="print the Python code that tells a target's Python, and exit")
    args = parser.parse_args(argv)
    if args.probe:
        print(TargetPython.probe)
        return 0
    try:
        targets = {spec.strip(): TargetPython.parse(spec) for spec in args.target}
        if args.wheel:
            if not args.wheel.is_file():
                raise MailprovError(f"no such wheel: {args.wheel}", fix="set mailprov_base_wheel to an existing .whl file")
            digest = file_digest(args.wheel)
            result = _described(args.wheel.resolve(), digest, args.out / digest[:16], args.offline, targets)
        elif args.source:
            result = build(args.source.resolve(), args.out, offline=args.offline, targets=targets)
        elif args.installed:
            result = installed(args.out, offline=args.offline, targets=targets)
        else:
            raise MailprovError("give --source, --wheel or --installed")
    except MailprovError as exc:
        print(f"mailprov wheel: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
