"""DKIM signing: which domain, which key, verification by dkimpy, and the OpenSSL fast path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailprov.delivery import dkim as mdkim
from mailprov.errors import ConfigError

MESSAGE = (
    b"Received: from alpha.test by mail.alpha.test\r\n"
    b"From: Alex <alex@alpha.test>\r\n"
    b"To: john@beta.test\r\n"
    b"Subject: hello\r\n"
    b"Date: Fri, 27 Nov 2026 07:00:00 +0000\r\n"
    b"Message-ID: <1@alpha.test>\r\n"
    b"\r\n"
    b"Hi John,\r\nsee you.\r\n"
)


def write_key(path: Path, fmt=serialization.PrivateFormat.TraditionalOpenSSL) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    return key


def dns_record(key: rsa.RSAPrivateKey) -> bytes:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64

    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def signer(make_config, tmp_path: Path, domains=("alpha.test",)) -> tuple[mdkim.DKIMSigner, dict[bytes, bytes]]:
    records = {}
    for domain in domains:
        key = write_key(tmp_path / f"mp1._domainkey.{domain}.key")
        records[f"mp1._domainkey.{domain}.".encode()] = dns_record(key)
    config = make_config(
        hostname="mail.alpha.test",
        domains=domains,
        outbound={"dkim_selector": "mp1", "dkim_key": str(tmp_path / f"mp1._domainkey.{domains[0]}.key")},
    )
    return mdkim.DKIMSigner(config), records


def test_signed_message_verifies(make_config, tmp_path):
    s, records = signer(make_config, tmp_path)
    signed = s.sign(MESSAGE, "alex@alpha.test")
    assert signed.startswith(b"DKIM-Signature:") and signed.endswith(MESSAGE)
    assert b"d=alpha.test" in signed and b"s=mp1" in signed
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: records.get(name))
    # Tampering breaks it: the test can fail.
    assert not dkim.verify(signed.replace(b"see you", b"see yuo"), dnsfunc=lambda name, timeout=5: records.get(name))


def test_each_local_domain_uses_its_own_key_file(make_config, tmp_path):
    s, records = signer(make_config, tmp_path, domains=("alpha.test", "gamma.test"))
    message = MESSAGE.replace(b"alex@alpha.test", b"ann@gamma.test")
    signed = s.sign(message, "ann@gamma.test")
    assert b"d=gamma.test" in signed
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: records.get(name))


def test_foreign_from_is_not_signed_unless_sender_is_local(make_config, tmp_path):
    s, _ = signer(make_config, tmp_path)
    foreign = MESSAGE.replace(b"From: Alex <alex@alpha.test>", b"From: someone@elsewhere.test")
    assert s.sign(foreign, "someone@elsewhere.test") == foreign
    assert s.sign(foreign, "") == foreign  # a bounce from <> with a foreign From
    assert b"d=alpha.test" in s.sign(foreign, "alex@alpha.test")


def test_disabled_without_selector(make_config):
    s = mdkim.DKIMSigner(make_config())
    assert not s.enabled and s.sign(MESSAGE, "alex@example.test") == MESSAGE


def test_missing_or_bad_key_is_a_config_error(make_config, tmp_path):
    with pytest.raises(ConfigError, match=r"outbound\.dkim_key"):
        mdkim.DKIMSigner(make_config(outbound={"dkim_selector": "mp1", "dkim_key": str(tmp_path / "missing.key")}))
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        mdkim.DKIMSigner(make_config(outbound={"dkim_selector": "mp1", "dkim_key": str(tmp_path / "junk.key")}))


def test_openssl_signature_is_byte_identical_to_dkimpy(tmp_path):
    key = write_key(tmp_path / "k.key", serialization.PrivateFormat.PKCS8)
    pem = mdkim._load_key(tmp_path / "k.key")
    pk = dkim.crypto.parse_pem_private_key(pem)
    for algorithm in (hashlib.sha256, hashlib.sha1):
        h = dkim.HashThrough(algorithm(b"some canonicalized headers"))
        assert mdkim._openssl_sign(h, pk) == mdkim._original_sign(h, pk)
    assert key.key_size == 2048


def test_from_domain_parsing():
    assert mdkim.header_from_domain(b'From: "A, B" <a@Alpha.Test>\r\n\r\nbody') == "alpha.test"
    assert mdkim.header_from_domain(b"Subject: x\r\nfrom:\r\n a@beta.test\r\n\r\n") == "beta.test"
    assert mdkim.header_from_domain(b"Subject: x\r\n\r\nFrom: a@gamma.test\r\n") == ""
