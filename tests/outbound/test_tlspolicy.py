"""TLS policy decisions: precedence of transport, per-domain policy, default and MTA-STS."""

from __future__ import annotations

import ssl

from mailprov.config import TransportConfig
from mailprov.delivery.mta_sts import StsPolicy
from mailprov.delivery.tlspolicy import client_context, policy_for, stronger

ENFORCE = StsPolicy("enforce", ("mx.bank.test", "*.mx.bank.test"), 86400, "1", 0.0)
TESTING = StsPolicy("testing", ("mx.bank.test",), 86400, "1", 0.0)


def test_default_is_opportunistic(make_config):
    policy = policy_for(make_config(), "example.org")
    assert policy.level == "opportunistic" and policy.starttls and not policy.required and not policy.verify
    assert policy.source == "outbound.tls"


def test_per_domain_policy_wins_over_default(make_config):
    config = make_config(outbound={"tls": "none", "tls_policies": {"bank.test": "verify", "old.test": "require"}})
    assert policy_for(config, "bank.test").verify
    assert policy_for(config, "old.test").required and not policy_for(config, "old.test").verify
    assert not policy_for(config, "other.test").starttls


def test_transport_policy_is_its_own(make_config):
    config = make_config(outbound={"tls_policies": {"bank.test": "verify"}})
    transport = TransportConfig(domain="bank.test", host="relay", tls="require")
    policy = policy_for(config, "bank.test", transport=transport, sts=ENFORCE)
    assert policy.level == "require" and policy.source == "transport" and policy.mx_permitted("anything")


def test_mta_sts_enforce_raises_to_verify_and_limits_mx(make_config):
    policy = policy_for(make_config(), "bank.test", sts=ENFORCE)
    assert policy.verify and policy.source == "mta-sts"
    assert policy.mx_permitted("mx.bank.test")
    assert policy.mx_permitted("a.mx.bank.test")
    assert not policy.mx_permitted("b.a.mx.bank.test")
    assert not policy.mx_permitted("rogue.example")


def test_mta_sts_enforce_never_lowers_a_stronger_local_policy(make_config):
    config = make_config(outbound={"tls_policies": {"bank.test": "verify"}})
    policy = policy_for(config, "bank.test", sts=ENFORCE)
    assert policy.verify and policy.source == "outbound.tls_policies.bank.test" and not policy.mx_permitted("rogue.example")


def test_mta_sts_testing_changes_nothing(make_config):
    policy = policy_for(make_config(), "bank.test", sts=TESTING)
    assert policy.level == "opportunistic" and policy.mx_permitted("rogue.example")


def test_stronger():
    assert stronger("none", "verify") == "verify"
    assert stronger("require", "opportunistic") == "require"


def test_contexts():
    verifying = client_context(verify=True)
    assert verifying.check_hostname and verifying.verify_mode == ssl.CERT_REQUIRED
    lax = client_context(verify=False)
    assert not lax.check_hostname and lax.verify_mode == ssl.CERT_NONE
