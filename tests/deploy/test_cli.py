"""Bad input to deploy, probe and demo gets a clear message and exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from mailprov.cli import app
from mailprov.deploy.runner import PlaybookResult

runner = CliRunner()


def test_deploy_refuses_a_missing_inventory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["deploy", "-i", str(tmp_path / "nope.yml")])
    assert result.exit_code == 2
    assert "inventory" in result.output and "does not exist" in result.output
    assert "Traceback" not in result.output


def test_deploy_refuses_an_unknown_playbook(tmp_path: Path) -> None:
    result = runner.invoke(app, ["deploy", "-i", str(tmp_path), "--playbook", "evil.yml"])
    assert result.exit_code == 2 and "unknown playbook" in result.output


def test_probe_refuses_bad_ports_and_missing_password() -> None:
    result = runner.invoke(app, ["probe", "mail.example.test", "--address", "127.0.6.250", "--smtp-port", "0"])
    assert result.exit_code == 2 and "--smtp-port 0 is out of range" in result.output
    result = runner.invoke(app, ["probe", "mail.example.test", "--address", "127.0.6.250", "--format", "xml"])
    assert result.exit_code == 2 and "--format" in result.output


def test_probe_refuses_an_unreadable_certificate(tmp_path: Path) -> None:
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate\n")
    result = runner.invoke(app, ["probe", "mail.example.test", "--address", "127.0.6.250", "--expect-cert", str(bad)])
    assert result.exit_code == 2 and "holds no PEM certificate" in result.output


def test_probe_of_a_host_with_nothing_listening_fails_naming_each_port() -> None:
    args = ["probe", "mail.example.test", "--address", "127.0.6.250", "--resolver", "127.0.6.251:3599", "--format", "table"]
    args += [
        "--smtp-port",
        "3901",
        "--submission-port",
        "3902",
        "--submissions-port",
        "3903",
        "--pop3-port",
        "3904",
        "--pop3s-port",
        "3905",
        "--imap-port",
        "3906",
        "--imaps-port",
        "3907",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.output.count("FAIL  probe.port") == 7
    assert "Traceback" not in result.output


def test_probe_of_an_unknown_demo_host_is_a_usage_error() -> None:
    result = runner.invoke(app, ["probe", "mail.gamma.test", "--demo"])
    assert result.exit_code == 2 and "not a demo host" in result.output


def test_failure_message_names_task_host_and_message() -> None:
    from mailprov.deploy.runner import Failure
    from mailprov.errors import MailprovError

    result = PlaybookResult(
        returncode=2, failures=[Failure("mail.alpha.test", "mailprov_mta : Write the MTA configuration", "failed", "boom")]
    )
    try:
        result.raise_for_failure()
    except MailprovError as exc:
        assert str(exc).startswith("deploy failed on mail.alpha.test at task 'mailprov_mta : Write the MTA configuration': boom")
    else:
        raise AssertionError("no error raised")


def test_failure_message_names_the_reason_after_a_rescued_failure() -> None:
    """A unit that does not start: the start task fails, the rescue fails again with the journal. Name that one."""
    from mailprov.deploy.runner import Failure
    from mailprov.errors import MailprovError

    result = PlaybookResult(
        returncode=2,
        failures=[
            Failure("mail.gamma.test", "mailprov_pop3 : Enable and start mailprov-pop3", "failed", "Unable to start service"),
            Failure("mail.gamma.test", "mailprov_base : Fail with the journal's reason", "failed", "address already in use"),
        ],
    )
    try:
        result.raise_for_failure()
    except MailprovError as exc:
        assert "at task 'mailprov_base : Fail with the journal's reason': address already in use" in str(exc)
    else:
        raise AssertionError("no error raised")
