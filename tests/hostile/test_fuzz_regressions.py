"""Replays every input the fuzz harness (bench/fuzz.py) ever saved, and runs each target briefly under
hypothesis (the fallback when atheris is not installed), so a fixed bug stays fixed.

Saved inputs live in tests/hostile/fuzz_crashes/TARGET/; each names the bug it found:

* address/ipv6-literal-roundtrip: ``x@[IPv6:2001:db8::1]`` printed without its ``IPv6:`` tag, which the
  router then refused (mail to IPv6 literals bounced).
* address/smtputf8-invalid-utf8: with SMTPUTF8, invalid UTF-8 bytes in an address raised
  UnicodeEncodeError (the client got 451 instead of 553).
* zone/soa-off-origin-valueerror: dnspython's ValueError escaped ``load_zone`` as a traceback.
* message/top-cr-cr-lf: TOP normalized line ends twice, so ``CR CR LF`` became an empty line and TOP was
  not a prefix of RETR.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.fuzz_targets import CORPUS, TARGETS

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from fuzz import SEEDS  # noqa: E402

SAVED = sorted((p.parent.name, p) for p in CORPUS.glob("*/*") if p.is_file())


@pytest.mark.parametrize(("target", "path"), SAVED, ids=[f"{t}/{p.name}" for t, p in SAVED])
def test_saved_crash_inputs_pass(target: str, path: Path) -> None:
    TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target", sorted(SEEDS))
def test_seed_corpus_passes(target: str) -> None:
    for seed in SEEDS[target]:
        TARGETS[target](seed)


def _fuzzed(target: str):  # type: ignore[no-untyped-def]
    alphabet = st.sampled_from(
        [b"\x00", b"\r", b"\n", b"\r\n", b".", b"@", b"%", b"!", b'"', b"[", b"]", b":", b";", b"=", b"\xff", b"\xc3"]
    )
    seeds = st.sampled_from(SEEDS[target])
    chunks = st.lists(st.one_of(alphabet, st.binary(max_size=12), seeds), max_size=20).map(b"".join)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=chunks)
    def run(data: bytes) -> None:
        TARGETS[target](data)

    return run


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_targets_under_hypothesis(target: str) -> None:
    _fuzzed(target)()
