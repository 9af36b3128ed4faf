"""Fuzz targets: each takes raw bytes and raises only on a real bug (an unexpected exception or a broken
invariant). Shared by the coverage-guided harness (bench/fuzz.py, atheris) and the regression tests
(tests/hostile/test_fuzz_regressions.py), which replay every crash the harness ever saved.

Targets:

* ``address``: the envelope address parser. Only AddressError may come out; an accepted address has no
  routing characters or controls and parses back to itself from its string form.
* ``message``: what happens to an incoming message's bytes: the handler's header scan, the DSN builder,
  the DKIM signer's From-domain and signing, and POP3 rendering (RETR and TOP must give back exactly the
  CRLF-normalized message, and LIST's size must match what RETR sends).
* ``zone``: the zone-file parser of ``mailprov check --zone`` (UsageError only).
* ``records``: SPF, DMARC, DKIM, MTA-STS, TLS-RPT record and MTA-STS policy parsers (never raise, except
  PolicyError for a policy file).
* ``reply``: the DNS checker's reply parser (``mailprov.dns.resolver.parse_reply``), which reads whatever
  arrives on its UDP sockets: it never raises, and where dnspython's own parser accepts the packet, both
  read the same answer section, to the letter of its zone-file text (the records mailprov decodes itself,
  ``mailprov.dns.records``, included).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mailprov.delivery.dkim import header_from_domain
from mailprov.delivery.mta_sts import PolicyError, parse_policy, parse_txt
from mailprov.dns.dkim import parse_dkim
from mailprov.dns.dmarc import parse_dmarc
from mailprov.dns.mta_sts import parse_mta_sts, parse_tls_rpt
from mailprov.dns.spf import parse_spf
from mailprov.dns.tags import parse_tags
from mailprov.errors import UsageError
from mailprov.maildir import crlf_size
from mailprov.pop3.mailbox import render_bytes, top_bytes
from mailprov.queue.dsn import build_dsn
from mailprov.queue.store import QueueItem, Recipient
from mailprov.smtp.address import AddressError, parse_address
from mailprov.smtp.handler import header_end, header_names

CORPUS = Path(__file__).parent / "fuzz_crashes"
_TMP = Path(tempfile.mkdtemp(prefix="mailprov-fuzz-"))  # the DKIM key and the zone file under test
atexit.register(shutil.rmtree, _TMP, True)
logging.getLogger("mailprov.delivery").setLevel(logging.ERROR)  # "DKIM signing failed, sending unsigned" is expected here


def _text(data: bytes) -> str:
    """Bytes as aiosmtpd hands an argument to us: UTF-8 with undecodable bytes as surrogates."""
    return data.decode("utf-8", "surrogateescape")


def address(data: bytes) -> None:
    smtputf8 = bool(data[:1]) and data[0] & 1 == 1
    text = _text(data[1:])
    try:
        addr = parse_address(text, smtputf8=smtputf8)
    except AddressError as exc:
        assert 500 <= exc.code < 600 and exc.enhanced.startswith("5."), exc
        return
    assert "%" not in addr.local and "!" not in addr.local, addr
    assert all(ord(c) > 32 and ord(c) != 127 for c in str(addr)), addr
    assert addr.domain == addr.domain.lower()
    assert parse_address(str(addr), smtputf8=smtputf8) == addr, f"{text!r} -> {addr} does not parse back"


def _unstuff(rendered: bytes) -> bytes:
    """What a POP3 client makes of a multi-line response body (RFC 1939 3)."""
    assert rendered.endswith(b".\r\n"), rendered[-20:]
    body = rendered[:-3]
    if not body:
        return b""
    assert body.endswith(b"\r\n")
    lines = body[:-2].split(b"\r\n")
    for line in lines:
        assert line != b".", "an unstuffed lone dot would end the response early"
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines) + b"\r\n"


@functools.cache
def _signer():  # type: ignore[no-untyped-def]
    """A DKIM signer for fuzz.test with a throwaway 1024-bit key (generated once)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from mailprov.config import from_dict
    from mailprov.delivery.dkim import DKIMSigner

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path = _TMP / "k.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    config = from_dict(
        {"server": {"hostname": "mx.fuzz.test", "domains": ["fuzz.test"]}, "outbound": {"dkim_selector": "s", "dkim_key": str(path)}}
    )
    return DKIMSigner(config)


def message(data: bytes) -> None:
    end = header_end(data)
    assert 0 <= end <= len(data)
    header_names(data)
    header_from_domain(data)
    signed = _signer().sign(b"From: a@fuzz.test\r\n" + data, "a@fuzz.test")
    assert signed.endswith(data)
    item = QueueItem(
        id="ABCDEF0123456789", sender="a@fuzz.test", recipients=[Recipient("b@x.test", "b@x.test", False)], arrival=time.time()
    )
    dsn = build_dsn(item, item.recipients, data, hostname="mx.fuzz.test")
    assert b"\r\n\r\n" in dsn
    # POP3: RETR returns the message CRLF-normalized, LIST's size is exactly that many octets.
    expected = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if expected and not expected.endswith(b"\n"):
        expected += b"\r\n"
    assert _unstuff(render_bytes(data)) == expected
    assert crlf_size(data) == len(expected), (crlf_size(data), len(expected))
    top = _unstuff(top_bytes(data, data[:1][0] % 5 if data else 0))
    assert expected.startswith(top), "TOP is not a prefix of RETR"


_ZONE = _TMP / "fuzz.test.zone"


def zone(data: bytes) -> None:
    _ZONE.write_bytes(b"$TTL 60\n" + data.replace(b"$INCLUDE", b"$XINCLUDE"))  # no reading other files
    try:
        from mailprov.dns.zonefile import load_zone

        load_zone(_ZONE)
    except UsageError:
        return


def records(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    parse_tags(text)
    parse_spf(text)
    parse_dmarc(text)
    parse_dkim(text)
    parse_mta_sts(text)
    parse_tls_rpt(text)
    parse_txt(text.split("\x00"))
    with contextlib.suppress(PolicyError):
        parse_policy(text)


REPLY_QUESTION = b"\x02mx\x04fuzz\x04test\x00\x00\x01\x00\x01"  # mx.fuzz.test. A IN, as the seeds ask


def reply(data: bytes) -> None:
    import dns.message

    from mailprov.dns.resolver import parse_reply, rrset_lines

    ours = parse_reply(data, REPLY_QUESTION, full_authority=bool(data[-1:]) and data[-1] & 1 == 1)
    if ours is None:
        return
    try:
        theirs = dns.message.from_wire(data)
    except Exception:  # dnspython is stricter on the sections we skip: not a bug of ours
        return
    # The same records, to the letter of their zone-file form (names, escapes, TTLs, grouping).
    same = sorted(line for rrset in ours.answer for line in rrset_lines(rrset))
    assert same == sorted(line for rrset in theirs.answer for line in rrset_lines(rrset)), (ours.answer, theirs.answer)


TARGETS: dict[str, Callable[[bytes], None]] = {"address": address, "message": message, "zone": zone, "records": records, "reply": reply}
