"""Envelope address parsing: the classic relay tricks never parse into something relayable."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailprov.smtp.address import AddressError, parse_address, parse_recipient, parse_sender


@pytest.mark.parametrize(
    ("text", "local", "domain", "literal"),
    [
        ("john@beta.test", "john", "beta.test", False),
        ("John.Doe@Beta.TEST", "John.Doe", "beta.test", False),
        ('"john"@beta.test', "john", "beta.test", False),
        ("john+tag@beta.test", "john+tag", "beta.test", False),
        ("x@[192.0.2.1]", "x", "192.0.2.1", True),
        ("x@[IPv6:2001:db8::1]", "x", "2001:db8::1", True),
    ],
)
def test_plain_addresses_parse(text, local, domain, literal):
    addr = parse_address(text)
    assert (addr.local, addr.domain, addr.ip_literal) == (local, domain, literal)


@pytest.mark.parametrize(
    "text",
    [
        "victim%elsewhere.test@beta.test",  # percent hack
        "elsewhere.test!victim@beta.test",  # bang path
        '"victim@elsewhere.test"@beta.test',  # quoted local part hiding an address
        '"victim%elsewhere.test"@beta.test',
        '"a b"@beta.test',
        "victim@beta.test.",  # trailing dot
        "victim@beta..test",
        "victim@.beta.test",
        "victim@",
        "@beta.test",
        "victim",
        "victim@[300.1.1.1]",
        "victim@[elsewhere.test]",
        "vic tim@beta.test",
        "victim@beta.test\r\nRCPT TO:<x@y>",
        "a" * 65 + "@beta.test",
    ],
)
def test_relay_tricks_refused(text):
    with pytest.raises(AddressError) as info:
        parse_address(text)
    assert info.value.code == 553


def test_non_ascii_needs_smtputf8():
    with pytest.raises(AddressError) as info:
        parse_address("jöhn@beta.test")
    assert info.value.enhanced == "5.6.7"
    assert parse_address("jöhn@bêta.test", smtputf8=True).domain == "bêta.test"


def test_null_sender():
    assert parse_sender("") is None
    assert parse_sender("<>") is None
    assert str(parse_sender("alex@alpha.test")) == "alex@alpha.test"


@given(st.text(max_size=80))
def test_parser_never_raises_anything_but_address_error(text):
    try:
        addr = parse_address(text, smtputf8=True)
    except AddressError:
        return
    # Whatever parses has exactly one @ outside the local part and no routing characters.
    assert "%" not in addr.local and "!" not in addr.local and "@" not in addr.local


@pytest.mark.parametrize("text", ["postmaster", "Postmaster", "POSTMASTER", "pOsTmAsTeR"])
def test_postmaster_without_domain_is_the_local_postmaster(text):
    """RFC 5321 4.5.1 and 4.1.1.3: ``<Postmaster>`` without a domain, case-insensitive."""
    assert str(parse_recipient(text, postmaster_domain="Beta.Test")) == "postmaster@beta.test"


def test_parse_recipient_is_strict_otherwise():
    assert str(parse_recipient("John@Beta.Test", postmaster_domain="beta.test")) == "John@beta.test"
    for text in ("john", "postmaster2", "webmaster"):
        with pytest.raises(AddressError):
            parse_recipient(text, postmaster_domain="beta.test")
