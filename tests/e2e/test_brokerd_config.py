"""A real ``brokerd`` process configured by a TOML file, the environment and flags; its
start-up errors for bad configuration and for an address in use."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.__main__ import EXIT_CONFIG, EXIT_OS_ERROR
from client import SyncClient

from ..broker_process import ROOT, BrokerProcess


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """brokerd children see no LOCKGATE_* variable but those a test sets."""
    for name in list(os.environ):
        if name.startswith("LOCKGATE_"):
            monkeypatch.delenv(name)


def brokerd(*args: str) -> subprocess.CompletedProcess[str]:
    """Run brokerd to its end (it must not start serving)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.run([sys.executable, "-m", "broker", *args], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


class ConfiguredBroker(BrokerProcess):
    """``brokerd --config FILE ARGS``: no host, port or data flags of its own."""

    def __init__(self, config: Path, data_dir: Path, args: tuple[str, ...] = ()) -> None:
        super().__init__(data_dir, args=args)
        self.config = config

    def command(self) -> list[str]:
        return [sys.executable, "-m", "broker", "--config", str(self.config), *self.args]


def test_a_real_broker_takes_flag_over_env_over_file_over_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    config = tmp_path / "lockgate.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = 0\ndata_dir = {json.dumps(str(data))}\nfsync = "never"\n'
        'max_message = 2000\nnode_id = "from-file"\nmax_batch = 5\nlog_level = "warning"\n')
    monkeypatch.setenv("LOCKGATE_NODE_ID", "from-env")
    monkeypatch.setenv("LOCKGATE_MAX_BATCH", "6")
    proc = ConfiguredBroker(config, data, args=("--max-batch", "7"))
    with proc:
        with SyncClient(proc.addr, timeout=30) as c:
            info = c.server_info
            assert (info.max_batch, info.node, info.max_message) == (7, "from-env", 2000)
            assert info.max_frame == 16 * 1024 * 1024  # the default
            c.create_queue("q")
            c.publish("q", b"x" * 2000)
        assert (data / "wal").is_dir()
        assert proc.stop() == 0
    # --print-config of the same sources says where each came from.
    done = brokerd("--config", str(config), "--max-batch", "7", "--print-config", "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)["settings"]
    assert {k: (got[k]["value"], got[k]["source"]) for k in ("max_batch", "node_id", "max_message", "max_frame")} == {
        "max_batch": (7, "flag"), "node_id": ("from-env", "env"), "max_message": (2000, "file"),
        "max_frame": (16 * 1024 * 1024, "default")}


def test_invalid_configuration_stops_a_real_broker_before_it_listens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "lockgate.toml"
    config.write_text(f'port = 0\ndata_dir = {json.dumps(str(tmp_path / "data"))}\nsegment_bytes = "64MiB"\n')
    done = brokerd("--config", str(config))
    assert done.returncode == EXIT_CONFIG
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"brokerd: invalid configuration: segment_bytes (from file {config}): expected an integer, "
        "got a string ('64MiB')"]
    assert not (tmp_path / "data").exists()
    monkeypatch.setenv("LOCKGATE_SEGMENT_BYTES", "67108864")
    monkeypatch.setenv("LOCKGATE_FSYNC", "al")
    done = brokerd("--config", str(config))
    assert done.returncode == EXIT_CONFIG
    assert done.stderr.splitlines() == [
        "brokerd: invalid configuration: fsync (from env LOCKGATE_FSYNC): 'al' is not one of always, interval, never"]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_named_not_the_data_directory(tmp_path: Path, taken_port: int) -> None:
    port = taken_port
    data = tmp_path / "data"
    done = brokerd("--host", "127.0.0.1", "--port", str(port), "--data", str(data))
    assert done.returncode == EXIT_OS_ERROR
    assert "listening" not in done.stdout
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("brokerd:")]
    assert lines == [f"brokerd: cannot listen on 127.0.0.1:{port}: the address is in use "
                     "(another process listens there)"]
    assert str(data) not in done.stderr and "Traceback" not in done.stderr
