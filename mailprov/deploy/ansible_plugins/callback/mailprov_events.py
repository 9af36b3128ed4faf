"""Ansible stdout callback ``mailprov_events``: one JSON object per line for every event that matters.

``mailprov deploy`` runs ansible-playbook with this callback and renders the events as progress lines
and a per-host summary. Events (key ``event``):

  play        {"name"}                                      a play starts
  task        {"name", "handler"}                           a task (or handler) starts
  result      {"host", "task", "status", "changed", "msg"}  status: ok, changed, failed, skipped, unreachable, ignored
  stats       {"hosts": {HOST: {"ok", "changed", "failed", "unreachable", "skipped", "rescued", "ignored"}}}
"""

from __future__ import annotations

import json
import sys

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: mailprov_events
    type: stdout
    short_description: JSON lines for mailprov deploy
    description: One JSON object per line per play, task, host result and the final statistics.
"""

MAX_TEXT = 4000  # characters of stdout/stderr kept in a failure message


def _message(result: dict) -> str:
    """The most useful text of a task result: msg, then stderr/stdout tails."""
    parts = []
    msg = result.get("msg")
    if msg:
        parts.append(msg if isinstance(msg, str) else json.dumps(msg))
    for key in ("stderr", "stdout"):
        text = result.get(key)
        if text and (result.get("failed") or result.get("rc")) and text not in parts:
            parts.append(text[-MAX_TEXT:])
    if not parts and result.get("results"):
        parts = [_message(item) for item in result["results"] if item.get("failed")]
    return "\n".join(p for p in parts if p).strip()


# Our roles run from the mailprov.mail collection; the prefix says nothing to the person reading the log.
_OWN_COLLECTION = "mailprov.mail."


def _task_name(task) -> str:
    """The task's name as the person wrote it: ``mailprov_base : Create the venv`` (our collection's prefix dropped)."""
    name = task.get_name().strip()
    return name.removeprefix(_OWN_COLLECTION)


class CallbackModule(CallbackBase):
    """Emit mailprov's JSON event lines on standard output."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "mailprov_events"

    def _emit(self, **event) -> None:
        sys.stdout.write(json.dumps(event, default=str) + "\n")
        sys.stdout.flush()

    def v2_playbook_on_play_start(self, play) -> None:
        self._emit(event="play", name=play.get_name().strip())

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._emit(event="task", name=_task_name(task), handler=False)

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._emit(event="task", name=_task_name(task), handler=True)

    def _result(self, result, status: str) -> None:
        res = result._result
        changed = bool(res.get("changed"))
        if status == "ok" and changed:
            status = "changed"
        msg = ""
        if status in ("failed", "unreachable", "ignored"):
            msg = _message(res)
        elif result._task.action in ("debug", "ansible.builtin.debug") and "msg" in res:
            value = res["msg"]
            msg = "\n".join(map(str, value)) if isinstance(value, list) else str(value)
        host, task = result._host.get_name(), _task_name(result._task)
        self._emit(event="result", host=host, task=task, status=status, changed=changed, msg=msg)

    def v2_runner_on_ok(self, result) -> None:
        self._result(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._result(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result) -> None:
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result) -> None:
        self._result(result, "unreachable")

    def v2_playbook_on_stats(self, stats) -> None:
        hosts = {}
        for host in sorted(stats.processed):
            s = stats.summarize(host)
            hosts[host] = {k: s.get(k, 0) for k in ("ok", "changed", "unreachable", "skipped", "rescued", "ignored")}
            hosts[host]["failed"] = s.get("failures", 0)
        self._emit(event="stats", hosts=hosts)
