#!/usr/bin/env python3
"""Coverage-guided fuzzing of the parsers that see hostile bytes, for a bounded time.

    .venv/bin/python bench/fuzz.py [TARGET ...] [--seconds 60] [--engine atheris|random]

Targets (tests/hostile/fuzz_targets.py): ``address`` (envelope addresses), ``message`` (header scan, DSN,
DKIM signing, POP3 RETR/TOP rendering of incoming messages), ``zone`` (zone files of ``mailprov check
--zone``), ``records`` (SPF, DMARC, DKIM, MTA-STS, TLS-RPT records and MTA-STS policies), ``reply``
(DNS replies as the checker's sockets receive them). Default: all, each for ``--seconds``.

Engine: atheris (libFuzzer, coverage-guided; ``pip install atheris``, in the ``test`` extra) when it is
installed, else a random-mutation loop over the seed corpus (say ``--engine random`` to force it). Each
target runs in its own child process (atheris owns the process it runs in). Any input that makes a target
raise is written to ``tests/hostile/fuzz_crashes/TARGET/crash-SHA1`` and replayed by
``tests/hostile/test_fuzz_regressions.py`` from then on: fix the bug, keep the file.

Prints, per target: executions, executions per second, and crashes found.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEEDS: dict[str, list[bytes]] = {
    "address": [b"\x00john@beta.test", b'\x01"j.o"@[IPv6:2001:db8::1]', b"\x00a%b@c", b"\x01j\xc3\xb6rg@b\xc3\xa4r.test", b"\x00@a,@b:c@d"],
    "message": [
        b"From: a@fuzz.test\r\nSubject: hi\r\n\r\nbody\r\n.\r\n..dots\r\n",
        b"Received: x\r\nReceived: y\r\n\tcontinued\r\n\r\n",
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n",
        b"no header at all\nbare lf\r\r\n",
    ],
    "zone": [
        b"@ SOA ns hostmaster 1 3600 600 86400 60\n@ NS ns\nns A 127.0.0.1\n@ MX 10 mx\nmx A 192.0.2.1\n",
        b'@ TXT "v=spf1 mx -all"\n_dmarc TXT "v=DMARC1; p=reject"\n',
    ],
    "records": [
        b"v=spf1 ip4:192.0.2.0/24 include:_spf.example.org ~all",
        b"v=DMARC1; p=quarantine; rua=mailto:d@example.org; pct=50",
        b"v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC",
        b"v=STSv1; id=20240101",
        b"version: STSv1\nmode: enforce\nmx: *.example.org\nmax_age: 86400\n",
    ],
    "reply": [],  # filled below: dnspython renders them
}



def _reply_seeds() -> list[bytes]:
    """Replies to "mx.fuzz.test. A" as a server sends them (compressed): an address, a CNAME chain, NXDOMAIN with its SOA,
    and one record of every type the resolver decodes itself (mailprov.dns.records), names and strings with escapes."""
    import dns.message
    import dns.rcode
    import dns.rrset

    out = []
    for rcode, answer, authority in (
        (dns.rcode.NOERROR, [("mx.fuzz.test.", "A", "192.0.2.1")], []),
        (dns.rcode.NOERROR, [("mx.fuzz.test.", "CNAME", "mail.fuzz.test."), ("mail.fuzz.test.", "A", "192.0.2.2")], []),
        (dns.rcode.NXDOMAIN, [], [("fuzz.test.", "SOA", "ns.fuzz.test. hm.fuzz.test. 1 3600 600 86400 60")]),
        (
            dns.rcode.NOERROR,
            [
                ("mx.fuzz.test.", "CNAME", "m\\.ail\\032x.fuzz.test."),
                ("mx.fuzz.test.", "MX", "10 mx1.fuzz.test."),
                ("mx.fuzz.test.", "TXT", '"v=spf1 -all" "q\\"\\001"'),
                ("mx.fuzz.test.", "SOA", "ns.fuzz.test. h\\@m.fuzz.test. 1 2 3 4 5"),
                ("mx.fuzz.test.", "CAA", '0 issue "ca.test"'),
                ("mx.fuzz.test.", "TLSA", "3 1 1 " + "0f" * 32),
                ("mx.fuzz.test.", "AAAA", "2001:db8::1"),
                ("mx.fuzz.test.", "PTR", "mx.fuzz.test."),
                ("mx.fuzz.test.", "NS", "ns.fuzz.test."),
            ],
            [],
        ),
    ):
        response = dns.message.make_response(dns.message.make_query("mx.fuzz.test.", "A", use_edns=0))
        response.set_rcode(rcode)
        response.answer += [dns.rrset.from_text(n, 300, "IN", t, v) for n, t, v in answer]
        response.authority += [dns.rrset.from_text(n, 300, "IN", t, v) for n, t, v in authority]
        out.append(response.to_wire())
    return out


SEEDS["reply"] = _reply_seeds()


def crash_dir(target: str) -> Path:
    return ROOT / "tests" / "hostile" / "fuzz_crashes" / target


def save_crash(target: str, data: bytes) -> Path:
    folder = crash_dir(target)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"crash-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    return path


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """A few random byte edits, splices and interesting values (the fallback engine)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = bytes([rng.choice(b'\x00\r\n\xff\x80 .@%!:;="\\[]<>()')])
        elif op == 2 and buf:
            del buf[pos : pos + rng.randint(1, 8)]
        elif op == 3:
            other = rng.choice(pool)
            start = rng.randint(0, len(other))
            buf[pos:pos] = other[start : start + rng.randint(1, 32)]
        elif op == 4:
            buf[pos:pos] = rng.choice([b"\r\n", b"\n.", b"\r\r\n", b"\xc3", b"A" * 300, b"v=spf1 ", b"; ", b"$ORIGIN x.\n"])
        else:
            buf[pos:pos] = buf[max(0, pos - 16) : pos]
    return bytes(buf[:4096])


def run_random(target: str, seconds: float) -> tuple[int, int]:
    from tests.hostile.fuzz_targets import TARGETS

    fn = TARGETS[target]
    rng = random.Random()
    pool = (
        list(SEEDS[target]) + [p.read_bytes() for p in crash_dir(target).glob("*")] if crash_dir(target).is_dir() else list(SEEDS[target])
    )
    execs = crashes = 0
    seen: set[str] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data = mutate(rng, rng.choice(pool), pool)
        execs += 1
        try:
            fn(data)
        except Exception as exc:
            key = f"{type(exc).__name__}:{traceback.extract_tb(exc.__traceback__)[-1].lineno}"
            if key not in seen:
                seen.add(key)
                crashes += 1
                path = save_crash(target, data)
                print(f"  {target}: {type(exc).__name__}: {str(exc)[:120]} -> {path.relative_to(ROOT)}", flush=True)
        else:
            if len(pool) < 2000 and rng.random() < 0.01:
                pool.append(data)
    return execs, crashes


def run_atheris(target: str, seconds: float) -> tuple[int, int]:
    """Run atheris in this process (it never returns: libFuzzer exits); crashes land in the crash dir."""
    import atheris

    with atheris.instrument_imports():
        from tests.hostile import fuzz_targets
    fn = fuzz_targets.TARGETS[target]
    corpus = Path(os.environ.get("TMPDIR", "/tmp")) / f"mailprov-fuzz-corpus-{target}"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(SEEDS[target]):
        (corpus / f"seed-{i}").write_bytes(seed)
    prefix = str(crash_dir(target)) + "/"
    crash_dir(target).mkdir(parents=True, exist_ok=True)
    args = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={int(seconds)}",
        f"-artifact_prefix={prefix}",
        "-max_len=4096",
        "-print_final_stats=1",
    ]
    atheris.Setup(args, fn)
    atheris.Fuzz()
    return 0, 0


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    from tests.hostile.fuzz_targets import TARGETS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", default=list(TARGETS), help="targets to fuzz (default: all)")
    parser.add_argument("--seconds", type=float, default=30.0, help="time per target (default 30)")
    parser.add_argument("--engine", choices=["atheris", "random"], default="atheris" if have_atheris() else "random")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one target, in this process
        (target,) = args.targets
        if args.engine == "atheris":
            run_atheris(target, args.seconds)
            return 0
        execs, crashes = run_random(target, args.seconds)
        print(
            f"{target}: {execs} executions in {args.seconds:.0f} s ({execs / args.seconds:.0f}/s), {crashes} distinct crashes", flush=True
        )
        return 1 if crashes else 0

    print(f"fuzzing {', '.join(args.targets)} for {args.seconds:.0f} s each with {args.engine}", flush=True)
    failed = 0
    scratch = tempfile.mkdtemp(prefix="mailprov-fuzz-run-")  # the children's temporary files (libFuzzer skips atexit)
    env = {**os.environ, "TMPDIR": scratch}
    try:
        failed = run_children(args, env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("no crashes" if not failed else "crashes saved: fix them; tests/hostile/test_fuzz_regressions.py replays each one")
    return 1 if failed else 0


def run_children(args: argparse.Namespace, env: dict[str, str]) -> int:
    """Each target in its own child process; returns how many found a crash."""
    failed = 0
    for target in args.targets:
        before = set(crash_dir(target).glob("*")) if crash_dir(target).is_dir() else set()
        cmd = [sys.executable, __file__, target, "--child", "--seconds", str(args.seconds), "--engine", args.engine]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=args.seconds + 120, capture_output=args.engine == "atheris", text=True)
        if args.engine == "atheris":
            stats = [ln for ln in (proc.stderr or "").splitlines() if ln.startswith(("stat::number_of_executed_units", "stat::peak_rss"))]
            execs = int(stats[0].split(":")[-1]) if stats else 0
            print(
                f"{target}: {execs} executions in {args.seconds:.0f} s ({execs / args.seconds:.0f}/s), exit {proc.returncode}", flush=True
            )
        new = (set(crash_dir(target).glob("*")) if crash_dir(target).is_dir() else set()) - before
        for path in sorted(new):
            print(f"  new crash input: {path.relative_to(ROOT)}")
        failed += bool(new) or proc.returncode not in (0,)
    return failed


if __name__ == "__main__":
    sys.exit(main())
