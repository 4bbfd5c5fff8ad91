"""brokerd's settings: one declaration per BrokerConfig field, read from flags, the
environment and a TOML file (flag > env > file > default), checked with one-line errors.

Through click's CliRunner with ``--print-config`` (nothing is started), and through
``broker.settings`` directly for declarations other than BrokerConfig's.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from broker.__main__ import EXIT_CONFIG, main
from broker.config import BrokerConfig, setting
from broker.settings import (
    CONFIG_ENV, TABLE_END, TABLE_START, ConfigError, Source, Spec, click_options, load, markdown_table, replace_table,
    specs)
from broker.wal import FsyncPolicy

from ..tlsfiles import make_pki


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LOCKGATE_* variable of the caller's shell leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("LOCKGATE_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """A configuration these tests expect to be refused must not start a broker instead."""

    async def refuse(*args: object) -> None:
        raise AssertionError("brokerd would have started a broker")

    monkeypatch.setattr("broker.__main__.run", refuse)


def brokerd(*args: str, env: dict[str, str] | None = None, expect: int = 0) -> Result:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == expect, (result.exit_code, result.output, result.exception)
    return result


def effective(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``brokerd --print-config --json``'s settings."""
    settings: dict[str, Any] = json.loads(brokerd("--print-config", "--json", *args, env=env).stdout)["settings"]
    return settings


def error_line(result: Result) -> str:
    (line,) = result.stderr.splitlines()
    assert line.startswith("brokerd: "), line
    return line


# -- the declaration ----------------------------------------------------------------------------

def test_every_field_of_broker_config_is_a_setting() -> None:
    assert [s.name for s in specs()] == [f.name for f in dataclasses.fields(BrokerConfig)]
    for s in specs():
        assert s.help and s.flag.startswith("--") and s.env == "LOCKGATE_" + s.name.upper()


def test_defaults_are_the_dataclass_defaults() -> None:
    got = effective()
    default = BrokerConfig()
    for s in specs():
        assert got[s.name]["source"] == "default" and got[s.name]["from"] is None
        want = getattr(default, s.name)
        assert got[s.name]["value"] == (str(want) if isinstance(want, (Path, enum.Enum)) else want)


def other_value(s: Spec) -> tuple[str, Any]:
    """A valid value for ``s`` other than its default: as text, and as TOML/JSON gives it."""
    if s.choices:
        value = next(c for c in s.choices if c != str(s.default))
        return value, value
    if s.kind is int:
        value = int(s.lo) if s.lo is not None and s.lo != s.default else int(s.default or 0) + 1
        if s.name == "max_frame":
            value = s.default + 1  # it must stay above max_message
        return str(value), value
    if s.kind is Path:
        return "/srv/lockgate-other", "/srv/lockgate-other"
    if s.kind is bool:
        return ("false", False) if s.default else ("true", True)
    if s.kind is float:
        return "2.5", 2.5
    for text in ("other-value", "127.0.0.1:0"):  # metrics_addr is HOST:PORT
        try:
            if s.check is not None:
                s.check(text)
        except ValueError:
            continue
        return text, text
    raise AssertionError(f"no other value for {s.name}")


@pytest.mark.parametrize("name", [s.name for s in specs()])
def test_each_setting_from_each_source(tmp_path: Path, name: str) -> None:
    s = next(s for s in specs() if s.name == name)
    text, value = other_value(s)
    # users_file must name a valid users file, and auth = "required" needs one.
    users = tmp_path / "users.toml"
    users.write_text("version = 1\n")
    if name == "users_file":
        text = value = str(users)
    base = {"LOCKGATE_USERS_FILE": str(users)} if name == "auth" else {}
    if name.startswith("tls_"):  # real PEM files; a certificate needs its key and the other way round
        pki = make_pki(tmp_path / "pki")
        files = {"tls_cert": pki.cert, "tls_key": pki.key, "tls_client_ca": pki.ca}
        text = value = str(files[name])
        base = {f"LOCKGATE_{k.upper()}": str(v) for k, v in files.items() if k not in (name, "tls_client_ca")}
    config = tmp_path / "lockgate.toml"
    config.write_text(f"{name} = {json.dumps(value)}\n")
    assert effective("--config", str(config), env=base)[name] == {
        "value": value, "source": "file", "from": str(config)}
    assert effective(env={**base, s.env: text})[name] == {"value": value, "source": "env", "from": s.env}
    flag = [s.flag] if s.kind is bool and value else [s.flag, text]
    if s.kind is bool and not value:
        flag = ["--no-" + s.flag[2:]]
    assert effective(*flag, env=base)[name] == {"value": value, "source": "flag", "from": s.flag}


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = tmp_path / "lockgate.toml"
    config.write_text('port = 1111\nfsync = "interval"\nmax_batch = 50\nnode_id = "from-file"\n')
    env = {"LOCKGATE_PORT": "2222", "LOCKGATE_FSYNC": "never", "LOCKGATE_NODE_ID": "from-env"}
    got = effective("--config", str(config), "--port", "3333", env=env)
    assert got["port"] == {"value": 3333, "source": "flag", "from": "--port"}
    assert got["fsync"] == {"value": "never", "source": "env", "from": "LOCKGATE_FSYNC"}
    assert got["node_id"] == {"value": "from-env", "source": "env", "from": "LOCKGATE_NODE_ID"}
    assert got["max_batch"] == {"value": 50, "source": "file", "from": str(config)}
    assert got["host"] == {"value": "127.0.0.1", "source": "default", "from": None}


def test_the_config_file_may_come_from_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "lockgate.toml"
    config.write_text("max_waiters = 7\n")
    out = json.loads(brokerd("--print-config", "--json", env={CONFIG_ENV: str(config)}).stdout)
    assert out["config_file"] == str(config)
    assert out["settings"]["max_waiters"]["source"] == "file"
    # --config wins over LOCKGATE_CONFIG.
    other = tmp_path / "other.toml"
    other.write_text("max_waiters = 9\n")
    got = effective("--config", str(other), env={CONFIG_ENV: str(config)})
    assert got["max_waiters"]["value"] == 9


def test_an_optional_setting_is_none_when_empty(tmp_path: Path) -> None:
    assert effective(env={"LOCKGATE_METRICS_ADDR": ""})["metrics_addr"] == {
        "value": None, "source": "env", "from": "LOCKGATE_METRICS_ADDR"}
    assert effective("--metrics-addr", "")["metrics_addr"]["value"] is None


def test_print_config_is_a_config_file_with_each_origin(tmp_path: Path) -> None:
    config = tmp_path / "lockgate.toml"
    config.write_text('data_dir = "/var/lib/lockgate"\nfsync = "interval"\n')
    out = brokerd("--config", str(config), "--print-config", "--port", "0", env={"LOCKGATE_MAX_BATCH": "5"}).stdout
    lines = out.splitlines()
    assert lines[0] == f"# lockgate effective configuration; config file {config} (flag --config)"
    assert [ln for ln in lines if ln.startswith("port =")][0].endswith("# flag --port")
    assert [ln for ln in lines if ln.startswith("max_batch =")][0].endswith("# env LOCKGATE_MAX_BATCH")
    assert [ln for ln in lines if ln.startswith("fsync =")][0].endswith(f"# file {config}")
    assert [ln for ln in lines if ln.startswith("host =")][0].endswith("# default")
    # It reads back as a config file that gives the same configuration.
    again = tmp_path / "again.toml"
    again.write_text(out)
    parsed = tomllib.loads(out)
    assert parsed["port"] == 0 and parsed["data_dir"] == "/var/lib/lockgate" and "metrics_addr" not in parsed
    values = {k: v["value"] for k, v in effective("--config", str(again)).items()}
    assert values == {k: v["value"] for k, v in effective("--config", str(config), "--port", "0",
                                                          env={"LOCKGATE_MAX_BATCH": "5"}).items()}


def test_print_config_does_not_touch_the_data_directory(tmp_path: Path) -> None:
    brokerd("--print-config", "--data", str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()


# -- invalid configuration ------------------------------------------------------------------

@pytest.mark.parametrize("file_text, env, args, expected", [
    ("prot = 7878\n", {}, [], "unknown setting 'prot' in config file {file} (did you mean port?)"),
    ("data-dir = '/x'\n", {}, [], "unknown setting 'data-dir' in config file {file} (did you mean data_dir?)"),
    ("port = '7878'\n", {}, [], "port (from file {file}): expected an integer, got a string ('7878')"),
    ("fsync = true\n", {}, [], "fsync (from file {file}): expected a string, got a boolean (True)"),
    ("segment_bytes = 1000\n", {}, [], "segment_bytes (from file {file}): 1000 is below the minimum 1048576"),
    ("fsync = 'sometimes'\n", {}, [],
     "fsync (from file {file}): 'sometimes' is not one of always, interval, never"),
    ("port = 1\n", {"LOCKGATE_PORT": "seventy"}, [], "port (from env LOCKGATE_PORT): 'seventy' is not an integer"),
    ("", {"LOCKGATE_PORT": "70000"}, [], "port (from env LOCKGATE_PORT): 70000 is above the maximum 65535"),
    ("", {"LOCKGATE_LOG_FORMAT": "xml"}, [],
     "log_format (from env LOCKGATE_LOG_FORMAT): 'xml' is not one of text, json"),
    ("", {"LOCKGATE_NODE_ID": ""}, [], "node_id (from env LOCKGATE_NODE_ID): '': must not be empty"),
    ("", {}, ["--fsync-interval-ms", "0"], "fsync_interval_ms (from flag --fsync-interval-ms): 0 is below the minimum 1"),
    ("", {}, ["--recover", "skip"], "recover (from flag --recover): 'skip' is not one of refuse, truncate"),
    ("max_message = 2000000\n", {}, ["--max-frame", "1000000"],
     "max_frame must exceed max_message by at least 4096 bytes "
     "(max_frame = 1000000 from flag --max-frame; max_message = 2000000 from file {file})"),
    ("port = \n", {}, [], "config file {file} (from flag --config) is not valid TOML: "),
])
def test_invalid_configuration_fails_with_one_line_naming_it(
        tmp_path: Path, file_text: str, env: dict[str, str], args: list[str], expected: str) -> None:
    config = tmp_path / "lockgate.toml"
    config.write_text(file_text)
    for print_config in ([], ["--print-config"]):
        result = brokerd("--config", str(config), *args, *print_config, env=env, expect=EXIT_CONFIG)
        assert error_line(result).startswith("brokerd: invalid configuration: " + expected.format(file=config))
        assert result.stdout == ""


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    line = error_line(brokerd("--print-config", env={CONFIG_ENV: str(missing)}, expect=EXIT_CONFIG))
    assert line == (f"brokerd: invalid configuration: cannot read config file {missing} "
                    f"(from env {CONFIG_ENV}): No such file or directory")


def test_a_bad_command_line_is_a_configuration_error() -> None:
    assert "No such option" in brokerd("--prot", "1", expect=EXIT_CONFIG).stderr
    assert "--json goes with --print-config" in brokerd("--json", expect=EXIT_CONFIG).stderr


def test_unknown_lockgate_variables_are_left_alone() -> None:
    # brokerctl's LOCKGATE_ADDR lives in the same environment.
    assert effective(env={"LOCKGATE_ADDR": "10.0.0.1:7878", "LOCKGATE_PROT": "1"})["port"]["source"] == "default"


# -- a new setting needs nothing but its field -------------------------------------------------

class Color(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, kw_only=True)
class Grown:
    """A config as BrokerConfig might grow: each kind of field a setting may be."""

    metrics_addr: str | None = field(default=None, metadata={"help": "Serve metrics at HOST:PORT."})
    max_connections: int = field(default=1000, metadata=setting("Most connections.", min=1, max=100_000))
    idle_timeout_s: float = field(default=30.0, metadata=setting("Close idle connections.", min=0.5))
    color: Color = field(default=Color.RED, metadata=setting("A color."))
    tracing: bool = field(default=False, metadata=setting("Trace requests."))
    spill_limit: int | None = field(default=None, metadata=setting("Spill limit.", min=0))


def test_new_fields_are_picked_up_from_their_metadata(tmp_path: Path) -> None:
    config = tmp_path / "grown.toml"
    config.write_text('idle_timeout_s = 2\ncolor = "blue"\nspill_limit = 5\n')
    loaded = load({"max_connections": "50", "tracing": True}, {"LOCKGATE_METRICS_ADDR": "127.0.0.1:0"},
                  config, cls=Grown)
    assert loaded.config == Grown(metrics_addr="127.0.0.1:0", max_connections=50, idle_timeout_s=2.0,
                                  color=Color.BLUE, tracing=True, spill_limit=5)
    assert {n: o.source for n, o in loaded.origins.items()} == {
        "metrics_addr": Source.ENV, "max_connections": Source.FLAG, "idle_timeout_s": Source.FILE,
        "color": Source.FILE, "tracing": Source.FLAG, "spill_limit": Source.FILE}
    with pytest.raises(ConfigError, match=r"^idle_timeout_s \(from env LOCKGATE_IDLE_TIMEOUT_S\): 0.1 is below"):
        load({}, {"LOCKGATE_IDLE_TIMEOUT_S": "0.1"}, cls=Grown)
    with pytest.raises(ConfigError, match=r"^tracing \(from env LOCKGATE_TRACING\): 'maybe' is not a boolean"):
        load({}, {"LOCKGATE_TRACING": "maybe"}, cls=Grown)

    # And their flags: --tracing/--no-tracing for a bool, text for the rest.
    @click.command()
    @click_options(Grown)
    def cli(**flags: Any) -> None:
        click.echo(json.dumps(load(flags, {}, cls=Grown).as_json()["settings"]))

    out = CliRunner().invoke(cli, ["--no-tracing", "--color", "blue", "--spill-limit", ""])
    got = json.loads(out.stdout)
    assert got["tracing"] == {"value": False, "source": "flag", "from": "--tracing"}
    assert got["color"]["value"] == "blue" and got["spill_limit"]["value"] is None


def test_a_field_without_a_declaration_is_refused() -> None:
    @dataclass(frozen=True)
    class Bare:
        max_things: int = 3

    @dataclass(frozen=True)
    class Typo:
        max_things: int = field(default=3, metadata={"help": "Things.", "maximum": 4})

    @dataclass(frozen=True)
    class Listy:
        peers: list[str] = field(default_factory=list, metadata={"help": "Peers."})

    with pytest.raises(TypeError, match=r"Bare.max_things is not declared as a setting"):
        specs(Bare)
    with pytest.raises(TypeError, match=r"unknown setting metadata \['maximum'\]"):
        specs(Typo)
    with pytest.raises(TypeError, match=r"Listy.peers: a setting must be"):
        specs(Listy)


def test_the_docs_table_is_the_declarations() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    start = text.index(TABLE_START) + len(TABLE_START)
    assert text[start:text.index(TABLE_END, start)] == markdown_table(), (
        "docs/operations.md's settings table differs from BrokerConfig: "
        "run python -m broker.settings docs/operations.md")
    assert replace_table(text) == text


def test_code_may_still_build_small_configs() -> None:
    # The bounds bind operators; tests build brokers with tiny segments.
    assert BrokerConfig(segment_bytes=4096, fsync="never").fsync is FsyncPolicy.NEVER
