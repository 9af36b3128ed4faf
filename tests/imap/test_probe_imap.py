"""``mailprov probe``'s IMAP checks against mailprov's IMAP service on 127.0.12.x (the round trip with
--user, which needs the MTA too, is proven by tests/deploy/test_demo.py)."""

from __future__ import annotations

import pytest

from mailprov.deploy.probe import Prober, ProbeTarget, imap_capability_problems
from mailprov.dns.model import Status
from mailprov.errors import UsageError
from tests.peers.imap_server import IMAPThread, imap_sections

HOST = "127.0.12.20"


def test_capability_rules() -> None:
    """RFC 3501 6.2.3 / RFC 8314: STARTTLS and LOGINDISABLED before TLS, login and the extensions after."""
    good_after = {"IMAP4REV1", "AUTH=PLAIN", "IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE"}
    assert imap_capability_problems({"IMAP4REV1", "STARTTLS", "LOGINDISABLED"}, good_after) == []
    problems = imap_capability_problems({"IMAP4REV1", "STARTTLS"}, good_after | {"LOGINDISABLED"})
    assert any("LOGINDISABLED" in p for p in problems) and any("after TLS" in p for p in problems)
    assert imap_capability_problems({"LOGINDISABLED"}, {"IMAP4REV1"})[0] == "no STARTTLS before TLS"


def _probe(config) -> Prober:  # type: ignore[no-untyped-def]
    with IMAPThread(config) as server:
        target = ProbeTarget(hostname=config.server.hostname, address=HOST, imap_port=server.plain[1], imaps_port=server.tls[1])
        target.validate()
        prober = Prober(target)
        assert prober.imap_ports()
        prober.imap_tls()
    return prober


@pytest.mark.parametrize("trusted", [False, True])
def test_probe_imap_ports_tls_and_capabilities(make_config, trusted: bool) -> None:
    prober = _probe(make_config(imap=imap_sections(HOST, trusted=trusted)))
    by_id: dict[str, list] = {}
    for result in prober.results:
        by_id.setdefault(result.id, []).append(result)
    assert [r.status for r in by_id["probe.port"]] == [Status.PASS, Status.PASS]
    assert sorted(r.subject.split(":")[0] for r in by_id["probe.tls"]) == ["imap-starttls", "imaps-tls"], [
        r.summary for r in prober.results
    ]
    assert all(r.status == Status.PASS for r in by_id["probe.tls"]) and len(by_id["probe.tls"]) == 2
    (imap,) = by_id["probe.imap"]
    if trusted:  # this client may send a password in clear: the probe says so
        assert imap.status == Status.FAIL and "LOGINDISABLED" in imap.summary
    else:
        assert imap.status == Status.PASS, imap.summary


def test_imap_port_zero_skips_and_out_of_range_is_usage_error() -> None:
    with pytest.raises(UsageError):
        ProbeTarget(hostname="h", address="127.0.12.21", imap_port=70000).validate()
    ProbeTarget(hostname="h", address="127.0.12.21", imap_port=0).validate()
