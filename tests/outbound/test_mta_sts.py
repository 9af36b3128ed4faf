"""MTA-STS: policy parsing, discovery and caching, HTTPS fetch, and enforcement by the courier."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from mailprov.delivery.base import Envelope, Outcome
from mailprov.delivery.mta_sts import HTTPSFetcher, PolicyCache, PolicyError, StsPolicy, mx_matches, parse_policy, parse_txt
from mailprov.delivery.remote import RemoteCourier
from mailprov.delivery.routing import make_resolver
from tests.outbound.conftest import HTTPS_PORT, SMTP_PORT
from tests.outbound.scripted import ScriptedPeer, server_context
from tests.peers.https_server import HTTPSServer

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.out.test\r\nmx: *.backup.out.test\r\nmax_age: 86400\r\n"

# -- parsing ------------------------------------------------------------------------------------


def test_parse_policy():
    policy = parse_policy(POLICY, policy_id="abc", fetched=10.0)
    assert policy.mode == "enforce" and policy.mx == ("mx.sts.out.test", "*.backup.out.test") and policy.max_age == 86400
    assert policy.permits("MX.sts.out.test.") and policy.permits("a.backup.out.test")
    assert not policy.permits("backup.out.test") and not policy.permits("a.b.backup.out.test")
    assert not policy.expired(10.0 + 86399) and policy.expired(10.0 + 86400)


def test_parse_policy_caps_max_age_and_ignores_unknown_keys():
    policy = parse_policy("version: STSv1\nmode: testing\nmx: mx.example\nmax_age: 9999999999\nfuture: thing\n")
    assert policy.max_age == 31557600 and policy.mode == "testing"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n", "version"),
        ("version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1\n", "mode"),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "mx"),
        ("version: STSv1\nmode: enforce\nmx: a.b\nmax_age: soon\n", "max_age"),
        ("version: STSv1\nmode: enforce\nmx: a..b/c\nmax_age: 1\n", "mx pattern"),
        ("<html>oops</html>", "key: value"),
    ],
)
def test_bad_policies_are_refused_with_the_reason(text, problem):
    with pytest.raises(PolicyError, match=problem):
        parse_policy(text)


def test_parse_txt():
    assert parse_txt(["v=STSv1; id=20261127a;"]) == "20261127a"
    assert parse_txt(["v=STSv1; id=abc", "some other record"]) == "abc"
    assert parse_txt(["v=STSv1; id=a;", "v=STSv1; id=b;"]) is None  # two policies: none
    assert parse_txt(["v=STSv1; id=not-alnum;"]) is None
    assert parse_txt(["v=spf1 -all"]) is None


def test_mx_matches():
    assert mx_matches("*.example.net", "mx1.example.net")
    assert not mx_matches("*.example.net", "example.net")
    assert mx_matches("mx.example.net", "MX.Example.Net.")


# -- discovery and cache (TXT from Knot, fetch injected) ---------------------------------------


class CountingFetch:
    def __init__(self, text: str = POLICY, fail: bool = False) -> None:
        self.text, self.fail, self.calls = text, fail, 0

    async def __call__(self, domain: str) -> str:
        self.calls += 1
        if self.fail:
            raise PolicyError("HTTP 500")
        return self.text


@pytest.mark.peers
def test_policy_is_fetched_once_and_cached_on_disk(knot, out_config, tmp_path):
    config = out_config()
    fetch = CountingFetch()

    async def run():
        cache = PolicyCache(tmp_path, make_resolver(config), fetch=fetch)
        first = await cache.policy("sts.out.test")
        second = await cache.policy("sts.out.test")
        return first, second

    first, second = asyncio.run(run())
    assert first == second and first.mode == "enforce" and first.policy_id == "20261127a"
    assert fetch.calls == 1
    saved = json.loads((tmp_path / "mta-sts" / "sts.out.test.json").read_text())
    assert saved["policy_id"] == "20261127a" and saved["mx"] == ["mx.sts.out.test", "*.backup.out.test"]

    # A restart reads the cache: no fetch while the TXT id is unchanged.
    fetch2 = CountingFetch()
    policy = asyncio.run(PolicyCache(tmp_path, make_resolver(config), fetch=fetch2).policy("sts.out.test"))
    assert policy == first and fetch2.calls == 0


@pytest.mark.peers
def test_changed_id_refetches_and_failed_fetch_keeps_the_cached_policy(knot, out_config, tmp_path):
    config = out_config()
    old = StsPolicy("enforce", ("old.sts.out.test",), 86400, "previous", time.time())
    (tmp_path / "mta-sts").mkdir()
    (tmp_path / "mta-sts" / "sts.out.test.json").write_text(json.dumps({**old.__dict__, "mx": list(old.mx)}))
    failing = CountingFetch(fail=True)
    kept = asyncio.run(PolicyCache(tmp_path, make_resolver(config), fetch=failing).policy("sts.out.test"))
    assert failing.calls == 1 and kept == old
    fresh = asyncio.run(PolicyCache(tmp_path, make_resolver(config), fetch=CountingFetch()).policy("sts.out.test"))
    assert fresh.policy_id == "20261127a" and fresh.mx[0] == "mx.sts.out.test"


@pytest.mark.peers
def test_cached_policy_outlives_its_txt_record_until_max_age(knot, out_config, tmp_path):
    config = out_config()
    (tmp_path / "mta-sts").mkdir()
    fresh = {"mode": "enforce", "mx": ["mx.a.out.test"], "max_age": 3600, "policy_id": "x1", "fetched": time.time()}
    (tmp_path / "mta-sts" / "a.out.test.json").write_text(json.dumps(fresh))
    policy = asyncio.run(PolicyCache(tmp_path, make_resolver(config), fetch=CountingFetch()).policy("a.out.test"))
    assert policy is not None and policy.mx == ("mx.a.out.test",)
    # Once max_age has passed, and with no TXT record, there is no policy.
    (tmp_path / "mta-sts" / "a.out.test.json").write_text(json.dumps({**fresh, "fetched": time.time() - 3601}))
    assert asyncio.run(PolicyCache(tmp_path, make_resolver(config), fetch=CountingFetch()).policy("a.out.test")) is None


@pytest.mark.peers
def test_domain_without_policy(knot, out_config, tmp_path):
    fetch = CountingFetch()
    assert asyncio.run(PolicyCache(tmp_path, make_resolver(out_config()), fetch=fetch).policy("a.out.test")) is None
    assert fetch.calls == 0


# -- the real HTTPS fetch, from a local server -------------------------------------------------


def PolicyServer(cert, text: str = POLICY, status: int = 200, ctype: str = "text/plain; charset=utf-8") -> HTTPSServer:
    """HTTPS on 127.0.5.60:8443 serving /.well-known/mta-sts.txt with a chosen status and type."""
    web = HTTPSServer("127.0.5.60", HTTPS_PORT, cert.cert, cert.key)
    web.body, web.status, web.content_type = text, status, ctype
    if status in (301, 302):
        web.location = "https://elsewhere.out.test/"
    return web


def fetch_text(config, ca_file) -> str:
    return asyncio.run(HTTPSFetcher(make_resolver(config), ca_file=str(ca_file), port=HTTPS_PORT, timeout=5)("sts.out.test"))


@pytest.mark.peers
def test_https_fetch_checks_certificate_status_and_type(knot, out_config, test_ca):
    config = out_config()
    good = test_ca.issue("mta-sts.sts.out.test")
    with PolicyServer(good):
        assert fetch_text(config, test_ca.ca_file) == POLICY
    with PolicyServer(good, status=302), pytest.raises(PolicyError, match="HTTP 302"):
        fetch_text(config, test_ca.ca_file)
    with PolicyServer(good, ctype="text/html"), pytest.raises(PolicyError, match="Content-Type"):
        fetch_text(config, test_ca.ca_file)
    wrong_name = test_ca.issue("www.sts.out.test")
    with PolicyServer(wrong_name), pytest.raises(PolicyError, match="cannot fetch"):
        fetch_text(config, test_ca.ca_file)


# -- enforcement in the courier -----------------------------------------------------------------


def deliver(config, rcpt: str, **kwargs):
    async def run():
        courier = RemoteCourier(config, **kwargs)
        try:
            return await courier.deliver(Envelope("STS1", "alex@example.test", (rcpt,), time.time()), b"Subject: sts\r\n\r\nhi\r\n")
        finally:
            await courier.close()

    return asyncio.run(run())[rcpt]


@pytest.mark.peers
def test_enforced_policy_keeps_mail_from_unlisted_mx_and_demands_valid_tls(knot, out_config, test_ca, make_config):
    # mx.sts (pref 10, listed in the policy) is down; rogue.sts (pref 20, not listed) listens without TLS.
    https = test_ca.issue("mta-sts.sts.out.test")
    kwargs = {"ca_file": str(test_ca.ca_file), "sts_port": HTTPS_PORT}
    with PolicyServer(https) as web, ScriptedPeer("127.0.5.27", SMTP_PORT) as rogue:
        refused = deliver(out_config({"mta_sts": True}), "john@sts.out.test", **kwargs)
        # Without MTA-STS the same mail goes to the unlisted host: the test above could fail.
        unprotected = deliver(out_config({"mta_sts": False}), "john@sts.out.test", **kwargs)
    assert refused.outcome is Outcome.TEMPORARY and refused.enhanced == "4.7.5"
    assert "not allowed by the MTA-STS policy" in refused.message or "refused" in refused.message.lower()
    assert unprotected.ok and len(rogue.handler.received) == 1
    assert len(web.paths) == 1

    # The listed MX with a certificate for its name gets the mail, over verified TLS.
    mx = test_ca.issue("mx.sts.out.test")
    with PolicyServer(https), ScriptedPeer("127.0.5.26", SMTP_PORT, tls_context=server_context(str(mx.cert), str(mx.key))) as good:
        delivered = deliver(out_config({"mta_sts": True}), "john@sts.out.test", **kwargs)
    assert delivered.ok and good.handler.received[0].tls


@pytest.mark.peers
@pytest.mark.parametrize(("mode", "delivered"), [("testing", True), ("enforce", False)])
def test_testing_mode_only_reports(knot, out_config, caplog, mode, delivered):
    # The policy lists another MX than the one the domain uses: 'testing' logs it and delivers anyway.
    text = f"version: STSv1\nmode: {mode}\nmx: other.ststest.out.test\nmax_age: 600\n"
    with ScriptedPeer("127.0.5.28", SMTP_PORT) as peer:
        result = deliver(out_config({"mta_sts": True}), "john@ststest.out.test", sts_fetch=CountingFetch(text))
    assert result.ok is delivered and len(peer.handler.received) == int(delivered)
    if delivered:
        assert "MTA-STS (testing) of ststest.out.test does not list MX mx.ststest.out.test" in caplog.text
    else:
        assert result.outcome is Outcome.TEMPORARY and "not allowed by the MTA-STS policy" in result.message
