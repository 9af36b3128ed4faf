"""MTA-STS (RFC 8461): honour the TLS policy a destination domain publishes.

Discovery, in order:

1. TXT ``_mta-sts.DOMAIN``: exactly one record starting ``v=STSv1;`` with an ``id``; otherwise the domain
   has no policy (section 3.1).
2. If the cached policy has that id and has not outlived its ``max_age``, it is used as is. Otherwise the
   policy is fetched from ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``: HTTPS with a certificate
   valid for that name, no redirects, ``200`` and ``text/plain`` only, at most 64 KiB (section 3.3).
3. A policy that cannot be fetched or parsed never removes a cached one that is still fresh: the cached
   policy stays in force until its ``max_age`` runs out (section 5.1), even if the TXT record vanishes.

The cache lives in memory and in ``STATE_DIR/mta-sts/DOMAIN.json`` (written through
:func:`~mailprov.atomic.atomic_write`), so a restart keeps policies. The HTTPS fetch is injectable
(``fetch=``), as are the CA bundle and port, so tests can serve a policy from a local server.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.resolver

from mailprov.atomic import atomic_write
from mailprov.pkix import verifying_context

log = logging.getLogger("mailprov.outbound")

MAX_POLICY_BYTES = 64 * 1024
MAX_AGE_LIMIT = 31557600  # RFC 8461 3.2: at most one year
FETCH_TIMEOUT = 60.0  # RFC 8461 3.3 suggests a minute
_ID_RE = re.compile(r"^[A-Za-z0-9]{1,32}$")
_DOMAIN_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$")


class PolicyError(Exception):
    """A policy text or TXT record that does not follow RFC 8461, or a fetch that failed."""


@dataclass(frozen=True)
class StsPolicy:
    """One parsed policy, with the TXT id it was fetched for and when it was fetched."""

    mode: str  # "enforce", "testing" or "none"
    mx: tuple[str, ...]
    max_age: int
    policy_id: str = ""
    fetched: float = 0.0

    def expired(self, now: float | None = None) -> bool:
        """True once ``max_age`` seconds have passed since the fetch."""
        return (now if now is not None else time.time()) >= self.fetched + self.max_age

    def permits(self, mx_host: str) -> bool:
        """Does an ``mx`` pattern of this policy match ``mx_host`` (section 4.1)?"""
        return any(mx_matches(pattern, mx_host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: exact match, or ``*.example.org`` matching exactly one leftmost label."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return pattern == host


def parse_txt(records: list[str]) -> str | None:
    """The policy id from the ``_mta-sts`` TXT strings, or None when there is no valid, single record."""
    candidates = [r for r in records if r.startswith("v=STSv1;") or r == "v=STSv1"]
    if len(candidates) != 1:
        return None
    fields: dict[str, str] = {}
    for part in candidates[0].split(";"):
        part = part.strip()
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq:
            return None
        fields.setdefault(key.strip(), value.strip())
    policy_id = fields.get("id", "")
    return policy_id if _ID_RE.match(policy_id) else None


def parse_policy(text: str, *, policy_id: str = "", fetched: float = 0.0) -> StsPolicy:
    """Parse a policy file (section 3.2). Raises PolicyError naming what is wrong."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for number, raw in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"line {number} is not 'key: value': {raw[:80]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", value):
                raise PolicyError(f"mx pattern {value!r} is not a host name or '*.domain'")
            mx.append(value.lower())
        else:
            fields.setdefault(key, value)  # unknown keys are ignored (section 3.2)
    if fields.get("version") != "STSv1":
        raise PolicyError(f"version is {fields.get('version')!r}, not 'STSv1'")
    mode = fields.get("mode", "")
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"mode is {mode!r}, not enforce, testing or none")
    max_age_text = fields.get("max_age", "")
    if not max_age_text.isdigit() or len(max_age_text) > 10:
        raise PolicyError(f"max_age {max_age_text!r} is not a whole number of seconds")
    max_age = min(int(max_age_text), MAX_AGE_LIMIT)
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} needs at least one mx line")
    return StsPolicy(mode, tuple(mx), max_age, policy_id, fetched)


Fetcher = Callable[[str], Awaitable[str]]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a given address while verifying the certificate for the host name."""

    def __init__(self, host: str, address: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self._address = address
        self._context = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class HTTPSFetcher:
    """Fetch ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` with names resolved by our resolver."""

    def __init__(
        self, resolver: dns.asyncresolver.Resolver, *, ca_file: str | None = None, port: int = 443, timeout: float = FETCH_TIMEOUT
    ) -> None:
        self.resolver = resolver
        self.port = port
        self.timeout = timeout
        self.context = verifying_context(ca_file)

    async def __call__(self, domain: str) -> str:
        host = f"mta-sts.{domain}"
        addresses: list[str] = []
        for rdtype in ("AAAA", "A"):
            try:
                answer = await self.resolver.resolve(host, rdtype, search=False)
                addresses += [r.address for r in answer]
            except dns.exception.DNSException:
                continue
        if not addresses:
            raise PolicyError(f"{host} has no address")
        errors = []
        for address in addresses[:4]:
            try:
                return await asyncio.wait_for(asyncio.to_thread(self._get, host, address), self.timeout + 1)
            except PolicyError:
                raise
            except (OSError, ssl.SSLError, http.client.HTTPException, TimeoutError) as exc:
                errors.append(f"{address}: {exc}")
        raise PolicyError(f"cannot fetch https://{host}/.well-known/mta-sts.txt: {'; '.join(errors)}")

    def get(self, host: str, address: str) -> str:
        """Blocking GET of ``https://HOST/.well-known/mta-sts.txt`` from ``address`` (``mailprov check --tls`` uses it too)."""
        return self._get(host, address)

    def _get(self, host: str, address: str) -> str:
        conn = _PinnedHTTPSConnection(host, address, self.port, self.context, self.timeout)
        try:
            conn.request("GET", "/.well-known/mta-sts.txt", headers={"Host": host, "User-Agent": "mailprov"})
            resp = conn.getresponse()
            if resp.status != 200:  # redirects are not followed (section 3.3)
                raise PolicyError(f"https://{host}/.well-known/mta-sts.txt answered HTTP {resp.status}")
            ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if ctype != "text/plain":
                raise PolicyError(f"https://{host}/.well-known/mta-sts.txt has Content-Type {ctype!r}, not text/plain")
            body = resp.read(MAX_POLICY_BYTES + 1)
            if len(body) > MAX_POLICY_BYTES:
                raise PolicyError(f"policy at https://{host} is larger than 64 KiB")
            return body.decode("utf-8", "replace")
        finally:
            conn.close()


class PolicyCache:
    """Looks up, fetches and caches MTA-STS policies (memory and ``STATE_DIR/mta-sts``)."""

    def __init__(self, state_dir: str | Path, resolver: dns.asyncresolver.Resolver, *, fetch: Fetcher | None = None) -> None:
        self.dir = Path(state_dir) / "mta-sts"
        self.resolver = resolver
        self.fetch: Fetcher = fetch or HTTPSFetcher(resolver)
        self._memory: dict[str, StsPolicy] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Domains whose TXT lookup said "no policy" recently: skip them without a lookup until then.
        self._checked: dict[str, tuple[float, str | None]] = {}

    async def policy(self, domain: str, *, now: float | None = None) -> StsPolicy | None:
        """The policy in force for ``domain`` (None: no policy, or mode none). Never raises."""
        if not _DOMAIN_RE.match(domain):  # also keeps the cache file name inside the cache directory
            return None
        now = now if now is not None else time.time()
        lock = self._locks.setdefault(domain, asyncio.Lock())
        async with lock:  # one discovery per domain at a time; the others reuse its result
            policy = await self._discover(domain, now)
        return policy if policy is not None and policy.mode != "none" else None

    async def _discover(self, domain: str, now: float) -> StsPolicy | None:
        cached = self._load(domain)
        if cached is not None and cached.expired(now):
            cached = None
        checked = self._checked.get(domain)
        if checked is not None and checked[0] > now:
            policy_id = checked[1]
        else:
            policy_id = await self._txt_id(domain)
            # dnspython's cache honours the TXT TTL; this short memo avoids even that lookup per message.
            self._checked[domain] = (now + 60, policy_id)
        if policy_id is None:
            return cached
        if cached is not None and cached.policy_id == policy_id:
            return cached
        try:
            text = await self.fetch(domain)
            policy = parse_policy(text, policy_id=policy_id, fetched=now)
        except PolicyError as exc:
            log.warning("MTA-STS policy of %s unusable: %s%s", domain, exc, "; keeping the cached policy" if cached else "")
            return cached
        except Exception as exc:  # an injected fetcher failing in an unforeseen way must not stop delivery
            log.warning("MTA-STS policy fetch for %s failed: %s", domain, exc)
            return cached
        self._store(domain, policy)
        mx = ",".join(policy.mx)
        log.info("MTA-STS policy of %s: mode=%s mx=%s max_age=%d id=%s", domain, policy.mode, mx, policy.max_age, policy_id)
        return policy

    async def _txt_id(self, domain: str) -> str | None:
        try:
            answer = await self.resolver.resolve(f"_mta-sts.{domain}", "TXT", search=False)
        except dns.exception.DNSException:
            return None
        records = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        return parse_txt(records)

    def _path(self, domain: str) -> Path:
        return self.dir / f"{domain}.json"

    def _load(self, domain: str) -> StsPolicy | None:
        if domain in self._memory:
            return self._memory[domain]
        try:
            data = json.loads(self._path(domain).read_text())
            policy = StsPolicy(data["mode"], tuple(data["mx"]), int(data["max_age"]), str(data["policy_id"]), float(data["fetched"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable MTA-STS cache file %s: %s", self._path(domain), exc)
            return None
        self._memory[domain] = policy
        return policy

    def _store(self, domain: str, policy: StsPolicy) -> None:
        self._memory[domain] = policy
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            data = asdict(policy)
            data["mx"] = list(policy.mx)
            atomic_write(self._path(domain), json.dumps(data, indent=1) + "\n", mode=0o640)
        except OSError as exc:  # the memory copy still works; the next restart fetches again
            log.warning("cannot write MTA-STS cache %s: %s", self._path(domain), exc)
