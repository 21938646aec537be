"""--advertise-url and [api] advertise: a node on 0.0.0.0 puts a reachable URL in its card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.cli import main as hashmesh
from node.config import load_config
from node.errors import ConfigError
from node.ledger.provision import init_node

ORIGIN = "hotline-adv.example/hashmesh"


def _card(capsys: pytest.CaptureFixture[str], node: Path, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = hashmesh(["--dir", str(node), "peer", "card", *extra])
    out, err = capsys.readouterr()
    return status, out, err


def test_any_address_without_advertise_is_refused_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "node"
    init_node(node, ORIGIN, listen="0.0.0.0:8443")
    status, out, err = _card(capsys, node)
    assert status == 1
    assert out == ""
    assert "0.0.0.0:8443" in err
    assert "[api] advertise" in err


def test_init_advertise_url_goes_into_config_and_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "node"
    status = hashmesh(
        [
            "--dir",
            str(node),
            "init",
            "--origin",
            ORIGIN,
            "--listen",
            "0.0.0.0:8443",
            "--advertise-url",
            "https://hotline-adv.example:443/",
        ]
    )
    assert status == 0
    assert load_config(node).api.advertise == "https://hotline-adv.example:443"
    status, out, _err = _card(capsys, node)
    assert status == 0
    assert json.loads(out)["url"] == "https://hotline-adv.example:443"
    # --advertise-url on the command wins over the config.
    status, out, _err = _card(capsys, node, "--advertise-url", "https://10.1.2.3:9443")
    assert json.loads(out)["url"] == "https://10.1.2.3:9443"


def test_listen_address_is_the_default_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "node"
    init_node(node, ORIGIN, listen="[::1]:9000")
    status, out, _err = _card(capsys, node)
    assert status == 0
    assert json.loads(out)["url"] == "https://[::1]:9000"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("'http://a.example:1'", "must be https://HOST:PORT"),
        ("'https://a.example:1/api'", "must be https://HOST:PORT"),
        ("'https://0.0.0.0:8443'", "any-address"),
        ("'https://a.example:99999'", "invalid port"),
        ("8443", "must be a string"),
    ],
)
def test_bad_advertise_is_named(tmp_path: Path, value: str, message: str) -> None:
    node = tmp_path / "node"
    init_node(node, ORIGIN)
    config = node / "config.toml"
    config.write_text(
        config.read_text(encoding="utf-8") + f"\n[api]\nadvertise = {value}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(node)
    assert message in str(caught.value)
    assert "api.advertise" in str(caught.value)


def test_unknown_api_setting_is_an_error(tmp_path: Path) -> None:
    node = tmp_path / "node"
    init_node(node, ORIGIN)
    config = node / "config.toml"
    config.write_text(
        config.read_text(encoding="utf-8") + "\n[api]\nadvertize = 'https://a:1'\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"unknown \[api\] setting\(s\) advertize"):
        load_config(node)
