"""``caa`` (with ``--tls``, informational): which certificate authorities may issue for each MX host (RFC 8659).

Query CAA at the MX host name, then at each parent up to (not including) the top-level domain, as a CA
does (RFC 8659 3: the closest CAA RRset applies). Parse ``issue`` / ``issuewild`` / ``iodef`` tags. The
result is a pass naming the allowed CAs (or "any CA" when there is none); a CAA set that allows no CA
at all (``issue ";"``) is a warning, since the MX certificate can then not be renewed.
"""

from __future__ import annotations

from mailprov.dns.model import CheckResult, Status
from mailprov.dns.resolver import Source


async def check_caa(source: Source, host: str) -> CheckResult:
    """The ``caa`` result of one MX host."""
    name = host.rstrip(".")
    labels = name.split(".")
    evidence = []
    for start in range(len(labels) - 1):
        owner = ".".join(labels[start:]) + "."
        answer = await source.query(owner, "CAA")
        evidence.append(answer.evidence())
        if answer.error:
            return answer.as_error("caa", name)
        records = answer.records
        if not records:
            continue
        issuers = [rd.value.decode("ascii", "replace").split(";")[0].strip() for rd in records if rd.tag == b"issue"]
        where = "" if owner == name + "." else f" (inherited from {owner})"
        if issuers and not any(issuers):
            return CheckResult(
                "caa",
                Status.WARN,
                name,
                f"CAA at {owner} allows no CA to issue{where}: the MX certificate cannot be renewed",
                fix=f"add '{owner} CAA 0 issue \"letsencrypt.org\"' (or your CA)",
                records=evidence,
            )
        allowed = ", ".join(i for i in issuers if i) or "no 'issue' tag: any CA"
        return CheckResult("caa", Status.PASS, name, f"CAA{where}: certificates for {name} may come from {allowed}", records=evidence)
    return CheckResult(
        "caa", Status.PASS, name, f"no CAA record for {name} or its parents: any CA may issue (informational)", records=evidence
    )
