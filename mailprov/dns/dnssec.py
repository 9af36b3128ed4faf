"""``dnssec``: validate the chain of trust of the domain and of each MX host, from a trust anchor.

The resolver's AD bit is not trusted: every answer is asked with DO and CD (a validating resolver then
hands over the data even when it is bogus), and the signatures are checked here with dnspython's
``dns.dnssec``. The chain is walked top down (RFC 4035 5): from the trust anchor's zone (its DNSKEY
RRset must match the anchor's DS or DNSKEY records), for each name on the way to the owner, the DS RRset
at the parent (signed by the parent's keys) must match a DNSKEY of the child, whose DNSKEY RRset that key
signs; a delegation without DS, proven by a signed NSEC or NSEC3 record at the parent, makes everything
below it insecure (unsigned). Finally the RRset itself must carry a valid RRSIG by its zone's keys.

Outcomes: ``secure`` (pass), ``insecure`` (warn: unsigned), ``bogus`` (fail: which RRset and why:
expired signature, DS that matches no DNSKEY, missing RRSIG, unsupported or forbidden algorithm), or
``error`` (a query could not be completed). :class:`Validator` caches each zone's keys for the run, so
many domains under one parent walk it once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from mailprov.dns.model import CheckResult, Evidence, Status
from mailprov.dns.resolver import Answer, Source
from mailprov.errors import UsageError

# The root zone's key-signing keys as DS records (KSK-2017 and KSK-2024), as IANA publishes them at
# https://data.iana.org/root-anchors/root-anchors.xml.
ROOT_ANCHORS = """\
. IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
. IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16
"""


class Security(StrEnum):
    """A validation outcome (RFC 4033 5)."""

    SECURE = "secure"
    INSECURE = "insecure"
    BOGUS = "bogus"
    ERROR = "error"


@dataclass
class TrustAnchor:
    """The DS and/or DNSKEY records a zone's keys are trusted by."""

    zone: dns.name.Name
    ds: list[dns.rdata.Rdata] = field(default_factory=list)
    dnskeys: list[dns.rdata.Rdata] = field(default_factory=list)


def parse_trust_anchors(text: str, origin: str = "trust anchor") -> list[TrustAnchor]:
    """Trust anchors from ``NAME [TTL] [IN] DS|DNSKEY RDATA`` lines (Unbound's and ``keymgr ds`` format).

    Raises UsageError naming the bad line.
    """
    anchors: dict[dns.name.Name, TrustAnchor] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        kind = next((i for i, t in enumerate(tokens) if t.upper() in ("DS", "DNSKEY")), None)
        if kind is None or kind == 0:
            raise UsageError(f"{origin} line {number}: expected 'NAME DS ...' or 'NAME DNSKEY ...': {raw.strip()!r}")
        try:
            name = dns.name.from_text(tokens[0])
            rdtype = dns.rdatatype.from_text(tokens[kind].upper())
            rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, " ".join(tokens[kind + 1 :]))
        except (dns.exception.DNSException, ValueError) as exc:
            raise UsageError(f"{origin} line {number}: {exc}: {raw.strip()!r}", fix="write e.g. '. IN DS 20326 8 2 E06D...'") from None
        anchor = anchors.setdefault(name, TrustAnchor(name))
        (anchor.ds if rdtype == dns.rdatatype.DS else anchor.dnskeys).append(rdata)
    if not anchors:
        raise UsageError(f"{origin} holds no DS or DNSKEY record", fix="write e.g. '. IN DS 20326 8 2 E06D...'")
    return list(anchors.values())


def load_trust_anchors(path: Path | None) -> list[TrustAnchor]:
    """The anchors in ``path``, or the root zone's KSKs when None."""
    if path is None:
        return parse_trust_anchors(ROOT_ANCHORS, "root trust anchor")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read trust anchor file {path}: {exc}", fix="give a readable file of DS or DNSKEY records") from None
    return parse_trust_anchors(text, f"trust anchor file {path}")


@dataclass
class Chain:
    """Where the walk toward a name stands: the security so far, the zone reached and its validated keys."""

    security: Security
    zone: dns.name.Name
    keys: dns.rrset.RRset | None = None
    reason: str = ""
    path: list[str] = field(default_factory=list)  # the zones validated, top down
    evidence: list[Evidence] = field(default_factory=list)
    stop: bool = False  # the name below does not exist: nothing further to walk


@dataclass
class Verdict:
    """The validation of one RRset."""

    security: Security
    reason: str
    evidence: list[Evidence]
    answer: Answer | None = None
    path: list[str] = field(default_factory=list)


def _sigs(rrsets: list[dns.rrset.RRset], owner: dns.name.Name, covered: int) -> dns.rrset.RRset | None:
    """The RRSIGs in ``rrsets`` at ``owner`` that cover type ``covered``."""
    for rrset in rrsets:
        if rrset.rdtype == dns.rdatatype.RRSIG and rrset.name == owner and rrset.covers == covered:
            return rrset
    return None


def _when(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def signature_problem(
    rrset: dns.rrset.RRset, sigs: dns.rrset.RRset | None, zone: dns.name.Name, keys: dns.rrset.RRset, now: float
) -> str | None:
    """Why no RRSIG of ``rrset`` validates with ``keys`` of ``zone`` (None when one does)."""
    what = f"the {dns.rdatatype.to_text(rrset.rdtype)} RRset of {rrset.name}"
    if sigs is None or not len(sigs):
        return f"{what} has no RRSIG, but {zone} is signed"
    problems = []
    for sig in sigs:
        label = f"RRSIG by key {sig.key_tag} (algorithm {dns.dnssec.algorithm_to_text(sig.algorithm)}) of {sig.signer}"
        if sig.signer != zone:
            problems.append(f"{label}: signed by {sig.signer}, not by its zone {zone}")
            continue
        candidates = [k for k in keys if k.algorithm == sig.algorithm and dns.dnssec.key_id(k) == sig.key_tag]
        if candidates and not any(dns.dnssec.default_policy.ok_to_validate(k) for k in candidates):
            problems.append(f"{label}: algorithm {dns.dnssec.algorithm_to_text(sig.algorithm)} is not allowed for validation (RFC 8624)")
            continue
        try:
            dns.dnssec.validate_rrsig(rrset, sig, {zone: keys}, now=now)
            return None
        except dns.dnssec.UnsupportedAlgorithm as exc:
            problems.append(f"{label}: unsupported algorithm ({exc})")
        except dns.dnssec.ValidationFailure as exc:
            text = str(exc)
            if text == "expired":
                problems.append(f"{label}: signature expired {_when(sig.expiration)}")
            elif text == "not yet valid":
                problems.append(f"{label}: signature not valid before {_when(sig.inception)}")
            elif text == "unknown key":
                tags = ", ".join(str(dns.dnssec.key_id(k)) for k in keys)
                problems.append(f"{label}: no DNSKEY of {zone} has this tag and algorithm (keys: {tags})")
            else:
                problems.append(f"{label}: {text} (the signature does not match the data)")
    return f"{what}: " + "; ".join(problems)


def _nsec3_owner_hash(name: dns.name.Name, rd: dns.rdata.Rdata) -> str:
    return dns.dnssec.nsec3_hash(name, rd.salt, rd.iterations, rd.algorithm).lower()


def _type_bitmap(rd: dns.rdata.Rdata) -> set[int]:
    types = set()
    for window, bitmap in rd.windows:
        for i, byte in enumerate(bitmap):
            for bit in range(8):
                if byte & (0x80 >> bit):
                    types.add(window * 256 + i * 8 + bit)
    return types


class Validator:
    """Validates RRsets from a trust anchor through a source that can ask with DO+CD (``query_dnssec``)."""

    def __init__(self, source: Source, anchors: list[TrustAnchor], now: float | None = None) -> None:
        self.source = source
        self.anchors = anchors
        self.now = now
        self._steps: dict[tuple[dns.name.Name, dns.name.Name], asyncio.Future[Chain]] = {}

    @property
    def available(self) -> bool:
        """Whether the source can ask for signatures (a resolver; not zone files)."""
        return hasattr(self.source, "query_dnssec")

    def _now(self) -> float:
        return self.now if self.now is not None else time.time()

    async def _ask(self, name: dns.name.Name, rdtype: str) -> Answer:
        return await self.source.query_dnssec(name.to_text(), rdtype)  # type: ignore[attr-defined]

    def _memo(self, key: tuple[dns.name.Name, dns.name.Name], make) -> asyncio.Future[Chain]:  # type: ignore[no-untyped-def]
        future = self._steps.get(key)
        if future is None:
            future = asyncio.ensure_future(make())
            self._steps[key] = future
        return future

    async def _anchor_chain(self, anchor: TrustAnchor) -> Chain:
        """The anchor zone's DNSKEY RRset, validated by a key the anchor names."""
        answer = await self._ask(anchor.zone, "DNSKEY")
        evidence = [answer.evidence()]
        zone = anchor.zone
        if answer.error:
            return Chain(Security.ERROR, zone, reason=f"could not fetch the DNSKEY of {zone}: {answer.error}", evidence=evidence)
        keys = next((r for r in answer.rrsets if r.rdtype == dns.rdatatype.DNSKEY and r.name == zone), None)
        if keys is None:
            return Chain(Security.BOGUS, zone, reason=f"the trust anchor's zone {zone} serves no DNSKEY", evidence=evidence)
        if _sigs(answer.rrsets, zone, dns.rdatatype.DNSKEY) is None:
            # The root's (or the anchor zone's) keys are always signed: no signature means a resolver that drops
            # DNSSEC records, which says nothing about the domain.
            reason = f"the resolver returned the DNSKEY of {zone} without its RRSIG: it does not pass DNSSEC records (DO bit)"
            return Chain(Security.ERROR, zone, reason=reason, evidence=evidence)
        trusted = [k for k in keys if k in anchor.dnskeys] + _matching(zone, keys, anchor.ds)
        if not trusted:
            tags = ", ".join(str(d.key_tag) for d in anchor.ds) or ", ".join(str(dns.dnssec.key_id(k)) for k in anchor.dnskeys)
            return Chain(Security.BOGUS, zone, reason=f"no DNSKEY of {zone} matches the trust anchor (key tags {tags})", evidence=evidence)
        problem = _self_signed(zone, keys, trusted, answer, self._now())
        if problem:
            return Chain(Security.BOGUS, zone, reason=problem, evidence=evidence)
        return Chain(Security.SECURE, zone, keys, path=[zone.to_text()], evidence=evidence)

    async def _step(self, parent: Chain, name: dns.name.Name) -> Chain:
        """One level down: is ``name`` a signed zone cut, an unsigned one, or a name inside ``parent``'s zone."""
        answer = await self._ask(name, "DS")
        evidence = [*parent.evidence, answer.evidence()]
        now = self._now()
        if answer.error:
            return Chain(Security.ERROR, parent.zone, reason=f"could not fetch the DS of {name}: {answer.error}", evidence=evidence)
        if answer.nxdomain:
            return Chain(parent.security, parent.zone, parent.keys, path=parent.path, evidence=parent.evidence, stop=True)
        ds = next((r for r in answer.rrsets if r.rdtype == dns.rdatatype.DS and r.name == name), None)
        assert parent.keys is not None
        if ds is None:
            return self._no_ds(parent, name, answer, evidence, now)
        problem = signature_problem(ds, _sigs(answer.rrsets, name, dns.rdatatype.DS), parent.zone, parent.keys, now)
        if problem:
            return Chain(Security.BOGUS, parent.zone, reason=problem, evidence=evidence)
        supported = [d for d in ds if _supported(d)]
        if not supported:
            # RFC 4035 5.2: a DS set with no algorithm the validator supports makes the zone insecure.
            return Chain(Security.INSECURE, name, reason=f"the DS records of {name} use only unsupported algorithms", evidence=evidence)
        key_answer = await self._ask(name, "DNSKEY")
        evidence.append(key_answer.evidence())
        if key_answer.error:
            return Chain(Security.ERROR, parent.zone, reason=f"could not fetch the DNSKEY of {name}: {key_answer.error}", evidence=evidence)
        keys = next((r for r in key_answer.rrsets if r.rdtype == dns.rdatatype.DNSKEY and r.name == name), None)
        if keys is None:
            return Chain(
                Security.BOGUS, name, reason=f"{parent.zone} publishes a DS for {name}, but {name} serves no DNSKEY", evidence=evidence
            )
        trusted = _matching(name, keys, supported)
        if not trusted:
            ds_text = ", ".join(f"key tag {d.key_tag} algorithm {d.algorithm} digest type {d.digest_type}" for d in supported)
            tags = ", ".join(f"{dns.dnssec.key_id(k)} (flags {k.flags})" for k in keys)
            return Chain(
                Security.BOGUS,
                name,
                reason=f"the DS at {parent.zone} ({ds_text}) matches no DNSKEY of {name} (its keys: {tags})",
                evidence=evidence,
            )
        problem = _self_signed(name, keys, trusted, key_answer, now)
        if problem:
            return Chain(Security.BOGUS, name, reason=problem, evidence=evidence)
        return Chain(Security.SECURE, name, keys, path=[*parent.path, name.to_text()], evidence=evidence)

    def _no_ds(self, parent: Chain, name: dns.name.Name, answer: Answer, evidence: list[Evidence], now: float) -> Chain:
        """No DS at ``name``: an unsigned delegation if a signed NSEC/NSEC3 says so, else a name inside the zone."""
        assert parent.keys is not None
        for rrset in answer.authority:
            if (rrset.rdtype == dns.rdatatype.NSEC and rrset.name == name) or (
                rrset.rdtype == dns.rdatatype.NSEC3 and rrset.name.labels[0].decode().lower() == _nsec3_owner_hash(name, rrset[0])
            ):
                bitmap = _type_bitmap(rrset[0])
            else:
                continue
            if dns.rdatatype.NS not in bitmap or dns.rdatatype.SOA in bitmap:
                break  # not a delegation: a name inside the parent's zone
            problem = signature_problem(rrset, _sigs(answer.authority, rrset.name, rrset.rdtype), parent.zone, parent.keys, now)
            if problem:
                return Chain(Security.BOGUS, parent.zone, reason=f"the proof that {name} has no DS is bogus: {problem}", evidence=evidence)
            return Chain(
                Security.INSECURE,
                name,
                reason=f"{name} is delegated from {parent.zone} without a DS record (proven by {dns.rdatatype.to_text(rrset.rdtype)}): "
                f"it is not signed, or its DS was never published",
                path=parent.path,
                evidence=evidence,
            )
        return Chain(parent.security, parent.zone, parent.keys, path=parent.path, evidence=parent.evidence)

    async def chain(self, owner: dns.name.Name) -> Chain:
        """The zone holding ``owner`` and its validated keys (or why the chain breaks)."""
        anchors = [a for a in self.anchors if owner.is_subdomain(a.zone)]
        if not anchors:
            return Chain(Security.INSECURE, dns.name.root, reason=f"no trust anchor covers {owner}")
        anchor = max(anchors, key=lambda a: len(a.zone.labels))
        chain = await self._memo((anchor.zone, anchor.zone), lambda: self._anchor_chain(anchor))
        for depth in range(len(anchor.zone.labels) + 1, len(owner.labels) + 1):
            if chain.security != Security.SECURE or chain.stop:
                break
            name = owner.split(depth)[1]
            parent = chain
            chain = await self._memo((parent.zone, name), lambda p=parent, n=name: self._step(p, n))
        return chain

    async def validate(self, name: str, rdtype: str) -> Verdict:
        """Validate the ``rdtype`` RRset at ``name`` (or its signed absence)."""
        owner = dns.name.from_text(name)
        answer = await self._ask(owner, rdtype)
        # The signer name of the answer's RRSIGs says which zone to walk to: the names between that zone's
        # apex and the owner lie inside it, so no DS is asked for them. An unsigned answer walks to the owner
        # itself, which finds the unsigned delegation (insecure) or the missing signature (bogus).
        signer = _signer(answer, owner)
        chain = await self.chain(signer if signer is not None and owner.is_subdomain(signer) else owner)
        evidence = [*chain.evidence, answer.evidence()]
        if chain.security == Security.INSECURE:
            return Verdict(chain.security, chain.reason, evidence, answer if not answer.error else None, chain.path)
        if chain.security != Security.SECURE:
            return Verdict(chain.security, chain.reason, list(chain.evidence), path=chain.path)
        if answer.error:
            return Verdict(Security.ERROR, f"could not fetch {name} {rdtype}: {answer.error}", evidence, answer, chain.path)
        assert chain.keys is not None
        now = self._now()
        data = [r for r in answer.rrsets if r.rdtype != dns.rdatatype.RRSIG]
        if data:
            for rrset in data:
                if not rrset.name.is_subdomain(chain.zone) or rrset.name != owner:
                    continue  # the target of an alias lies in another zone: validated on its own
                problem = signature_problem(rrset, _sigs(answer.rrsets, rrset.name, rrset.rdtype), chain.zone, chain.keys, now)
                if problem:
                    return Verdict(Security.BOGUS, problem, evidence, answer, chain.path)
            return Verdict(Security.SECURE, f"signed by {chain.zone}", evidence, answer, chain.path)
        # A negative answer: the SOA and the NSEC/NSEC3 records that prove it must be signed.
        proofs = [r for r in answer.authority if r.rdtype in (dns.rdatatype.SOA, dns.rdatatype.NSEC, dns.rdatatype.NSEC3)]
        if not proofs:
            return Verdict(
                Security.BOGUS, f"the negative answer for {name} {rdtype} carries no signed proof, but {chain.zone} is signed", evidence
            )
        for rrset in proofs:
            problem = signature_problem(rrset, _sigs(answer.authority, rrset.name, rrset.rdtype), chain.zone, chain.keys, now)
            if problem:
                return Verdict(Security.BOGUS, f"the proof that {name} {rdtype} does not exist: {problem}", evidence, answer, chain.path)
        return Verdict(Security.SECURE, f"absence signed by {chain.zone}", evidence, answer, chain.path)


def _signer(answer: Answer, owner: dns.name.Name) -> dns.name.Name | None:
    """The signer name of the RRSIGs at ``owner`` in the answer, or in the authority section of a negative answer."""
    for rrset in answer.rrsets if answer.rrsets else answer.authority:
        if rrset.rdtype == dns.rdatatype.RRSIG and (rrset.name == owner or not answer.rrsets) and len(rrset):
            return rrset[0].signer
    return None


def _supported(ds: dns.rdata.Rdata) -> bool:
    try:
        dns.dnssec.get_algorithm_cls(ds.algorithm)
    except dns.dnssec.UnsupportedAlgorithm:
        return False
    return ds.digest_type in (1, 2, 4)


def _matching(zone: dns.name.Name, keys: dns.rrset.RRset, ds_records: list[dns.rdata.Rdata]) -> list[dns.rdata.Rdata]:
    """The DNSKEYs that a DS record names (same tag, algorithm and digest)."""
    found = []
    for key in keys:
        for ds in ds_records:
            if ds.key_tag != dns.dnssec.key_id(key) or ds.algorithm != key.algorithm:
                continue
            try:
                if dns.dnssec.make_ds(zone, key, ds.digest_type) == ds:
                    found.append(key)
                    break
            except (dns.dnssec.UnsupportedAlgorithm, ValueError):
                continue
    return found


def _self_signed(zone: dns.name.Name, keys: dns.rrset.RRset, trusted: list[dns.rdata.Rdata], answer: Answer, now: float) -> str | None:
    """Why the DNSKEY RRset is not signed by one of the ``trusted`` keys (None when it is)."""
    anchor_keys = dns.rrset.from_rdata_list(zone, keys.ttl, trusted)
    return signature_problem(keys, _sigs(answer.rrsets, zone, dns.rdatatype.DNSKEY), zone, anchor_keys, now)


_FIXES = {
    Security.INSECURE: "sign the zone (Knot: 'dnssec-signing: on'; BIND: 'dnssec-policy default') and publish its DS record at the "
    "parent (your registrar); then DANE and validating senders protect your mail",
    Security.BOGUS: "validating resolvers refuse these answers, so mail to the domain fails: fix the signing (re-sign, renew "
    "signatures, or publish the DS of the current key at the parent, removing the stale one)",
}


def verdict_result(check_id: str, subject: str, what: str, verdict: Verdict) -> CheckResult:
    """A :class:`Verdict` as a check result: secure pass, insecure warn, bogus fail, error error."""
    if verdict.security == Security.SECURE:
        path = " -> ".join(verdict.path)
        return CheckResult(check_id, Status.PASS, subject, f"{what}: signed and valid ({path})", records=verdict.evidence)
    if verdict.security == Security.INSECURE:
        return CheckResult(
            check_id, Status.WARN, subject, f"{what}: not signed: {verdict.reason}", _FIXES[Security.INSECURE], verdict.evidence
        )
    if verdict.security == Security.BOGUS:
        return CheckResult(check_id, Status.FAIL, subject, f"{what}: bogus: {verdict.reason}", _FIXES[Security.BOGUS], verdict.evidence)
    return CheckResult(
        check_id,
        Status.ERROR,
        subject,
        f"{what}: could not complete: {verdict.reason}",
        "check that the resolver answers queries with DO and CD set (DNSSEC), or raise --timeout, then run again",
        verdict.evidence,
    )


async def check_dnssec(validator: Validator, domain: str, mx_hosts: list[str]) -> list[CheckResult]:
    """The ``dnssec`` results: the domain's MX RRset, and each MX host's A and AAAA RRsets (or their signed absence)."""
    if not validator.available:
        return [CheckResult("dnssec", Status.SKIP, domain, "skipped: DNSSEC needs a resolver (--resolver), not zone files")]
    fqdn = domain.rstrip(".") + "."
    hosts = [h for h in mx_hosts if h.rstrip(".") + "." != fqdn]
    # Both address types: a DANE sender looks up A and AAAA with DNSSEC, and a bogus AAAA (or a bogus proof
    # that there is none) fails its lookup of the host as surely as a bogus A.
    verdicts = await asyncio.gather(validator.validate(fqdn, "MX"), *(validator.validate(h, t) for h in hosts for t in ("A", "AAAA")))
    results = [verdict_result("dnssec", domain, f"{fqdn} MX", verdicts[0])]
    for i, host in enumerate(hosts):
        name = host.rstrip(".")
        results.append(verdict_result("dnssec", name, *_addresses_verdict(name + ".", verdicts[1 + 2 * i], verdicts[2 + 2 * i])))
    return results


_SEVERITY = {Security.SECURE: 0, Security.INSECURE: 1, Security.ERROR: 2, Security.BOGUS: 3}


def _addresses_verdict(host: str, a: Verdict, aaaa: Verdict) -> tuple[str, Verdict]:
    """One verdict for a host's A and AAAA RRsets: the worse of the two, with the evidence of both."""
    seen = {id(e) for e in a.evidence}
    evidence = [*a.evidence, *(e for e in aaaa.evidence if id(e) not in seen)]
    if a.security == aaaa.security:
        absent = [t for t, v in (("A", a), ("AAAA", aaaa)) if v.answer is not None and not v.answer.records]
        what = f"{host} A and AAAA"
        if a.security == Security.SECURE and len(absent) == 1:
            present = "AAAA" if absent == ["A"] else "A"
            what = f"{host} {present} (and the absence of {absent[0]})"
        return what, Verdict(a.security, a.reason, evidence, a.answer, a.path)
    rdtype, worse = ("AAAA", aaaa) if _SEVERITY[aaaa.security] > _SEVERITY[a.security] else ("A", a)
    return f"{host} {rdtype}", Verdict(worse.security, worse.reason, evidence, worse.answer, worse.path)
