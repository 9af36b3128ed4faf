"""Tag-list records (``tag=value; tag=value``) as DMARC, DKIM, MTA-STS and TLS-RPT use them."""

from __future__ import annotations

import re

_TAG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def parse_tags(text: str) -> tuple[dict[str, str], list[str]]:
    """Split ``tag=value`` pairs separated by ``;``: returns the tags (in order) and the syntax errors."""
    tags: dict[str, str] = {}
    errors: list[str] = []
    for raw in text.split(";"):
        part = raw.strip()
        if not part:
            continue
        if "=" not in part:
            errors.append(f"'{part}' is not tag=value")
            continue
        name, value = (s.strip() for s in part.split("=", 1))
        if not _TAG_RE.match(name):
            errors.append(f"'{name}' is not a valid tag name")
            continue
        if name in tags:
            errors.append(f"tag '{name}' appears twice")
            continue
        tags[name] = value
    return tags, errors
