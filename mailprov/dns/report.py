"""Render a :class:`~mailprov.dns.model.Report` as a table, JSON or JUnit XML (rendering only, no checking).

``mailprov check`` and ``mailprov probe`` print their reports through :func:`render`. The JSON shape is
``{"domains": [{"domain", "verdict", "checks": [{"id", "status", "subject", "summary", "fix", "records"}]}],
"verdict"}``; the JUnit XML has one ``<testsuite>`` per domain and one ``<testcase>`` per check
(fail → ``<failure>``, error → ``<error>``, skip → ``<skipped>``, warn → passes, with the warning in
``<system-out>``; under ``strict`` a warning is a ``<failure>``).
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from typing import TextIO

from mailprov.dns.model import Report, Status

FORMATS = ("table", "json", "junit")
_COLOURS = {Status.PASS: "32", Status.WARN: "33", Status.FAIL: "31", Status.ERROR: "35", Status.SKIP: "2"}


def use_colour(stream: TextIO | None = None) -> bool:
    """Colour when writing to a terminal, unless NO_COLOR is set (https://no-color.org)."""
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def render_json(report: Report) -> str:
    """The report as one JSON object."""
    return json.dumps(report.to_dict(), indent=2)


def render_table(report: Report, *, colour: bool = False, verbose: bool = False) -> str:
    """A table readable at a glance: per domain, one line per check, the fix indented below anything short of pass."""

    def paint(status: Status, text: str) -> str:
        return f"\x1b[{_COLOURS[status]}m{text}\x1b[0m" if colour else text

    lines: list[str] = []
    for domain in report.domains:
        lines.append(f"{domain.domain}: {paint(domain.verdict, domain.verdict.upper())}")
        width_id = max((len(c.id) for c in domain.checks), default=6)
        width_subject = min(max((len(c.subject) for c in domain.checks), default=7), 40)
        for check in domain.checks:
            label = paint(check.status, f"{check.status.upper():<5}")
            lines.append(f"  {label} {check.id:<{width_id}}  {check.subject:<{width_subject}}  {check.summary}")
            if check.status not in (Status.PASS, Status.SKIP) and check.fix:
                lines.append(f"  {'':<5} {'':<{width_id}}  {'':<{width_subject}}  fix: {check.fix}")
            if verbose:
                for e in check.records:
                    lines.append(f"        ? {e.query} @ {e.server}: {e.rcode}" + (f" ttl={e.ttl}" if e.ttl is not None else ""))
                    lines.extend(f"          {a}" for a in e.answer)
        lines.append("")
    counts = {s: sum(1 for x in report.statuses() if x == s) for s in Status}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines.append(f"verdict: {paint(report.verdict, report.verdict.upper())} ({len(report.domains)} domain(s): {summary})")
    return "\n".join(lines)


def render_junit(report: Report, *, name: str = "mailprov check", strict: bool = False) -> str:
    """JUnit XML: one test suite per domain, one test case per check."""
    suites = ET.Element("testsuites", name=name)
    for domain in report.domains:
        failures = sum(1 for c in domain.checks if c.status == Status.FAIL or (strict and c.status == Status.WARN))
        errors = sum(1 for c in domain.checks if c.status == Status.ERROR)
        skipped = sum(1 for c in domain.checks if c.status == Status.SKIP)
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=domain.domain,
            tests=str(len(domain.checks)),
            failures=str(failures),
            errors=str(errors),
            skipped=str(skipped),
        )
        for check in domain.checks:
            case = ET.SubElement(suite, "testcase", classname=f"{domain.domain}.{check.id}", name=f"{check.id} {check.subject}")
            evidence = "\n".join(f"{e.query} @ {e.server}: {e.rcode}" + "".join(f"\n  {a}" for a in e.answer) for e in check.records)
            message = check.summary + (f" (fix: {check.fix})" if check.fix else "")
            if check.status == Status.FAIL or (strict and check.status == Status.WARN):
                ET.SubElement(case, "failure", message=message, type=str(check.status)).text = evidence
            elif check.status == Status.ERROR:
                ET.SubElement(case, "error", message=message, type="error").text = evidence
            elif check.status == Status.SKIP:
                ET.SubElement(case, "skipped", message=check.summary)
            else:
                ET.SubElement(case, "system-out").text = f"{check.status}: {message}\n{evidence}".strip()
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode")


def render(
    report: Report, fmt: str, *, strict: bool = False, colour: bool | None = None, name: str = "mailprov check", verbose: bool = False
) -> str:
    """Render in ``fmt`` (table, json or junit)."""
    if fmt == "json":
        return render_json(report)
    if fmt == "junit":
        return render_junit(report, name=name, strict=strict)
    return render_table(report, colour=use_colour() if colour is None else colour, verbose=verbose)
