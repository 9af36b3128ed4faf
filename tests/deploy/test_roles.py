"""Role conventions: every default is prefixed, specified in meta/argument_specs.yml and listed in the README."""

from __future__ import annotations

import pytest
import yaml

from tests.deploy.lab import REPO

PLAY_WIDE = {"mailprov_service_manager"}
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if p.is_dir())


def test_the_expected_roles_exist() -> None:
    assert {
        "mailprov_preflight",
        "mailprov_base",
        "mailprov_tls",
        "mailprov_users",
        "mailprov_mta",
        "mailprov_pop3",
        "mailprov_imap",
        "mailprov_probe",
    } <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_defaults_are_prefixed_specified_and_documented(role: str) -> None:
    path = REPO / "roles" / role
    defaults = yaml.safe_load((path / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((path / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    readme = (path / "README.md").read_text()
    # mailprov_service_manager is the one play-wide switch (the demo and labs set it once for every role).
    assert all(name.startswith(role + "_") or name in PLAY_WIDE for name in defaults), role
    assert set(defaults) == set(specs), f"{role}: defaults and argument_specs differ: {set(defaults) ^ set(specs)}"
    for name in defaults:
        assert f"`{name}`" in readme, f"{role}/README.md does not list {name}"
        assert specs[name].get("description"), f"{role}: {name} has no description"
    for name, spec in specs.items():
        if "default" in spec:
            assert spec["default"] == defaults[name], f"{role}: {name} default differs between defaults/ and argument_specs"


TASK_KEYWORDS = {
    "name", "when", "register", "loop", "notify", "vars", "listen", "changed_when", "failed_when", "check_mode", "delegate_to",
    "become", "run_once", "environment", "no_log", "throttle", "block", "tags", "loop_control",
}  # fmt: skip


@pytest.mark.parametrize("role", ROLES)
def test_tasks_use_fully_qualified_modules(role: str) -> None:
    for path in (REPO / "roles" / role).glob("*/*.yml"):
        if path.parent.name not in ("tasks", "handlers"):
            continue
        tasks = list(yaml.safe_load(path.read_text()) or [])
        while tasks:
            task = tasks.pop()
            tasks.extend(task.get("block", []))
            modules = [k for k in task if k not in TASK_KEYWORDS]
            if "block" not in task:
                assert len(modules) == 1 and modules[0].startswith("ansible.builtin."), f"{path}: {task.get('name')!r} uses {modules}"


def test_example_inventory_sets_every_role_variable() -> None:
    text = (REPO / "inventories" / "example" / "group_vars" / "mailprov" / "main.yml").read_text()
    example = yaml.safe_load(text)
    for role in ROLES:
        defaults = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text()) or {}
        skip = {"mailprov_base_cli_link", "mailprov_base_config_dir", "mailprov_base_queue_dir", "mailprov_base_mail_dir"}
        skip |= {"mailprov_base_state_dir", "mailprov_base_log_dir", "mailprov_base_run_dir", "mailprov_base_users_file"}
        skip |= {"mailprov_base_aliases_file", "mailprov_base_tls_cert", "mailprov_base_tls_key", "mailprov_base_venv"}
        skip |= {"mailprov_base_source_dir", "mailprov_base_wheel_cache", "mailprov_base_install"}
        skip |= {n for n in defaults if n.endswith(("_template", "_python", "_port", "_address", "_openssl", "_hostname", "_domains"))}
        missing = [n for n in defaults if n not in example and n not in skip and n not in text]
        assert not missing, f"inventories/example does not show {missing}"


def test_role_readmes_are_linked_from_docs() -> None:
    docs = (REPO / "docs" / "deploy.md").read_text()
    for role in ROLES:
        assert f"roles/{role}/README.md" in docs, role


def test_playbooks_parse() -> None:
    for name in ("site.yml", "preflight.yml", "users.yml"):
        plays = yaml.safe_load((REPO / "playbooks" / name).read_text())
        assert plays and all("hosts" in p for p in plays), name
    site = yaml.safe_load((REPO / "playbooks" / "site.yml").read_text())
    assert site[0]["any_errors_fatal"] is True and site[0]["roles"][0]["role"] == "mailprov.mail.mailprov_preflight"
    assert [r["role"] for r in site[1]["roles"]][-1] == "mailprov.mail.mailprov_probe"
