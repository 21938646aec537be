"""The tables of config.toml refuse what they do not know, and docs/configuration.md lists all they do."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from node.config import load_config
from node.errors import ConfigError


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("match = 3\n", "[match] must be a table"),
        ("[match]\nhide_disputed = 2\n", "unknown [match] setting(s) hide_disputed"),
        ("[match]\nmin_quality = 101\n", "match.min_quality must be a whole number 0-100"),
        ("[match]\nmin_quality = true\n", "match.min_quality must be a whole number 0-100"),
        ("[match]\nmax_hits = 0\n", "match.max_hits must be a whole number 1-1000000"),
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
    assert (load_config(node_dir).match.min_quality, load_config(node_dir).match.max_hits) == (
        50,
        1_000,
    )
    config.write_text(
        config.read_text(encoding="utf-8") + "min_quality = 70\nmax_hits = 20\n", encoding="utf-8"
    )
    assert (load_config(node_dir).match.min_quality, load_config(node_dir).match.max_hits) == (
        70,
        20,
    )


_ROOT = Path(__file__).parents[2]


def _documented_settings() -> dict[str, set[str]]:
    """The keys docs/configuration.md lists, by table ("" the top level), from headings and rows."""
    text = (_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    documented: dict[str, set[str]] = {"": set()}
    table: str | None = None
    for line in text.splitlines():
        heading = re.match(r"## (?:Top level|`\[([a-z_.]+)\]`)", line)
        if heading:
            table = heading.group(1) or ""
            documented.setdefault(table, set())
            if table:
                documented[""].add(table)
            continue
        row = re.match(r"\| (`[^|]*`) \|", line)
        if row is not None and table is not None:
            names = re.findall(r"`([^`]+)`", row.group(1))
            array = re.fullmatch(r"\[\[[a-z_]+\.([a-z_]+)\]\]", names[0])
            # `[[witness.ask]]` `peer`, `key`: an array of tables, a key of [witness]
            documented[table].add(array.group(1) if array else names[0])
    return documented


def _refused(node_dir: Path, table: str, key: str) -> bool:
    """Whether load_config refuses ``key`` in ``table`` as unknown (any other error: accepted)."""
    text = 'origin = "probe.example/hashmesh"\n'
    text += f"{key} = 1\n" if not table else f"[{table}]\n{key} = 1\n"
    (node_dir / "config.toml").write_text(text, encoding="utf-8")
    try:
        load_config(node_dir)
    except ConfigError as e:
        return "unknown" in str(e)
    return False


def test_every_key_load_config_accepts_is_documented(tmp_path: Path) -> None:
    """Probe load_config with every name node/config.py spells, in every table it accepts."""
    source = ast.parse((_ROOT / "node" / "config.py").read_text(encoding="utf-8"))
    names = {
        n.value
        for n in ast.walk(source)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and re.fullmatch(r"[a-z][a-z_]*", n.value)
    }
    documented = _documented_settings()
    names |= set().union(*documented.values())
    accepted = {"": {"origin"} | {k for k in names - {"origin"} if not _refused(tmp_path, "", k)}}
    for table in accepted[""] - {"origin", "listen"}:
        accepted[table] = {k for k in names if not _refused(tmp_path, table, k)}
    for table, keys in accepted.items():
        missing = keys - documented.get(table, set())
        assert not missing, f"docs/configuration.md does not document [{table}] {sorted(missing)}"
        stale = documented.get(table, set()) - keys
        assert not stale, f"docs/configuration.md documents [{table}] {sorted(stale)}, refused"
