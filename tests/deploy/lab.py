"""The deployment lab: two mail hosts reached over one real sshd, DNS from Knot, each host under its own prefix.

mail.alpha.test (127.0.6.10) and mail.beta.test (127.0.6.20) are two inventory hosts that both connect
to the sshd on 127.0.6.2; each deploys under its own temporary prefix and listens on its own loopback
address with the lab's ports. Knot on 127.0.6.53 serves their A, MX and PTR records.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SSHD_ADDRESS, SSHD_PORT = "127.0.6.2", 2622
DNS_ADDRESS, DNS_PORT = "127.0.6.53", 3553
BROKEN_DNS_ADDRESS = "127.0.6.54"
# Ports away from the demo's (2525, ...) so a running demo does not disturb the tests.
PORTS = {"smtp": 3025, "submission": 3587, "submissions": 3465, "pop3": 3110, "pop3s": 3995, "imap": 3143, "imaps": 3993}
PROBE_SOURCE = "127.0.6.99"  # outside every trusted network: relay must be refused from here


@dataclass
class LabHost:
    """One inventory host of the lab."""

    name: str
    domain: str
    address: str
    prefix: Path
    user: str
    password: str

    @property
    def config(self) -> Path:
        return self.prefix / "etc" / "mailprov" / "mailprov.toml"

    @property
    def mail_dir(self) -> Path:
        return self.prefix / "var" / "mail" / "mailprov"

    @property
    def cert(self) -> Path:
        return self.prefix / "etc" / "mailprov" / "tls" / f"{self.name}.crt"


def zones(ptr_10: str = "mail.alpha.test.") -> dict[str, str]:
    """The lab's zones: the demo zones, with the PTR of 127.0.6.10 replaceable to break it."""
    out = {}
    for path in sorted((REPO / "examples" / "zones").glob("*.zone")):
        text = path.read_text()
        if path.name.startswith("6.0.127"):
            text = text.replace("10   PTR   mail.alpha.test.", f"10   PTR   {ptr_10}")
        out[path.name.removesuffix(".zone")] = text
    return out


def host_root(name: str) -> Path:
    """A new directory playing a host's root file system (``/``, mode 0755 as on any host), directly in /tmp:
    the services a deployment starts there drop to the mailprov user, who must reach their prefix (not
    below pytest's or the lab's private, mode-0700 directories). Remove it with :func:`remove_hosts`."""
    prefix = Path(tempfile.mkdtemp(prefix=f"mailprov-lab-{name}-", dir="/tmp"))
    prefix.chmod(0o755)
    return prefix


def make_hosts() -> list[LabHost]:
    """alpha and beta, each with a host root of its own (:func:`host_root`)."""
    return [
        LabHost("mail.alpha.test", "alpha.test", "127.0.6.10", host_root("alpha"), "alex@alpha.test", "alex-lab-secret"),
        LabHost("mail.beta.test", "beta.test", "127.0.6.20", host_root("beta"), "john@beta.test", "john-lab-secret"),
    ]


def remove_hosts(hosts: list[LabHost]) -> None:
    """Remove the hosts' root directories."""
    for host in hosts:
        shutil.rmtree(host.prefix, ignore_errors=True)


def write_inventory(path: Path, sshd_vars: dict[str, str], hosts: list[LabHost], dns: str, wheel: str, **extra: object) -> Path:
    """A YAML inventory for the lab; ``extra`` group variables override the defaults below."""
    group_vars: dict[str, object] = {
        **sshd_vars,
        "ansible_python_interpreter": "/usr/bin/python3",
        # The target venv: Debian's python, the wheel built once from this checkout by the fixture (other
        # engineers editing the checkout must not change it between runs), and the dependencies shared
        # from the test environment (no package index needed, and fast).
        "mailprov_base_install": "wheel",
        "mailprov_base_python": "/usr/bin/python3",
        "mailprov_base_pip_no_deps": True,
        "mailprov_base_venv_site_dirs": [sysconfig.get_paths()["purelib"]],
        "mailprov_base_wheel": wheel,
        "mailprov_base_service_timeout": 60,
        # Two hosts on one machine under prefixes: pid files, also where systemd runs (unit names would clash).
        "mailprov_service_manager": "pidfile",
        "mailprov_mta_listen": ["{{ lab_address }}:" + str(PORTS["smtp"])],
        "mailprov_mta_submission_listen": ["{{ lab_address }}:" + str(PORTS["submission"])],
        "mailprov_mta_submissions_listen": ["{{ lab_address }}:" + str(PORTS["submissions"])],
        "mailprov_mta_trusted_networks": [],
        "mailprov_mta_outbound_port": PORTS["smtp"],
        "mailprov_mta_outbound_resolvers": [dns],
        "mailprov_mta_outbound_mta_sts": False,
        "mailprov_mta_queue_retry_min": 2,
        "mailprov_mta_queue_retry_max": 5,
        "mailprov_mta_auth_failure_delay": 0.1,
        "mailprov_pop3_listen": ["{{ lab_address }}:" + str(PORTS["pop3"])],
        "mailprov_pop3_tls_listen": ["{{ lab_address }}:" + str(PORTS["pop3s"])],
        "mailprov_pop3_auth_failure_delay": 0.1,
        "mailprov_imap_listen": ["{{ lab_address }}:" + str(PORTS["imap"])],
        "mailprov_imap_tls_listen": ["{{ lab_address }}:" + str(PORTS["imaps"])],
        "mailprov_imap_auth_failure_delay": 0.1,
        "mailprov_preflight_resolvers": [dns],
        "mailprov_preflight_addresses": ["{{ lab_address }}"],
        "mailprov_probe_resolvers": [dns],
        "mailprov_probe_source_address": PROBE_SOURCE,
        "mailprov_probe_user": "{{ mailprov_users_list[0].address }}",
        "mailprov_probe_password": "{{ mailprov_users_list[0].password }}",
    }
    group_vars.update(extra)
    inventory = {
        "all": {
            "children": {
                "mailprov": {
                    "hosts": {
                        h.name: {
                            "lab_address": h.address,
                            "mailprov_base_prefix": str(h.prefix),
                            "mailprov_base_domains": [h.domain],
                            "mailprov_users_list": [{"address": h.user, "password": h.password}],
                            "mailprov_users_aliases": [{"alias": f"postmaster@{h.domain}", "targets": [h.user]}],
                        }
                        for h in hosts
                    },
                    "vars": group_vars,
                }
            }
        }
    }
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def stop_services(hosts: list[LabHost]) -> None:
    """Stop every service a deployment started (the process manager's pid files under each prefix)."""
    for host in hosts:
        for service in ("smtp", "pop3", "imap"):
            pidfile = host.prefix / "run" / "mailprov" / f"{service}.pid"
            if pidfile.exists():
                subprocess.run(
                    [sys.executable, "-m", "mailprov.deploy.daemon", "stop", "--pidfile", str(pidfile), "--timeout", "15"],
                    check=False,
                    capture_output=True,
                    env=dict(os.environ, PYTHONPATH=str(REPO)),
                )
