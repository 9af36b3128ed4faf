"""Run a mailprov playbook with ansible-playbook: progress per task and host as it goes, a summary at the end.

:func:`run_playbook` starts ``ansible-playbook`` (from the same environment as mailprov) with the
``mailprov_events`` stdout callback, turns each JSON event line into a progress line through ``echo``,
and returns a :class:`PlaybookResult` with the per-host statistics and every failure. ``mailprov deploy``
raises when the result failed, naming the failing task, the host and the message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mailprov
from mailprov.errors import EXIT_FAIL, MailprovError, UsageError

PLUGIN_DIR = Path(__file__).parent / "ansible_plugins" / "callback"
STATUS_WIDTH = 8


COLLECTION = ("mailprov", "mail")  # the roles' collection: mailprov.mail.mailprov_base, ...
PACKAGED = Path(__file__).resolve().parents[1] / "ansible_content"  # where a built wheel carries them (setup.py)


def ansible_dir() -> Path:
    """The directory holding ``playbooks/`` and ``roles/``: $MAILPROV_ANSIBLE_DIR, else the checkout this
    mailprov runs from, else the copy an installed wheel carries (``mailprov/ansible_content``)."""
    return ansible_source()[0]


def ansible_source() -> tuple[Path, str]:
    """Where the playbooks come from, and how that was decided (``MAILPROV_ANSIBLE_DIR``, checkout, installed)."""
    env = os.environ.get("MAILPROV_ANSIBLE_DIR")
    checkout = Path(mailprov.__file__).resolve().parent.parent
    candidates = [(Path(env), "MAILPROV_ANSIBLE_DIR")] if env else [(checkout, "checkout"), (PACKAGED, "installed")]
    for base, how in candidates:
        if (base / "playbooks" / "site.yml").is_file():
            return base, how
    raise UsageError(
        f"no playbooks/site.yml under {candidates[0][0]}",
        fix="reinstall mailprov from its wheel (it carries the playbooks), "
        "or set MAILPROV_ANSIBLE_DIR to the directory holding playbooks/ and roles/",
    )


def collections_dir(base: Path, scratch: Path) -> Path:
    """A collections path under ``scratch`` in which ``mailprov.mail`` is ``base`` (the playbooks use the
    roles' fully qualified names, so a checkout or an installed wheel runs them as the installed collection does)."""
    link = scratch.joinpath("ansible_collections", *COLLECTION)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(base, target_is_directory=True)
    return scratch


@dataclass
class Failure:
    """One failed task on one host."""

    host: str
    task: str
    status: str  # failed or unreachable
    msg: str


@dataclass
class PlaybookResult:
    """What a playbook run did: per-host statistics, the failures, the exit status."""

    returncode: int
    hosts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    output: list[str] = field(default_factory=list)  # lines that were not events (warnings, errors)
    elapsed: float = 0.0  # seconds the run took

    @property
    def ok(self) -> bool:
        """True when ansible-playbook succeeded and no host failed."""
        return self.returncode == 0 and not self.failures

    @property
    def changed(self) -> int:
        """Total changed tasks over every host."""
        return sum(h.get("changed", 0) for h in self.hosts.values())

    def changed_tasks(self) -> list[tuple[str, str]]:
        """(host, task) of every result that changed something."""
        return [(e["host"], e["task"]) for e in self.events if e.get("event") == "result" and e.get("status") == "changed"]

    def summary(self) -> str:
        """One line per host: ok, changed, failed, unreachable, skipped."""
        width = max((len(h) for h in self.hosts), default=4)
        lines = []
        for host, s in self.hosts.items():
            lines.append(
                f"  {host:<{width}}  ok={s.get('ok', 0)} changed={s.get('changed', 0)} failed={s.get('failed', 0)} "
                f"unreachable={s.get('unreachable', 0)} skipped={s.get('skipped', 0)}"
            )
        return "\n".join(lines)

    def raise_for_failure(self, what: str = "deploy") -> None:
        """Raise a MailprovError naming the first failing host, its task and its message.

        For that host the last failure is named: a failure handled by a rescue (a unit that did not start)
        is followed by the one that carries the reason (its journal)."""
        if self.ok:
            return
        if self.failures:
            host = self.failures[0].host
            final = [f for f in self.failures if f.host == host][-1]
            others = f" (and {len(self.failures) - 1} more failure(s))" if len(self.failures) > 1 else ""
            raise MailprovError(f"{what} failed on {final.host} at task '{final.task}': {final.msg}{others}", exit_code=EXIT_FAIL)
        tail = "\n".join(self.output[-15:])
        raise MailprovError(f"{what} failed: ansible-playbook exited with {self.returncode}\n{tail}".rstrip())


def _render(event: dict, echo: Callable[[str], None]) -> None:
    kind = event.get("event")
    if kind == "play":
        echo(f"PLAY {event['name']}")
    elif kind == "result":
        status = event["status"]
        if status == "skipped":
            return
        label = {"failed": "FAILED", "unreachable": "UNREACH"}.get(status, status)
        echo(f"  {label:<{STATUS_WIDTH}} {event['host']}  {event['task']}")
        if event.get("msg") and status in ("failed", "unreachable", "ignored", "ok", "changed"):
            for line in str(event["msg"]).splitlines()[:60]:
                echo(f"  {'':<{STATUS_WIDTH}}   {line}")


def run_playbook(
    playbook: str,
    inventory: str | list[str],
    *,
    check: bool = False,
    limit: str | None = None,
    extra_vars: dict | None = None,
    echo: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
) -> PlaybookResult:
    """Run ``playbooks/PLAYBOOK`` against ``inventory`` and return what happened (never raises on a task failure)."""
    base = ansible_dir()
    inventories = [inventory] if isinstance(inventory, str) else inventory
    for inv in inventories:
        if "," not in inv and not Path(inv).exists():
            raise UsageError(f"inventory {inv} does not exist", fix="give -i PATH to an inventory file or directory")
    binary = Path(sys.executable).with_name("ansible-playbook")
    cmd = [str(binary) if binary.exists() else "ansible-playbook", str(base / "playbooks" / playbook)]
    for inv in inventories:
        cmd += ["-i", inv]
    if check:
        cmd.append("--check")
    if limit:
        cmd += ["--limit", limit]
    if extra_vars:
        cmd += ["--extra-vars", json.dumps(extra_vars)]
    cmd += extra_args or []
    scratch = tempfile.TemporaryDirectory(prefix="mailprov-ansible-")
    environment = dict(os.environ)
    collections = [str(collections_dir(base, Path(scratch.name)))]
    collections += [p for p in environment.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if p]
    environment.update(
        {
            "ANSIBLE_ROLES_PATH": str(base / "roles"),
            "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(collections),
            "ANSIBLE_CALLBACK_PLUGINS": str(PLUGIN_DIR),
            "ANSIBLE_STDOUT_CALLBACK": "mailprov_events",
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_PIPELINING": "1",
            "ANSIBLE_PYTHON_INTERPRETER": environment.get("ANSIBLE_PYTHON_INTERPRETER", "auto_silent"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    environment.update(env or {})
    echo = echo or (lambda line: None)
    with scratch:
        return _run(cmd, environment, base, echo)


def _run(cmd: list[str], environment: dict[str, str], base: Path, echo: Callable[[str], None]) -> PlaybookResult:
    result = PlaybookResult(returncode=0)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, cwd=base)
    except OSError as exc:
        raise MailprovError(f"cannot run ansible-playbook: {exc}", fix="install ansible-core in mailprov's environment") from None
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip("\n")
        try:
            event = json.loads(line) if line.startswith("{") else None
        except json.JSONDecodeError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            if line.strip():
                result.output.append(line)
                echo(f"  {line}")
            continue
        event["t"] = round(time.monotonic() - started, 2)
        result.events.append(event)
        if event["event"] == "stats":
            result.hosts = event["hosts"]
        elif event["event"] == "result" and event["status"] in ("failed", "unreachable"):
            result.failures.append(Failure(event["host"], event["task"], event["status"], event.get("msg", "")))
        _render(event, echo)
    result.returncode = proc.wait()
    result.elapsed = time.monotonic() - started
    return result
