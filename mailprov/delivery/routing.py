"""Where mail for a domain goes: transports (relayhost), address literals, or the MX records.

Order of decisions for a recipient domain (RFC 5321 section 5.1, RFC 7505, RFC 2181 section 10.3):

1. A configured transport for the exact domain, else the ``*`` transport (the relayhost): its host's
   addresses and port, no MX lookup.
2. An address literal (``user@[192.0.2.1]``, ``user@[IPv6:2001:db8::1]``): that address, no DNS.
3. The MX records, best (lowest) preference first, equal preferences in random order. A lone null MX
   (``MX 0 .``) means the domain accepts no mail: a permanent 556 5.1.10. An MX whose target is an IP
   address is not a host name (RFC 5321 5.1) and is skipped; one whose target is an alias (CNAME, which
   RFC 2181 10.3 forbids) is followed, with a warning, as most MTAs do. If this host is itself one of the
   MX hosts, only better MX hosts are used (a mail loop otherwise).
4. No MX records but an address: the implicit MX (the domain itself, preference 0).

Each host's addresses are IPv6 first, then IPv4. A DNS answer that says "no" (NXDOMAIN, no records) is
permanent; one that could not be had (SERVFAIL, timeout) is temporary: :class:`RoutingError` says which.
The resolver is dnspython's asyncio resolver with a cache, pointed at ``outbound.resolvers`` when set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from mailprov.config import Config, TransportConfig

log = logging.getLogger("mailprov.outbound")

# The most addresses one delivery attempt tries (Postfix's smtp_mx_address_limit is 5; we allow a few
# more because IPv6 addresses that cannot be reached fail at once on hosts without IPv6).
MAX_ADDRESSES = 10


class RoutingError(Exception):
    """No route to a domain: ``temporary`` says whether to retry; code and enhanced code for the DSN."""

    def __init__(self, message: str, *, temporary: bool, code: int | None = None, enhanced: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.temporary = temporary
        self.code = code or (451 if temporary else 550)
        self.enhanced = enhanced or ("4.4.3" if temporary else "5.1.2")


@dataclass(frozen=True)
class Hop:
    """One host to try: its name (for TLS and logs), MX preference, port and addresses in order."""

    name: str
    preference: int
    port: int
    addresses: tuple[str, ...]


@dataclass
class Route:
    """How to reach one destination domain."""

    domain: str
    kind: str  # "mx", "implicit-mx", "literal" or "transport"
    hops: list[Hop]
    transport: TransportConfig | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def destination(self) -> str:
        """The key for per-destination concurrency: the relay host for a transport, else the domain."""
        if self.transport is not None:
            return f"{self.transport.host}:{self.transport.port}"
        return self.domain

    def targets(self) -> list[tuple[Hop, str]]:
        """(hop, address) pairs in the order to try them, at most MAX_ADDRESSES."""
        return [(hop, addr) for hop in self.hops for addr in hop.addresses][:MAX_ADDRESSES]


def order_mx(records: list[tuple[int, str]], rng: random.Random | None = None) -> list[tuple[int, str]]:
    """Sort (preference, host) pairs best first, shuffling hosts of equal preference (RFC 5321 5.1)."""
    rng = rng or random
    keyed = [(pref, rng.random(), host) for pref, host in records]
    keyed.sort()
    return [(pref, host) for pref, _, host in keyed]


def parse_address_literal(domain: str) -> str | None:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` -> the address; None when ``domain`` is not a literal.

    Raises RoutingError (permanent) for a bracketed value that is not an address."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
        version = 6
    else:
        version = 4
    try:
        addr = ipaddress.ip_address(inner)
    except ValueError:
        addr = None
    if addr is None or addr.version != version:
        raise RoutingError(f"{domain} is not a valid address literal", temporary=False, code=501, enhanced="5.1.3")
    return str(addr)


def is_ip_address(name: str) -> bool:
    """True for a textual IPv4 or IPv6 address (an MX target must be a host name, never one)."""
    try:
        ipaddress.ip_address(name.rstrip("."))
    except ValueError:
        return False
    return True


def find_transport(config: Config, domain: str) -> TransportConfig | None:
    """The transport for ``domain``: an exact match, else the ``*`` relayhost, else None."""
    wildcard = None
    for transport in config.outbound.transports:
        if transport.domain == domain:
            return transport
        if transport.domain == "*" and wildcard is None:
            wildcard = transport
    return wildcard


def make_resolver(config: Config) -> dns.asyncresolver.Resolver:
    """dnspython's asyncio resolver, using ``outbound.resolvers`` when set, with a TTL-honouring cache."""
    if config.outbound.resolvers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        servers: list[dns.nameserver.Nameserver] = []
        for spec in config.outbound.resolvers:
            host, port = spec, 53
            if spec.startswith("["):
                host, _, port_text = spec[1:].partition("]:")
                port = int(port_text)
            elif spec.count(":") == 1:
                host, port_text = spec.split(":")
                port = int(port_text)
            servers.append(dns.nameserver.Do53Nameserver(host, port))
        resolver.nameservers = servers
    else:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = ["127.0.0.1"]
    resolver.cache = dns.resolver.LRUCache(4096)
    # One query's whole budget: long enough for a slow authoritative server, short enough that a dead
    # resolver defers the message instead of tying up a worker.
    resolver.lifetime = float(min(config.outbound.connect_timeout, 30))
    resolver.timeout = min(resolver.lifetime, 5.0)
    return resolver


class Router:
    """Finds the :class:`Route` for a domain; one per courier (it owns the resolver and its cache)."""

    def __init__(self, config: Config, resolver: dns.asyncresolver.Resolver | None = None) -> None:
        self.config = config
        self.resolver = resolver or make_resolver(config)
        self.own_names = {config.server.hostname.lower(), config.outbound_helo.lower()}
        self._static_hops: dict[int, Hop] = {}

    async def route(self, domain: str) -> Route:
        """The route for ``domain`` (lower case, no trailing dot). Raises RoutingError."""
        domain = domain.lower().rstrip(".")
        transport = find_transport(self.config, domain)
        if transport is not None:
            hop = self._static_hops.get(id(transport))
            if hop is None:
                hop = Hop(transport.host, 0, transport.port, await self._host_addresses(transport.host))
                if is_ip_address(transport.host):  # an address never changes: no need to look again
                    self._static_hops[id(transport)] = hop
            return Route(domain, "transport", [hop], transport)
        literal = parse_address_literal(domain)
        if literal is not None:
            return Route(domain, "literal", [Hop(literal, 0, self.config.outbound.port, (literal,))])
        if not domain or is_ip_address(domain):
            raise RoutingError(f"{domain!r} is not a mail domain", temporary=False, code=501, enhanced="5.1.2")
        return await self._mx_route(domain)

    async def _mx_route(self, domain: str) -> Route:
        port = self.config.outbound.port
        try:
            answer = await self.resolver.resolve(domain, "MX", search=False)
            records = [(r.preference, r.exchange.to_text(omit_final_dot=True).lower()) for r in answer]
        except dns.resolver.NXDOMAIN:
            raise RoutingError(f"domain {domain} does not exist (NXDOMAIN)", temporary=False, code=550, enhanced="5.1.2") from None
        except dns.resolver.NoAnswer:
            records = []
        except dns.exception.DNSException as exc:
            raise self._dns_temporary(f"MX lookup for {domain}", exc) from None

        if not records:
            # RFC 5321 5.1: no MX, but an address: the domain is its own (implicit) MX.
            addresses = await self._addresses(domain, missing_ok=True)
            if not addresses:
                raise RoutingError(f"domain {domain} has no MX and no address records", temporary=False, code=550, enhanced="5.1.2")
            return Route(domain, "implicit-mx", [Hop(domain, 0, port, addresses)])

        real = [(pref, host) for pref, host in records if host not in ("", ".")]
        if not real:
            # RFC 7505 section 3: a null MX says the domain accepts no mail.
            raise RoutingError(f"domain {domain} accepts no mail (null MX)", temporary=False, code=556, enhanced="5.1.10")
        warnings: list[str] = []
        if len(real) != len(records):
            warnings.append(f"{domain} publishes a null MX beside other MX records (RFC 7505 forbids it); the null MX is ignored")

        ordered = order_mx(real)
        # RFC 5321 5.1: if this host is one of the MX hosts, only strictly better ones may be used.
        mine = [pref for pref, host in ordered if host in self.own_names]
        if mine:
            ordered = [(pref, host) for pref, host in ordered if pref < min(mine)]
            if not ordered:
                raise RoutingError(
                    f"mail for {domain} loops back to myself (this host is its best MX)", temporary=False, code=554, enhanced="5.4.6"
                )

        usable: list[tuple[int, str]] = []
        for pref, host in ordered:
            if is_ip_address(host):
                warnings.append(f"MX {pref} {host} of {domain} is an IP address, not a host name (RFC 5321 5.1); skipped")
            else:
                usable.append((pref, host))
        if not usable:
            raise RoutingError(f"no usable MX host for {domain}: {'; '.join(warnings)}", temporary=False, code=550, enhanced="5.4.4")

        # Resolve every MX host at once; a failure for one host only matters if none resolves.
        results = await asyncio.gather(*(self._mx_addresses(host, warnings) for _, host in usable), return_exceptions=True)
        hops: list[Hop] = []
        errors: list[RoutingError] = []
        for (pref, host), result in zip(usable, results, strict=True):
            if isinstance(result, RoutingError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            elif result:
                hops.append(Hop(host, pref, port, result))
        for warning in warnings:
            log.warning("%s", warning)
        if not hops:
            temporary = any(e.temporary for e in errors)
            detail = "; ".join(e.message for e in errors) or "no addresses"
            raise RoutingError(
                f"no MX host of {domain} has an address: {detail}",
                temporary=temporary,
                code=451 if temporary else 550,
                enhanced="4.4.3" if temporary else "5.4.4",
            )
        return Route(domain, "mx", hops, warnings=warnings)

    async def _mx_addresses(self, host: str, warnings: list[str]) -> tuple[str, ...]:
        addresses, alias = await self._addresses_and_alias(host)
        if alias:
            warnings.append(f"MX host {host} is an alias for {alias} (RFC 2181 10.3 forbids it); following it")
        if not addresses:
            raise RoutingError(f"MX host {host} has no address records", temporary=False, code=550, enhanced="5.4.4")
        return addresses

    async def _addresses(self, name: str, *, missing_ok: bool = False) -> tuple[str, ...]:
        addresses, _ = await self._addresses_and_alias(name)
        if not addresses and not missing_ok:
            raise RoutingError(f"host {name} has no address records", temporary=False, code=550, enhanced="5.4.4")
        return addresses

    async def _addresses_and_alias(self, name: str) -> tuple[tuple[str, ...], str]:
        """AAAA then A addresses of ``name``, and the canonical name if ``name`` was an alias."""
        found: dict[str, list[str]] = {"AAAA": [], "A": []}
        alias = ""
        failures: list[tuple[str, dns.exception.DNSException]] = []

        async def one(rdtype: str) -> None:
            nonlocal alias
            try:
                answer = await self.resolver.resolve(name, rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                return
            except dns.exception.DNSException as exc:
                failures.append((rdtype, exc))
                return
            canonical = answer.canonical_name.to_text(omit_final_dot=True).lower()
            if canonical != name.lower().rstrip("."):
                alias = canonical
            found[rdtype] = [r.address for r in answer]

        await asyncio.gather(one("AAAA"), one("A"))
        addresses = tuple(found["AAAA"] + found["A"])
        if not addresses and failures:
            rdtype, exc = failures[0]
            raise self._dns_temporary(f"{rdtype} lookup for {name}", exc)
        return addresses, alias

    async def _host_addresses(self, host: str) -> tuple[str, ...]:
        """Addresses of a configured relay host: an IP as is; a name through the resolver, or the
        system's (``/etc/hosts`` included) when no resolvers are configured."""
        if is_ip_address(host):
            return (str(ipaddress.ip_address(host)),)
        if self.config.outbound.resolvers:
            return await self._addresses(host)
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), self.resolver.lifetime)
        except socket.gaierror as exc:
            permanent = exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5))
            raise RoutingError(
                f"relay host {host} cannot be resolved: {exc.strerror}",
                temporary=not permanent,
                code=550 if permanent else 451,
                enhanced="5.4.4" if permanent else "4.4.3",
            ) from None
        except TimeoutError:
            raise RoutingError(f"relay host {host}: name lookup timed out", temporary=True) from None
        v6 = [i[4][0] for i in infos if i[0] == socket.AF_INET6]
        v4 = [i[4][0] for i in infos if i[0] == socket.AF_INET]
        return tuple(dict.fromkeys(v6 + v4))

    @staticmethod
    def _dns_temporary(what: str, exc: dns.exception.DNSException) -> RoutingError:
        if isinstance(exc, dns.resolver.LifetimeTimeout):
            reason = "timed out"
        elif isinstance(exc, dns.resolver.NoNameservers):
            reason = "no name server answered (SERVFAIL or refused)"
        else:
            reason = f"failed ({type(exc).__name__})"
        return RoutingError(f"{what} {reason}", temporary=True, code=451, enhanced="4.4.3")
