"""The result model every check (DNS here, ``mailprov probe`` elsewhere) reports in.

A run is a :class:`Report` of :class:`DomainReport` groups, each a list of :class:`CheckResult`. A result
names its stable check id, its status, the subject it is about (a domain, a host or an address), a one-line
summary, the fix in words when it is short of a pass, and the evidence: the queries asked, the server that
answered and the answer. Checks return results; they never raise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from mailprov.errors import EXIT_FAIL, EXIT_INCOMPLETE, EXIT_OK


class Status(StrEnum):
    """Outcome of one check. ``error`` means the check could not be completed (timeout, SERVFAIL)."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    ERROR = "error"
    SKIP = "skip"


# Worst first wins when results are folded into a verdict; skip counts as a pass.
_RANK = {Status.PASS: 0, Status.SKIP: 0, Status.WARN: 1, Status.ERROR: 2, Status.FAIL: 3}


def worst(statuses: list[Status]) -> Status:
    """The verdict of several statuses: fail over error over warn over pass (skip alone is pass)."""
    verdict = Status.PASS
    for status in statuses:
        if _RANK[status] > _RANK[verdict]:
            verdict = status
    return verdict


@dataclass
class Evidence:
    """One query and its answer: what was asked, of which server, and what came back."""

    query: str  # "alpha.test. MX"
    server: str  # "127.0.2.1:53", "zone file examples/zones/alpha.test.zone"
    rcode: str  # NOERROR, NXDOMAIN, SERVFAIL, TIMEOUT, REFUSED, ...
    answer: list[str] = field(default_factory=list)  # records in presentation format
    ttl: int | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {"query": self.query, "server": self.server, "rcode": self.rcode, "answer": list(self.answer), "ttl": self.ttl}


@dataclass
class CheckResult:
    """One check's outcome about one subject."""

    id: str
    status: Status
    subject: str
    summary: str
    fix: str = ""
    records: list[Evidence] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict (the ``checks[]`` element of the JSON report)."""
        return {
            "id": self.id,
            "status": str(self.status),
            "subject": self.subject,
            "summary": self.summary,
            "fix": self.fix,
            "records": [e.to_dict() for e in self.records],
        }


@dataclass
class DomainReport:
    """All results about one domain (or, for other reports, one target)."""

    domain: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def verdict(self) -> Status:
        """Worst status of the checks."""
        return worst([c.status for c in self.checks])

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {"domain": self.domain, "verdict": str(self.verdict), "checks": [c.to_dict() for c in self.checks]}


@dataclass
class Report:
    """A whole run: one group per domain."""

    domains: list[DomainReport] = field(default_factory=list)

    @property
    def verdict(self) -> Status:
        """Worst status over every domain."""
        return worst([d.verdict for d in self.domains])

    def statuses(self) -> list[Status]:
        """Every check's status."""
        return [c.status for d in self.domains for c in d.checks]

    def exit_code(self, strict: bool = False) -> int:
        """0 pass (warnings pass unless strict), 1 a fail (or a warning under strict), 3 incomplete.

        A definite failure outranks an incomplete check: the domain is known not to be ready either way.
        """
        statuses = set(self.statuses())
        if Status.FAIL in statuses or (strict and Status.WARN in statuses):
            return EXIT_FAIL
        if Status.ERROR in statuses:
            return EXIT_INCOMPLETE
        return EXIT_OK

    def to_dict(self) -> dict:
        """The JSON report: ``{"domains": [...], "verdict": ...}``."""
        return {"domains": [d.to_dict() for d in self.domains], "verdict": str(self.verdict)}
