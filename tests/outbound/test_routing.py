"""Routing: MX order, implicit MX, null MX, aliases and IP addresses as MX, loops, transports; against Knot."""

from __future__ import annotations

import asyncio
import random

import pytest

from mailprov.delivery.routing import Router, RoutingError, find_transport, order_mx, parse_address_literal

# -- pure logic ---------------------------------------------------------------------------------


def test_order_mx_sorts_by_preference_and_shuffles_equal_ones():
    records = [(20, "backup"), (10, "a"), (10, "b"), (10, "c"), (5, "best")]
    seen_first_of_equal = set()
    for seed in range(40):
        ordered = order_mx(records, random.Random(seed))
        assert [p for p, _ in ordered] == [5, 10, 10, 10, 20]
        assert ordered[0][1] == "best" and ordered[-1][1] == "backup"
        seen_first_of_equal.add(ordered[1][1])
    # Equal preferences are spread across hosts, not always in the same order.
    assert seen_first_of_equal == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("literal", "expected"),
    [("[192.0.2.1]", "192.0.2.1"), ("[IPv6:2001:db8::1]", "2001:db8::1"), ("[ipv6:::1]", "::1"), ("example.org", None)],
)
def test_address_literals(literal, expected):
    assert parse_address_literal(literal) == expected


@pytest.mark.parametrize("bad", ["[300.1.1.1]", "[2001:db8::1]", "[IPv6:192.0.2.1]", "[mx.example.org]"])
def test_bad_address_literal_is_a_permanent_error(bad):
    with pytest.raises(RoutingError) as info:
        parse_address_literal(bad)
    assert not info.value.temporary and info.value.enhanced == "5.1.3"


def test_transport_lookup_prefers_exact_domain_over_relayhost(make_config):
    config = make_config(
        outbound={
            "transports": [
                {"domain": "*", "host": "relay.example.net", "port": 587},
                {"domain": "partner.test", "host": "10.0.0.1", "port": 2525},
            ]
        }
    )
    assert find_transport(config, "partner.test").host == "10.0.0.1"
    assert find_transport(config, "other.test").host == "relay.example.net"
    assert find_transport(make_config(), "other.test") is None


# -- against Knot -------------------------------------------------------------------------------


def route(config, domain):
    return asyncio.run(Router(config).route(domain))


def route_error(config, domain) -> RoutingError:
    with pytest.raises(RoutingError) as info:
        route(config, domain)
    return info.value


@pytest.mark.peers
def test_mx_preference_order_and_addresses(knot, out_config):
    config = out_config()
    r = route(config, "multi.out.test")
    assert r.kind == "mx"
    assert [h.preference for h in r.hops] == [10, 10, 20]
    assert {h.name for h in r.hops[:2]} == {"mx1.multi.out.test", "mx2.multi.out.test"}
    assert r.hops[2].name == "backup.multi.out.test" and r.hops[2].addresses == ("127.0.5.13",)
    assert all(h.port == 2525 for h in r.hops)
    assert [a for _, a in r.targets()][2] == "127.0.5.13"


@pytest.mark.peers
def test_ipv6_addresses_come_before_ipv4(knot, out_config):
    r = route(out_config(), "dual.out.test")
    assert r.hops[0].addresses == ("::1", "127.0.5.14")


@pytest.mark.peers
def test_implicit_mx(knot, out_config):
    r = route(out_config(), "implicit.out.test")
    assert r.kind == "implicit-mx"
    assert r.hops[0].name == "implicit.out.test" and r.hops[0].addresses == ("127.0.5.15",)


@pytest.mark.peers
def test_domain_that_is_an_alias_uses_the_targets_mx(knot, out_config):
    r = route(out_config(), "aliasdom.out.test")
    assert r.kind == "mx" and [h.name for h in r.hops] == ["mx.a.out.test"]


@pytest.mark.peers
def test_null_mx_is_permanent_556(knot, out_config):
    err = route_error(out_config(), "nullmx.out.test")
    assert not err.temporary and err.code == 556 and err.enhanced == "5.1.10"


@pytest.mark.peers
def test_nxdomain_is_permanent(knot, out_config):
    err = route_error(out_config(), "absent.out.test")
    assert not err.temporary and err.enhanced == "5.1.2"
    assert "NXDOMAIN" in err.message


@pytest.mark.peers
def test_no_mx_and_no_address_is_permanent(knot, out_config):
    err = route_error(out_config(), "txtonly.out.test")
    assert not err.temporary and "no MX and no address" in err.message


@pytest.mark.peers
def test_mx_alias_is_followed_with_a_warning(knot, out_config):
    r = route(out_config(), "cname.out.test")
    assert r.hops[0].addresses == ("127.0.5.16",)
    assert any("alias" in w for w in r.warnings)


@pytest.mark.peers
def test_ip_address_as_mx_is_skipped(knot, out_config):
    r = route(out_config(), "iplit.out.test")
    assert [h.name for h in r.hops] == ["mx.iplit.out.test"]
    assert any("IP address" in w for w in r.warnings)
    err = route_error(out_config(), "onlyiplit.out.test")
    assert not err.temporary and err.enhanced == "5.4.4"


@pytest.mark.peers
def test_mx_without_address_is_permanent(knot, out_config):
    err = route_error(out_config(), "noaddr.out.test")
    assert not err.temporary and "no address" in err.message


@pytest.mark.peers
def test_this_host_as_best_mx_is_a_loop(knot, out_config):
    err = route_error(out_config(), "loop.out.test")
    assert not err.temporary and err.enhanced == "5.4.6"
    # As a backup MX, only the better MX hosts are used.
    r = route(out_config(), "backupme.out.test")
    assert [h.name for h in r.hops] == ["mx.a.out.test"]


@pytest.mark.peers
def test_refused_query_is_temporary(knot, out_config):
    # Knot is not authoritative for .invalid and refuses: no name server gave an answer.
    err = route_error(out_config(), "elsewhere.invalid")
    assert err.temporary and err.enhanced == "4.4.3"


def test_dns_timeout_is_temporary(out_config):
    # Nothing listens on this address: the lookup times out (bounded by connect_timeout).
    config = out_config({"resolvers": ["127.0.5.54:5353"], "connect_timeout": 1})
    err = route_error(config, "multi.out.test")
    assert err.temporary and "timed out" in err.message


@pytest.mark.peers
def test_transport_skips_the_mx_lookup(knot, out_config):
    config = out_config({"transports": [{"domain": "multi.out.test", "host": "127.0.5.40", "port": 1587}]})
    r = route(config, "multi.out.test")
    assert r.kind == "transport" and r.hops[0].addresses == ("127.0.5.40",) and r.hops[0].port == 1587
    assert r.destination == "127.0.5.40:1587"


def test_address_literal_route(out_config):
    r = route(out_config(), "[127.0.5.30]")
    assert r.kind == "literal" and r.hops[0].addresses == ("127.0.5.30",) and r.hops[0].port == 2525
