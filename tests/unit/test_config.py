import tomllib

import pytest

from mailprov import config as config_mod
from mailprov.errors import ConfigError

BASE = {"server": {"hostname": "mail.example.org", "domains": ["example.org"]}}


def build(**sections):
    data = {k: dict(v) for k, v in BASE.items()}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_mod.from_dict(data)


def test_defaults_are_documented_and_valid():
    cfg = build()
    assert cfg.smtp.max_recipients == 100
    assert cfg.queue.max_lifetime == 5 * 86400
    assert cfg.outbound_helo == "mail.example.org"
    rendered = config_mod.render_defaults()
    # The rendered reference parses as TOML and, with the required keys added, loads as a config.
    data = tomllib.loads(rendered)
    data["server"].update(BASE["server"])
    assert config_mod.from_dict(data).smtp.listen == ["0.0.0.0:25"]


@pytest.mark.parametrize(
    ("sections", "key", "fix_word"),
    [
        ({"smtp": {"max_recipeints": 5}}, "smtp.max_recipeints", "max_recipients"),
        ({"smtp": {"listen": ["localhost"]}}, "smtp.listen[0]", "HOST:PORT"),
        ({"smtp": {"max_recipients": "many"}}, "smtp.max_recipients", "integer"),
        ({"smtp": {"trusted_networks": ["10.0.0.0/33"]}}, "smtp.trusted_networks[0]", "192.0.2.0/24"),
        ({"server": {"domains": []}}, "server.domains", "domain"),
        ({"server": {"hostname": "bad_host!"}}, "server.hostname", "letters"),
        ({"outbound": {"tls": "maybe"}}, "outbound.tls", "opportunistic"),
        ({"outbound": {"resolvers": ["dns.example"]}}, "outbound.resolvers[0]", "192.0.2.53"),
        ({"outbound": {"transports": [{"domain": "*", "host": "relay", "username": "u"}]}}, "outbound.transports[0].password_file", "0600"),
        ({"queue": {"retry_min": 600, "retry_max": 60}}, "queue.retry_max", "retry_min"),
        ({"tls": {"cert": "/x.pem"}}, "tls.key", "both"),
        ({"pop3": {"idle_timeout": 0}}, "pop3.idle_timeout", "positive"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(sections, key, fix_word):
    with pytest.raises(ConfigError) as err:
        build(**sections)
    assert err.value.key == key
    assert fix_word in str(err.value)


def test_missing_required_key():
    with pytest.raises(ConfigError) as err:
        config_mod.from_dict({"server": {"domains": ["a.test"]}})
    assert err.value.key == "server.hostname"


def test_load_reports_toml_syntax_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nhostname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config_mod.load(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        config_mod.load(tmp_path / "nope.toml")


def test_transports_parse_as_tables():
    cfg = build(outbound={"transports": [{"domain": "*", "host": "127.0.0.1", "port": 2525}]})
    assert cfg.outbound.transports[0].port == 2525
    assert cfg.outbound.transports[0].tls == "opportunistic"
