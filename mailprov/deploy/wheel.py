"""Build the mailprov wheel on the controller, keyed by a digest of its source, for idempotent installs.

The base role runs this on the controller::

    python -m mailprov.deploy.wheel --source /path/to/checkout --out /tmp/mailprov-wheels [--offline]

and reads one JSON object: ``{"wheel": PATH, "digest": SHA256, "wheelhouse": DIR or ""}``. The digest
covers every file that goes into the wheel (``pyproject.toml``, ``README.md``, the ``mailprov`` package),
so the same source gives the same digest whatever the build's timestamps; the role reinstalls on a
target only when the digest differs from the one recorded in the target's venv. A build for a digest
that is already in ``--out`` is reused. ``--offline`` also collects every dependency as a wheel into a
wheelhouse that the role ships, so targets need no package index. ``--wheel FILE`` skips the build and
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
import subprocess
import sys
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


def build(source: Path, out: Path, *, offline: bool = False) -> dict[str, str]:
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
    wheelhouse = str(build_wheelhouse(wheels[0], target / "wheelhouse", digest)) if offline else ""
    return {"wheel": str(wheels[0]), "digest": digest, "wheelhouse": wheelhouse}


def running_checkout() -> Path | None:
    """The checkout the running mailprov is imported from, or None when it is an installed package."""
    import mailprov

    root = Path(mailprov.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "setup.py").is_file() else None


def installed(out: Path, *, offline: bool = False) -> dict[str, str]:
    """The running mailprov as a wheel: built from its checkout, or its installed files packed back into one."""
    checkout = running_checkout()
    if checkout is not None:
        return build(checkout, out, offline=offline)
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
    digest_of_wheel = file_digest(wheel)
    house = str(build_wheelhouse(wheel, target / "wheelhouse", digest_of_wheel)) if offline else ""
    return {"wheel": str(wheel), "digest": digest_of_wheel, "wheelhouse": house}


def build_wheelhouse(wheel: Path, house: Path, digest: str) -> Path:
    """Collect ``wheel`` and every dependency as wheels in ``house`` (reused once complete).

    The dependency wheels are built for the controller's Python: it must have the target's Python version
    and platform (both run CPython 3.11 on Linux in the labs).
    """
    if not (house / ".complete").exists():
        house.mkdir(parents=True, exist_ok=True)
        _pip(["wheel", "--quiet", "--wheel-dir", str(house), str(wheel)])
        (house / ".complete").write_text(digest + "\n")
    return house


def main(argv: list[str] | None = None) -> int:
    """Print the JSON description of the wheel to install; exit 1 with a message on failure."""
    parser = argparse.ArgumentParser(prog="python -m mailprov.deploy.wheel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, help="mailprov checkout to build from")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mailprov-wheels"), help="build cache directory")
    parser.add_argument("--wheel", type=Path, help="use this prebuilt wheel instead of building")
    parser.add_argument("--installed", action="store_true", help="the running mailprov: its checkout, or its installed files")
    parser.add_argument("--offline", action="store_true", help="also build a wheelhouse of every dependency")
    args = parser.parse_args(argv)
    try:
        if args.wheel:
            if not args.wheel.is_file():
                raise MailprovError(f"no such wheel: {args.wheel}", fix="set mailprov_base_wheel to an existing .whl file")
            digest = file_digest(args.wheel)
            house = build_wheelhouse(args.wheel.resolve(), args.out / digest[:16] / "wheelhouse", digest) if args.offline else ""
            result = {"wheel": str(args.wheel.resolve()), "digest": digest, "wheelhouse": str(house)}
        elif args.source:
            result = build(args.source.resolve(), args.out, offline=args.offline)
        elif args.installed:
            result = installed(args.out, offline=args.offline)
        else:
            raise MailprovError("give --source, --wheel or --installed")
    except MailprovError as exc:
        print(f"mailprov wheel: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
