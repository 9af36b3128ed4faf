"""``spf``: exactly one valid SPF record (RFC 7208), within the 10-lookup limit, and never ``+all``.

Query the TXT records at the domain, keep those starting ``v=spf1``; parse the terms (pure, see
:func:`parse_spf`); count the DNS-querying terms (include, a, mx, ptr, exists, redirect: RFC 7208 4.6.4)
recursively through ``include:`` and ``redirect=``; check the result. A receiver that meets more than 10
such terms, two SPF records, or a syntax error returns permerror, which DMARC treats as an SPF failure.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass, field

from mailprov.dns.model import CheckResult, Evidence, Status
from mailprov.dns.resolver import Source

LOOKUP_LIMIT = 10
VOID_LIMIT = 2
QUERYING = {"include", "a", "mx", "ptr", "exists", "redirect"}
MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_MECH_RE = re.compile(r"^([+\-~?]?)([A-Za-z0-9]+)(?::([^/]*))?(?:/(\d+))?(?://(\d+))?$")
_MOD_RE = re.compile(r"^([A-Za-z][A-Za-z0-9._-]*)=(.*)$")
_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
MAX_DEPTH = 10
MAX_FETCHES = 40


@dataclass
class Term:
    """One SPF term: a mechanism (with qualifier) or a modifier (``name=value``)."""

    text: str
    name: str
    qualifier: str = "+"
    value: str = ""
    modifier: bool = False


@dataclass
class SPFRecord:
    """A parsed SPF record: its terms and the syntax errors found."""

    terms: list[Term] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def querying(self) -> list[Term]:
        """Terms that cost a DNS lookup (RFC 7208 4.6.4); ``redirect`` is ignored when ``all`` is present."""
        has_all = any(t.name == "all" for t in self.terms)
        return [t for t in self.terms if t.name in QUERYING and not (t.name == "redirect" and has_all)]

    def targets(self) -> list[Term]:
        """``include:`` and (effective) ``redirect=`` terms, whose records count too."""
        return [t for t in self.querying() if t.name in ("include", "redirect")]


def is_spf(text: str) -> bool:
    """True for a TXT string that is an SPF record (``v=spf1`` then a space or the end)."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def _valid_domain_spec(spec: str) -> bool:
    if "%" in spec:
        return bool(re.fullmatch(r"([^%]|%%|%_|%-|%\{[slodiphcrtv]\d*r?[-.+,/_=]*\})+", spec))
    labels = spec.rstrip(".").split(".")
    try:
        ipaddress.ip_address(spec)
        return False
    except ValueError:
        pass
    return len(labels) >= 2 and all(_LABEL_RE.match(label) for label in labels)


def parse_spf(text: str) -> SPFRecord:
    """Parse an SPF record's text into terms, collecting syntax errors (RFC 7208 section 4.6 and 5, 6)."""
    record = SPFRecord()
    parts = text.split()
    if not parts or parts[0].lower() != "v=spf1":
        record.errors.append("the record does not start with 'v=spf1'")
        return record
    seen_modifiers: set[str] = set()
    for part in parts[1:]:
        mod = _MOD_RE.match(part)
        mech = _MECH_RE.match(part)
        if mod and not (mech and mech.group(2).lower() in MECHANISMS and ":" in part and part.index(":") < part.index("=")):
            name, value = mod.group(1).lower(), mod.group(2)
            if name in ("redirect", "exp"):
                if name in seen_modifiers:
                    record.errors.append(f"'{name}=' appears more than once")
                if not _valid_domain_spec(value):
                    record.errors.append(f"'{part}': '{value}' is not a domain name")
            seen_modifiers.add(name)
            record.terms.append(Term(part, name, value=value, modifier=True))
            continue
        if not mech:
            record.errors.append(f"'{part}' is not a valid SPF term")
            continue
        qualifier, name, value, cidr4, cidr6 = mech.groups()
        name = name.lower()
        value = value or ""
        if name not in MECHANISMS:
            record.errors.append(f"'{part}': unknown mechanism '{name}'")
            continue
        problem = _check_mechanism(name, value, cidr4, cidr6, ":" in part)
        if problem:
            record.errors.append(f"'{part}': {problem}")
        record.terms.append(Term(part, name, qualifier or "+", value))
    return record


def _check_mechanism(name: str, value: str, cidr4: str | None, cidr6: str | None, has_colon: bool) -> str | None:
    if name == "all":
        return "'all' takes no argument" if has_colon or cidr4 or cidr6 else None
    if name in ("include", "exists"):
        if not value:
            return f"'{name}' needs a domain ({name}:example.org)"
        if cidr4 or cidr6:
            return f"'{name}' takes no prefix length"
    if name in ("ip4", "ip6"):
        version = 4 if name == "ip4" else 6
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            return f"'{value}' is not an IPv{version} address"
        if addr.version != version:
            return f"'{value}' is not an IPv{version} address"
        if cidr6 is not None or (cidr4 is not None and int(cidr4) > (32 if version == 4 else 128)):
            return "bad prefix length"
        return None
    if has_colon and not value:
        return "empty domain after ':'"
    if value and not _valid_domain_spec(value):
        return f"'{value}' is not a domain name"
    if name in ("a", "mx"):
        if cidr4 is not None and int(cidr4) > 32:
            return "IPv4 prefix length over 32"
        if cidr6 is not None and int(cidr6) > 128:
            return "IPv6 prefix length over 128"
    elif cidr4 or cidr6:
        return f"'{name}' takes no prefix length"
    return None


@dataclass
class _Count:
    lookups: int = 0
    fetches: int = 0
    problems: list[str] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    incomplete: str | None = None
    voids: list[str] = field(default_factory=list)  # terms whose lookup found nothing (RFC 7208 4.6.4)


async def _fetch(source: Source, domain: str):  # type: ignore[no-untyped-def]
    answer = await source.query(domain, "TXT")
    return answer, [t for t in answer.texts() if is_spf(t)]


async def _count(source: Source, domain: str, record: SPFRecord, count: _Count, path: list[str]) -> None:
    """Add ``record``'s DNS-querying terms to ``count``, descending into includes and redirects."""
    count.lookups += len(record.querying())
    await _count_voids(source, domain, record, count)
    for term in record.targets():
        target = term.value.rstrip(".").lower()
        if "%" in target:
            count.problems.append(f"'{term.text}' uses macros; its record was not followed")
            continue
        if target in path:
            count.problems.append(f"'{term.text}' in {domain} loops back to {target}")
            continue
        # Follow past the limit (to report the full count), but bounded: a loop of includes costs nothing.
        if len(path) >= MAX_DEPTH or count.fetches >= MAX_FETCHES:
            count.problems.append(f"includes nest deeper than {MAX_DEPTH} or number over {MAX_FETCHES}; stopped counting")
            return
        count.fetches += 1
        answer, spfs = await _fetch(source, target)
        count.evidence.append(answer.evidence())
        if answer.error:
            count.incomplete = count.incomplete or answer.error
            continue
        if not answer.records:
            count.voids.append(f"'{term.text}' in {domain}")
        if len(spfs) != 1:
            what = "no SPF record" if not spfs else f"{len(spfs)} SPF records"
            count.problems.append(f"'{term.text}' in {domain} points at {target}, which has {what} (permerror)")
            continue
        inner = parse_spf(spfs[0])
        for error in inner.errors:
            count.problems.append(f"{target}: {error}")
        await _count(source, target, inner, count, [*path, target])


async def _count_voids(source: Source, domain: str, record: SPFRecord, count: _Count) -> None:
    """Ask the a:/mx:/exists: targets named explicitly; each that finds nothing is a void lookup (RFC 7208 4.6.4)."""
    terms = [t for t in record.querying() if t.name in ("a", "mx", "exists") and t.value and "%" not in t.value]
    rdtype = {"a": "A", "mx": "MX", "exists": "A"}
    answers = await asyncio.gather(*(source.query(t.value.rstrip(".") + ".", rdtype[t.name]) for t in terms))
    for term, answer in zip(terms, answers, strict=True):
        if answer.error:
            continue
        if not answer.records and not (term.name == "a" and await _has_aaaa(source, term.value)):
            count.voids.append(f"'{term.text}' in {domain}")
            count.evidence.append(answer.evidence())


async def _has_aaaa(source: Source, name: str) -> bool:
    return bool((await source.query(name.rstrip(".") + ".", "AAAA")).records)


async def check_spf(source: Source, domain: str) -> CheckResult:
    """The ``spf`` check for a domain."""
    fqdn = domain.rstrip(".") + "."
    answer, spfs = await _fetch(source, fqdn)
    if answer.error:
        return answer.as_error("spf", domain)
    evidence = [answer.evidence()]
    if not spfs:
        return CheckResult(
            "spf",
            Status.WARN,
            domain,
            "no SPF record: receivers cannot tell which hosts may send for the domain",
            fix=f"publish '{fqdn} TXT \"v=spf1 mx -all\"' (or list your sending hosts with ip4:/ip6:)",
            records=evidence,
        )
    if len(spfs) > 1:
        return CheckResult(
            "spf",
            Status.FAIL,
            domain,
            f"{len(spfs)} SPF records: receivers return permerror (RFC 7208 3.2)",
            fix="merge them into one 'v=spf1 ...' TXT record",
            records=evidence,
        )
    record = parse_spf(spfs[0])
    if record.errors:
        return CheckResult(
            "spf",
            Status.FAIL,
            domain,
            "SPF syntax error: " + "; ".join(record.errors),
            fix="correct the record (RFC 7208 section 5); e.g. 'v=spf1 mx -all'",
            records=evidence,
        )
    count = _Count()
    await _count(source, fqdn.rstrip(".").lower(), record, count, [fqdn.rstrip(".").lower()])
    evidence += count.evidence
    alls = [t for t in record.terms if t.name == "all"]
    if alls and alls[0].qualifier == "+":
        return CheckResult(
            "spf",
            Status.FAIL,
            domain,
            f"'{alls[0].text}' authorises every host on the internet to send as {domain}",
            fix="end the record with '-all' (or '~all' while testing)",
            records=evidence,
        )
    if count.lookups > LOOKUP_LIMIT:
        return CheckResult(
            "spf",
            Status.FAIL,
            domain,
            f"{count.lookups} DNS-querying terms counted through includes; RFC 7208 4.6.4 allows {LOOKUP_LIMIT} (permerror)",
            fix="replace include:/a/mx terms with ip4:/ip6: ranges, or drop includes you do not need",
            records=evidence,
        )
    if len(count.voids) > VOID_LIMIT:
        return CheckResult(
            "spf",
            Status.FAIL,
            domain,
            f"{len(count.voids)} void lookups ({', '.join(count.voids)}): RFC 7208 4.6.4 allows {VOID_LIMIT}, receivers return permerror",
            fix="remove the terms whose names do not exist or have no records",
            records=evidence,
        )
    if count.problems:
        return CheckResult("spf", Status.FAIL, domain, "; ".join(count.problems), fix="correct the included records", records=evidence)
    if count.incomplete:
        return CheckResult(
            "spf",
            Status.ERROR,
            domain,
            f"could not follow every include: {count.incomplete}",
            fix="check that the resolver answers, then run again",
            records=evidence,
        )
    if not alls and not any(t.name == "redirect" for t in record.terms):
        return CheckResult(
            "spf",
            Status.WARN,
            domain,
            f"the record ends without 'all': other hosts get a neutral result ({count.lookups} lookups)",
            fix="end the record with '-all'",
            records=evidence,
        )
    ptrs = [t.text for t in record.terms if t.name == "ptr"]
    if ptrs:
        return CheckResult(
            "spf",
            Status.WARN,
            domain,
            f"'{ptrs[0]}': the ptr mechanism is slow and unreliable; RFC 7208 5.5 says not to use it (some receivers ignore it)",
            fix="replace it with ip4:/ip6: ranges or a: names",
            records=evidence,
        )
    if alls and alls[0].qualifier == "?":
        return CheckResult(
            "spf",
            Status.WARN,
            domain,
            "'?all' gives other hosts a neutral result",
            fix="end the record with '-all' or '~all'",
            records=evidence,
        )
    if count.voids:
        return CheckResult(
            "spf",
            Status.WARN,
            domain,
            f"{', '.join(count.voids)} found nothing (a void lookup; RFC 7208 4.6.4 allows {VOID_LIMIT} before permerror)",
            fix="remove the term, or publish the record it names",
            records=evidence,
        )
    return CheckResult("spf", Status.PASS, domain, f"'{spfs[0]}' ({count.lookups}/{LOOKUP_LIMIT} lookups)", records=evidence)


@dataclass
class _Eval:
    lookups: int = 0
    voids: int = 0
    matched: str = ""
    notes: list[str] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)


class _TempError(Exception):
    pass


class _PermError(Exception):
    pass


async def _addresses(source: Source, name: str, ip, state: _Eval, *, void: bool) -> list:  # type: ignore[no-untyped-def]
    """The addresses of ``name`` in ``ip``'s family (RFC 7208 5.3: A for IPv4, AAAA for IPv6)."""
    answer = await source.query(name, "A" if ip.version == 4 else "AAAA")
    state.evidence.append(answer.evidence())
    if answer.error:
        raise _TempError(answer.error)
    if void and not answer.records:
        _void(state, name)
    return [ipaddress.ip_address(rd.address) for rd in answer.records]


def _void(state: _Eval, name: str) -> None:
    """Count a lookup that found nothing; more than two is a permerror (RFC 7208 4.6.4)."""
    state.voids += 1
    if state.voids > VOID_LIMIT:
        raise _PermError(f"more than {VOID_LIMIT} lookups found nothing (the last: {name}); RFC 7208 4.6.4")


def _in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, address, term: Term) -> bool:  # type: ignore[no-untyped-def]
    if ip.version != address.version:
        return False
    m = _MECH_RE.match(term.text)
    cidr = (m.group(4) if ip.version == 4 else m.group(5)) if m else None
    prefix = int(cidr) if cidr else (32 if ip.version == 4 else 128)
    return ip in ipaddress.ip_network(f"{address}/{prefix}", strict=False)


async def _matches(source: Source, domain: str, term: Term, ip, state: _Eval, depth: int) -> bool:  # type: ignore[no-untyped-def]
    """Whether one mechanism matches ``ip`` (RFC 7208 5); ptr and macros are not evaluated (no match, noted)."""
    if term.name == "all":
        return True
    if term.name in ("ip4", "ip6"):
        network = ipaddress.ip_network(
            f"{term.value}/{_MECH_RE.match(term.text).group(4) or (32 if term.name == 'ip4' else 128)}", strict=False
        )  # type: ignore[union-attr]
        return ip.version == network.version and ip in network
    target = (term.value or domain).rstrip(".")
    if "%" in target:
        state.notes.append(f"'{term.text}' uses macros and was not evaluated")
        return False
    state.lookups += 1
    if state.lookups > LOOKUP_LIMIT:
        raise _PermError(f"more than {LOOKUP_LIMIT} DNS-querying terms")
    if term.name == "ptr":
        state.notes.append(f"'{term.text}' (deprecated, RFC 7208 5.5) was not evaluated")
        return False
    if term.name == "a":
        return any(_in(ip, a, term) for a in await _addresses(source, target + ".", ip, state, void=True))
    if term.name == "exists":
        answer = await source.query(target + ".", "A")
        state.evidence.append(answer.evidence())
        if answer.error:
            raise _TempError(answer.error)
        if not answer.records:
            _void(state, target)
        return bool(answer.records)
    if term.name == "mx":
        answer = await source.query(target + ".", "MX")
        state.evidence.append(answer.evidence())
        if answer.error:
            raise _TempError(answer.error)
        if not answer.records:
            _void(state, target)
        for rd in answer.records[:10]:
            exchange = rd.exchange
            if exchange != "." and any(_in(ip, a, term) for a in await _addresses(source, exchange, ip, state, void=False)):
                return True
        return False
    if term.name == "include":
        result = await _evaluate(source, target, ip, state, depth + 1)
        if result in ("temperror",):
            raise _TempError(f"include:{target} gave temperror")
        if result in ("permerror", "none"):
            raise _PermError(f"include:{target} gave {result}")
        return result == "pass"
    return False


async def _evaluate(source: Source, domain: str, ip, state: _Eval, depth: int = 0) -> str:  # type: ignore[no-untyped-def]
    """A reduced check_host() (RFC 7208 4): pass, fail, softfail, neutral, none, permerror or temperror."""
    if depth > MAX_DEPTH:
        raise _PermError("includes nest too deep")
    answer, spfs = await _fetch(source, domain + ".")
    state.evidence.append(answer.evidence())
    if answer.error:
        raise _TempError(answer.error)
    if not spfs:
        return "none"
    record = parse_spf(spfs[0])
    if len(spfs) > 1 or record.errors:
        raise _PermError(f"the SPF record of {domain} is invalid")
    for term in record.terms:
        if term.modifier:
            continue
        if await _matches(source, domain, term, ip, state, depth):
            state.matched = state.matched or f"{term.text} in {domain}"
            return {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}[term.qualifier]
    redirect = next((t for t in record.terms if t.name == "redirect"), None)
    if redirect is not None and not any(t.name == "all" for t in record.terms):
        state.lookups += 1
        result = await _evaluate(source, redirect.value.rstrip("."), ip, state, depth + 1)
        if result == "none":
            raise _PermError(f"redirect={redirect.value} has no SPF record")
        return result
    return "neutral"


async def check_spf_sender(source: Source, domain: str, address: str) -> CheckResult:
    """``spf.sender``: does the domain's SPF record authorise ``address`` (the provisioned host) to send?"""
    ip = ipaddress.ip_address(address)
    state = _Eval()
    domain = domain.rstrip(".").lower()
    try:
        result = await _evaluate(source, domain, ip, state)
    except _TempError as exc:
        return CheckResult(
            "spf.sender",
            Status.ERROR,
            address,
            f"could not evaluate SPF: {exc}",
            fix="check the resolver, then run again",
            records=state.evidence,
        )
    except _PermError as exc:
        return CheckResult(
            "spf.sender",
            Status.FAIL,
            address,
            f"SPF permerror for {domain}: {exc}",
            fix="correct the SPF record (see the spf check)",
            records=state.evidence,
        )
    notes = f" ({'; '.join(state.notes)})" if state.notes else ""
    term = "ip4" if ip.version == 4 else "ip6"
    if result == "pass":
        return CheckResult(
            "spf.sender", Status.PASS, address, f"SPF of {domain} authorises {ip} ('{state.matched}')", records=state.evidence
        )
    if result in ("fail", "softfail"):
        return CheckResult(
            "spf.sender",
            Status.FAIL,
            address,
            f"SPF of {domain} gives {result} for {ip} ('{state.matched}'): its mail fails SPF{notes}",
            fix=f"add '{term}:{ip}' before the 'all' of {domain}'s SPF record (or 'mx' if the host is the MX)",
            records=state.evidence,
        )
    return CheckResult(
        "spf.sender",
        Status.WARN,
        address,
        f"SPF of {domain} gives {result} for {ip}: receivers cannot tell it is authorised{notes}",
        fix=f"publish an SPF record naming the host, e.g. 'v=spf1 mx {term}:{ip} -all'",
        records=state.evidence,
    )
