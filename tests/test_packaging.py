"""The service packaging in packaging/: the systemd unit and the Dockerfile.

- The unit has what running a broker for years needs (a user of its own, its state
  directory as the data directory, SIGTERM with time for the clean shutdown, restarts
  except after the exit statuses that need an operator, a descriptor limit, hardening),
  and ``systemd-analyze verify`` accepts it where that command exists.
- The Dockerfile, read by Docker's own parser (the ``dockerfile`` package), runs the
  broker as a non-root user with a volume for its data, a health check and SIGTERM; its
  build context (.dockerignore) keeps every package ``pip install .`` installs.
- The environment each of them sets, with the example config file, is a configuration
  the broker accepts.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from broker.__main__ import EXIT_CONFIG, EXIT_DAMAGED
from broker.settings import load

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
UNIT = PACKAGING / "lockgate.service"
DOCKERFILE = PACKAGING / "Dockerfile"
CONFIG = PACKAGING / "lockgate.toml"


def unit_entries(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections, each a list of (key, value) in order (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"a key before any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def one(entries: list[tuple[str, str]], key: str) -> str:
    values = [v for k, v in entries if k == key]
    assert len(values) == 1, f"{key}= appears {len(values)} times"
    return values[0]


def unit_environment(entries: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for key, value in entries:
        if key == "Environment":
            for word in shlex.split(value):
                name, _, val = word.partition("=")
                env[name] = val
    return env


def test_the_unit_runs_the_broker_as_a_service() -> None:
    service = unit_entries(UNIT.read_text())["Service"]
    assert one(service, "User") == one(service, "Group") == "lockgate"
    state = one(service, "StateDirectory")
    env = unit_environment(service)
    assert env["LOCKGATE_DATA_DIR"] == f"/var/lib/{state}" == one(service, "WorkingDirectory")
    command = shlex.split(one(service, "ExecStart"))
    assert Path(command[0]).name == "brokerd"
    # SIGTERM is the broker's clean shutdown; it gets the main process only, with time.
    assert one(service, "KillSignal") == "SIGTERM" and one(service, "KillMode") == "mixed"
    assert int(one(service, "TimeoutStopSec")) >= 30
    assert one(service, "Restart") == "on-failure"
    assert sorted(int(s) for s in one(service, "RestartPreventExitStatus").split()) == sorted(
        [EXIT_DAMAGED, EXIT_CONFIG])
    assert int(one(service, "LimitNOFILE")) >= 65536
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("CapabilityBoundingSet", "")]:
        assert one(service, key) == value, key
    assert "multi-user.target" in one(unit_entries(UNIT.read_text())["Install"], "WantedBy")


def test_the_unit_and_the_example_config_make_a_valid_configuration() -> None:
    service = unit_entries(UNIT.read_text())["Service"]
    command = shlex.split(one(service, "ExecStart"))
    assert command[1:] == ["--config", "/etc/lockgate/lockgate.toml"]
    config = load({}, unit_environment(service), CONFIG).config
    assert config.data_dir == Path("/var/lib/lockgate")
    assert str(config.log_format) == "json"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (apt-get install systemd); the keys are checked above")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    brokerd = Path(sys.executable).parent / "brokerd"
    if not brokerd.exists():
        pytest.skip(f"no brokerd beside {sys.executable} for ExecStart to name")
    # verify checks that ExecStart's program exists: point it at this environment's.
    unit = tmp_path / "lockgate.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/brokerd", str(brokerd)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "lockgate.service" not in done.stdout + done.stderr, done.stdout + done.stderr  # no warnings


def test_systemd_analyze_verify_refuses_a_broken_unit(tmp_path: Path) -> None:
    """The control for the test above: verify does complain about a bad key and program."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "lockgate.service"
    unit.write_text(UNIT.read_text().replace("KillMode=mixed", "KillMode=mixd"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "kill mode" in done.stderr.lower() and done.returncode != 0  # and /usr/local/bin/brokerd is missing


# --- the Dockerfile --------------------------------------------------------------------------


def docker_commands() -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    dockerfile = pytest.importorskip("dockerfile", reason="the dockerfile parser is in the test extra")
    return [(c.cmd.upper(), tuple(c.value), tuple(c.flags)) for c in dockerfile.parse_file(str(DOCKERFILE))]


def test_the_dockerfile_runs_the_broker_as_a_non_root_user_with_a_volume() -> None:
    commands = docker_commands()
    by_cmd: dict[str, list[tuple[tuple[str, ...], tuple[str, ...]]]] = {}
    for cmd, value, flags in commands:
        by_cmd.setdefault(cmd, []).append((value, flags))
    assert commands[0][:2] == ("FROM", ("python:3.11-slim",))
    assert by_cmd["USER"][-1][0] == ("lockgate",)
    env: dict[str, str] = {}
    for value, _ in by_cmd["ENV"]:
        env.update(zip(value[::2], value[1::2]))
    assert by_cmd["VOLUME"] == [((env["LOCKGATE_DATA_DIR"],), ())]
    assert env["LOCKGATE_PORT"] in by_cmd["EXPOSE"][0][0]
    (check, check_flags), = by_cmd["HEALTHCHECK"]
    assert check[:3] == ("CMD", "brokerctl", "ping") and any(f.startswith("--interval=") for f in check_flags)
    assert by_cmd["STOPSIGNAL"] == [(("SIGTERM",), ())]
    assert by_cmd["ENTRYPOINT"] == [(("brokerd",), ())]
    # The user comes before the entry point, and the broker's settings are valid.
    order = [cmd for cmd, _, _ in commands]
    assert order.index("USER") < order.index("ENTRYPOINT")
    config = load({}, env).config
    assert (config.host, config.port, config.data_dir) == ("0.0.0.0", 7878, Path("/var/lib/lockgate"))


def test_the_build_context_keeps_what_pip_install_needs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    kept = {line[1:].strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.startswith("!")}
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= kept
    assert packages <= kept, packages - kept
    scripts = pyproject["project"]["scripts"]
    assert {"brokerd", "brokerctl"} <= set(scripts)
