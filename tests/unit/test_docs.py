from pathlib import Path

from mailprov.config import render_defaults

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_matches_schema():
    text = (ROOT / "docs" / "configuration.md").read_text()
    block = text.split("```toml\n", 1)[1].rsplit("```", 1)[0]
    assert block.strip() == render_defaults().strip(), "regenerate docs/configuration.md from 'mailprov config defaults'"
