from typer.testing import CliRunner

from mailprov.cli import app

runner = CliRunner()


def test_user_and_alias_commands(tmp_path):
    cfg = tmp_path / "mailprov.toml"
    cfg.write_text(f"""
[server]
hostname = "mail.beta.test"
domains = ["beta.test"]
[paths]
users_file = "{tmp_path}/users"
aliases_file = "{tmp_path}/aliases"
""")
    args = ["--config", str(cfg)]
    r = runner.invoke(app, ["user", "add", "john@beta.test", "--password-stdin", *args], input="pw1\n")
    assert r.exit_code == 0, r.output
    assert "pw1" not in (tmp_path / "users").read_text()
    r = runner.invoke(app, ["user", "add", "john@beta.test", "--password-stdin", *args], input="pw1\n")
    assert r.exit_code == 2 and "already exists" in r.output
    assert runner.invoke(app, ["user", "list", *args]).output.split() == ["john@beta.test"]
    r = runner.invoke(app, ["alias", "add", "postmaster@beta.test", "john@beta.test", *args])
    assert r.exit_code == 0
    assert "postmaster@beta.test: john@beta.test" in runner.invoke(app, ["alias", "list", *args]).output
    assert runner.invoke(app, ["user", "del", "john@beta.test", *args]).exit_code == 0
    r = runner.invoke(app, ["user", "del", "john@beta.test", *args])
    assert r.exit_code == 2 and "no user" in r.output


def test_config_errors_exit_2_with_key(tmp_path):
    cfg = tmp_path / "mailprov.toml"
    cfg.write_text('[server]\nhostname = "mail.beta.test"\ndomains = ["beta.test"]\n[smtp]\nlisten = "x"\n')
    r = runner.invoke(app, ["config", "check", "--config", str(cfg)])
    assert r.exit_code == 2
    assert "smtp.listen" in r.output and "fix:" in r.output
