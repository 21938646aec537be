"""The optional [match] and [witness] tables of config.toml refuse what they do not know."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import load_config
from node.errors import ConfigError


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("match = 3\n", "[match] must be a table"),
        ("[match]\nhide_disputed = 2\n", "unknown [match] setting(s) hide_disputed"),
        ("witness = 'b'\n", "[witness] must be a table"),
        ("[witness]\nask = []\nrequires = []\n", "unknown [witness] setting(s) requires"),
    ],
)
def test_bad_sections_are_named(node_dir: Path, toml: str, message: str) -> None:
    config = node_dir / "config.toml"
    config.write_text(config.read_text(encoding="utf-8") + toml, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(node_dir)
    assert message in str(caught.value)
    assert str(config) in str(caught.value)


def test_known_settings_load(node_dir: Path) -> None:
    config = node_dir / "config.toml"
    config.write_text(
        config.read_text(encoding="utf-8") + "[match]\nhide_disputed_by = 2\n", encoding="utf-8"
    )
    assert load_config(node_dir).match.hide_disputed_by == 2
