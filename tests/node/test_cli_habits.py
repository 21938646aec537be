"""CLI habits: --version, a closed pipe ends quietly, JSON logs, every limit a setting."""

from __future__ import annotations

import fcntl
import importlib.metadata
import io
import json
import logging
import os
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.cli import build_parser
from node.cli import main as hashmesh
from node.cli.logs import JsonFormatter, configure_logging
from node.cli.progress import progress_bar
from node.config import ApiLimits, LogSettings, SyncSettings, load_config
from node.errors import ConfigError
from node.ledger import Ledger
from node.ledger.hashlist import HashListReader
from node.ledger.provision import init_node

ORIGIN = "habits.example/hashmesh"


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    path = tmp_path / "n"
    init_node(path, ORIGIN)
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        hashmesh(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"hashmesh {importlib.metadata.version('hashmesh')}\n"


def test_output_into_a_closed_pipe_ends_quietly(node_dir: Path) -> None:
    lines = [f"{i:064x}\n" for i in range(3000)]  # ~400 kB of `log` output: beyond a pipe buffer
    with Ledger.open(node_dir) as ledger:
        ledger.import_lines(HashListReader(fmt="lines", default_type="sha256").read(iter(lines)))
    # What `hashmesh log --limit 3000 | head -1` does to hashmesh.
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "--dir", str(node_dir), "log", "--limit", "3000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141  # 128 + SIGPIPE, as a shell reports it
    assert first.split()[:2] == [b"0", b"add"]
    assert err == ""  # no BrokenPipeError, no traceback


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger's handlers and levels back: configure_logging replaces them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    access = logging.getLogger("hashmesh.access").level
    aiohttp_access = logging.getLogger("aiohttp.access").level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("hashmesh.access").setLevel(access)
    logging.getLogger("aiohttp.access").setLevel(aiohttp_access)


@pytest.mark.usefixtures("root_logging")
def test_json_log_lines_carry_the_access_fields() -> None:
    stream = io.StringIO()
    configure_logging(level="info", fmt="json", stream=stream)
    access = {"listener": "api", "peer": "b", "role": "peer", "route": "/v1/match"}
    logging.getLogger("hashmesh.access").info("a\nb", extra={"access": access})
    logging.getLogger("hashmesh.sync").debug("not at info")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("hashmesh.api").exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # one object per line, newlines in messages escaped
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "a\nb" and first["level"] == "INFO"
    assert first["logger"] == "hashmesh.access" and first["route"] == "/v1/match"
    assert first["time"].endswith("Z")
    assert "ValueError: boom" in second["exception"]


@pytest.mark.usefixtures("root_logging")
def test_text_is_the_default_and_access_can_be_silenced() -> None:
    stream = io.StringIO()
    configure_logging(level="info", fmt="text", stream=stream, access=False)
    logging.getLogger("hashmesh.access").info("GET /v1/logs")
    logging.getLogger("hashmesh.sync").info("synced")
    assert "GET /v1/logs" not in stream.getvalue()
    assert " INFO hashmesh.sync: synced" in stream.getvalue()
    assert isinstance(logging.getLogger().handlers[0].formatter, logging.Formatter)
    assert not isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)


def test_serve_takes_log_flags() -> None:
    args = build_parser().parse_args(["serve", "--log-format", "json", "--log-level", "debug"])
    assert (args.log_format, args.log_level, args.poll) == ("json", "debug", None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--log-format", "xml"])


def append(node_dir: Path, text: str) -> None:
    with (node_dir / "config.toml").open("a", encoding="utf-8") as f:
        f.write("\n" + text + "\n")


def test_limits_timing_and_logging_are_settings(node_dir: Path) -> None:
    assert load_config(node_dir).limits == ApiLimits()
    append(
        node_dir,
        "[api]\nmax_page = 500\npeer_rate = 20\nhandler_timeout = 5\n"
        "[sync]\npoll_interval = 60\nmax_backoff = 900\n"
        '[log]\nformat = "json"\nlevel = "warning"\naccess = false\n',
    )
    config = load_config(node_dir)
    assert config.limits == ApiLimits(max_page=500, peer_rate=20.0, handler_timeout=5.0)
    assert isinstance(config.limits.peer_rate, float)
    assert config.sync == SyncSettings(poll_interval=60.0, max_backoff=900.0)
    assert config.log == LogSettings(format="json", level="warning", access=False)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[api]\nmax_page = 0", "api.max_page must be a whole number, >= 1"),
        ("[api]\nmax_page = 1.5", "api.max_page must be a whole number"),
        ("[api]\npeer_rate = -1", "api.peer_rate must be a number of seconds, > 0"),
        ("[api]\npeer_rate = true", "api.peer_rate"),
        ("[api]\npage_size = 10", "unknown [api] setting(s) page_size"),
        ("[sync]\nmin_backoff = 10\nmax_backoff = 5", "must not exceed sync.max_backoff"),
        ("[sync]\npoll = 5", "unknown [sync] setting(s) poll"),
        ('[log]\nformat = "xml"', "log.format must be one of text, json"),
        ('[log]\nlevel = "loud"', "log.level must be one of"),
        ('[log]\naccess = "yes"', "log.access must be true or false"),
        ("[metrics]\nport = 1", "unknown setting(s) metrics"),
    ],
)
def test_bad_settings_are_named_in_one_line(node_dir: Path, toml: str, message: str) -> None:
    append(node_dir, toml)
    with pytest.raises(ConfigError) as caught:
        load_config(node_dir)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_import_json_reports_the_summary_and_every_invalid_line(
    node_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text(
        "type,value,labels\nsha256,{a},src:x\nsha256,nothex,src:x\nmd5,{b},\n".format(
            a="A" * 64, b="b" * 32
        ),
        encoding="utf-8",
    )
    status = hashmesh(["--dir", str(node_dir), "import", str(listing), "--json"])
    captured = capsys.readouterr()
    assert status == 1
    doc = json.loads(captured.out)
    assert doc["rejected"] is True and doc["imported"] == 0
    assert doc["invalid"] == [{"line": 3, "field": "value", "reason": doc["invalid"][0]["reason"]}]
    assert "nothex" not in captured.out  # the report names fields, never values
    status = hashmesh(["--dir", str(node_dir), "import", str(listing), "--json", "--skip-invalid"])
    doc = json.loads(capsys.readouterr().out)
    assert status == 0
    assert (doc["imported"], doc["start"], doc["size"], doc["lines_read"]) == (2, 0, 2, 3)
    assert [e["line"] for e in doc["invalid"]] == [3]
    assert doc["normalised"]  # the upper-case hex was lower-cased and said so


def test_export_writes_no_progress_when_stderr_is_not_a_terminal(
    node_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [f"{i:064x}\n" for i in range(25_000)]  # three export chunks
    with Ledger.open(node_dir) as ledger:
        ledger.import_lines(HashListReader(fmt="lines", default_type="sha256").read(iter(lines)))
    out = tmp_path / "x.csv"
    assert hashmesh(["--dir", str(node_dir), "export", "--format", "csv", "--out", str(out)]) == 0
    assert capsys.readouterr().err == f"wrote csv export of 25,000 entries to {out}\n"
    rows = out.read_text(encoding="utf-8").splitlines()
    assert len(rows) == 25_001 and rows[-1].startswith("24999,add,sha256,")


def test_progress_bar_on_a_terminal_shows_percentage_and_eta() -> None:
    master, slave = os.openpty()
    # A terminal of 100 columns (a fresh pty has none, and the bar fits its width).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    chunks: list[bytes] = []
    try:
        with os.fdopen(slave, "w", encoding="utf-8") as terminal:
            assert terminal.isatty()
            with progress_bar(terminal, 200, "export csv") as bar:
                bar(50)
                bar(200)
        # Closed: read to the end (EIO), not just whatever one read returns.
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    drawn = b"".join(chunks).decode("utf-8", "replace")
    assert "export csv" in drawn and "100%" in drawn and "200/200" in drawn
    assert "<" in drawn  # tqdm's elapsed<remaining: the ETA


def test_serve_run_in_process_puts_logging_back(
    node_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `serve` that ends (here: a damaged database) leaves no handler on its stderr
    and the process's GIL switch interval as it was.

    A handler left on the root logger wrote to a stream closed after the
    command returned, so every later log record in the process failed.
    """
    root = logging.getLogger()
    before = list(root.handlers), root.level, sys.getswitchinterval()
    (node_dir / "ledger.db").write_bytes(b"")
    assert hashmesh(["--dir", str(node_dir), "serve", "--listen", "127.0.0.1:0"]) == 1
    assert "empty" in capsys.readouterr().err
    assert (list(root.handlers), root.level, sys.getswitchinterval()) == before
