"""``mta_sts.policy`` (``check --tls``): the policy fetched from a real HTTPS server, good and broken (RFC 8461).

``good.diag.test`` publishes ``_mta-sts`` and ``mta-sts.good.diag.test A 127.0.14.20``; the test HTTPS
server (tests/peers/https_server.py, a certificate from the test CA) serves whatever each test sets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mailprov.cli import app
from mailprov.dns.model import Status
from mailprov.dns.mta_sts import judge_policy
from tests.dns import dnssec_lab as lab
from tests.outbound.pki import TestCA
from tests.peers.https_server import HTTPSServer

GOOD = "version: STSv1\nmode: enforce\nmx: mail.good.diag.test\nmax_age: 1209600\n"


@pytest.fixture(scope="module")
def policy_server(pki: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HTTPSServer]:
    cert = pki.issue("mta-sts.good.diag.test", days=90, directory=tmp_path_factory.mktemp("sts-cert"))
    with HTTPSServer(lab.STS_ADDRESS, 0, cert.cert, cert.key) as server:
        server.body = GOOD
        yield server


def policy_result(dnssec_lab: dict, pki: TestCA, server: HTTPSServer, *, ca_file: Path | None = None) -> dict:
    resolver = f"{dnssec_lab['knot'].address}:{dnssec_lab['knot'].port}"
    args = ["check", "good.diag.test", "--resolver", resolver, "--tls", "--https-port", str(server.port), "--timeout", "3"]
    result = CliRunner().invoke(app, [*args, "--ca-file", str(ca_file or pki.ca_file), "--format", "json"])
    assert result.exit_code in (0, 1, 3), result.output
    checks = json.loads(result.stdout)["domains"][0]["checks"]
    return next(c for c in checks if c["id"] == "mta_sts.policy")


def test_good_policy_passes(dnssec_lab: dict, pki: TestCA, policy_server: HTTPSServer) -> None:
    """Fetched from the well-known path (RFC 8461 3.3) over verified HTTPS; enforce, weeks of max_age, the MX covered."""
    policy_server.status, policy_server.content_type, policy_server.body = 200, "text/plain", GOOD
    result = policy_result(dnssec_lab, pki, policy_server)
    assert result["status"] == "pass", result
    assert policy_server.paths[-1] == "/.well-known/mta-sts.txt"
    assert result["records"][-1]["answer"][1] == "mode: enforce"


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected", "says"),
    [
        (200, "text/plain", GOOD.replace("mail.good", "other"), "fail", "no mx pattern covers mail.good.diag.test"),
        (200, "text/plain", GOOD.replace("mode: enforce", "mode: testing"), "warn", "mode testing"),
        (200, "text/plain", GOOD.replace("1209600", "600"), "warn", "under a day"),
        (200, "text/plain", GOOD.replace("1209600", "99999999"), "fail", "over the limit"),
        (200, "text/plain", "version: STSv1\nmode: enforce\n", "fail", "invalid"),
        (200, "text/html", GOOD, "fail", "not text/plain"),
        (301, "text/plain", GOOD, "fail", "HTTP 301"),
    ],
)
def test_broken_policies(
    dnssec_lab: dict, pki: TestCA, policy_server: HTTPSServer, status: int, content_type: str, body: str, expected: str, says: str
) -> None:
    """RFC 8461 3.2 (syntax, max_age), 3.3 (200 only, no redirects, text/plain), 4.1 (mx patterns)."""
    policy_server.status, policy_server.content_type, policy_server.body = status, content_type, body
    result = policy_result(dnssec_lab, pki, policy_server)
    assert result["status"] == expected, result
    assert says in result["summary"]


def test_untrusted_certificate_fails(dnssec_lab: dict, pki: TestCA, policy_server: HTTPSServer, tmp_path: Path) -> None:
    """The policy host's certificate must verify (RFC 8461 3.3): another CA's trust store refuses it."""
    policy_server.status, policy_server.content_type, policy_server.body = 200, "text/plain", GOOD
    other = TestCA(tmp_path / "other-ca", "another CA")
    result = policy_result(dnssec_lab, pki, policy_server, ca_file=other.ca_file)
    assert result["status"] == "fail" and "certificate verify failed" in result["summary"]


def test_judge_policy_wildcard_covers_one_label() -> None:
    """RFC 8461 4.1: '*.example.org' matches exactly one leftmost label."""
    policy = "version: STSv1\nmode: enforce\nmx: *.lab.test\nmax_age: 1209600\n"
    assert judge_policy(policy, ["mx1.lab.test."])[0] == Status.PASS
    status, notes = judge_policy(policy, ["a.b.lab.test."])
    assert status == Status.FAIL and "a.b.lab.test" in notes[-1]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "version: STSv1",
                "mode: enforce",
                "mode: testing",
                "mx: mail.good.diag.test",
                "mx: *.x",
                "max_age: 86400",
                "max_age_extra: x",
                "max_age: 99999999999",
                "junk",
                ":",
                "max_age:",
            ]
        ),
        max_size=8,
    ),
    st.text(max_size=40),
)
def test_judge_policy_never_raises(lines: list[str], noise: str) -> None:
    """Any policy text gets a verdict, never an exception."""
    status, notes = judge_policy("\n".join([*lines, noise]), ["mail.good.diag.test."])
    assert status in set(Status) and notes
