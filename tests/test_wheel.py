"""The installed footprint: the wheel is built from this checkout and installed into a
fresh virtual environment (no system site-packages), where ``brokerd`` and ``brokerctl``
run; it holds the three packages ``protocol``, ``broker`` and ``client`` and nothing else
(no ``tools``, ``tests`` or ``examples``).

The build runs on a copy of the checkout (tools/, tests/ and examples/ included), so that a stale ``build/`` directory cannot add
files to the wheel. The runtime dependencies come from the package index (pip's cache
makes that quick after the first time).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What is not copied: version control, environments, build output, caches, data.
_NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
                                     ".pytest_cache", ".hypothesis", ".import_linter_cache", "lockgate-data",
                                     "results")
#: A generous bound for each step: a cold pip cache downloads the dependencies.
_STEP_TIMEOUT_S = 300

pytestmark = pytest.mark.wheel


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=_STEP_TIMEOUT_S)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``python -m build --wheel`` makes of a copy of the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_COPIED)  # tools/, tests/, examples/ too: none may get in
    _run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp / "dist", src)
    [built] = (tmp / "dist").glob("lockgate-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ``bin`` directory of a fresh venv with the wheel (and its dependencies) installed."""
    env = tmp_path_factory.mktemp("venv") / "env"
    _run(sys.executable, "-m", "venv", env)  # no --system-site-packages: only what the wheel brings
    _run(env / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel)
    yield env / "bin"


def test_the_wheel_holds_only_the_three_packages(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    top = {name.split("/", 1)[0] for name in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"protocol", "broker", "client"}
    assert not {"tools", "tests", "examples"} & top
    assert {"protocol/py.typed", "broker/py.typed", "client/py.typed", "client/cli/__init__.py",
            "broker/walctl.py"} <= set(names)
    [info] = dist_info
    with zipfile.ZipFile(wheel) as zf:
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    assert "brokerctl = client.cli:main" in entry_points
    assert "[lockgate.brokerctl]" in entry_points


def test_the_installed_commands_run(venv: Path) -> None:
    assert "--fsync" in _run(venv / "brokerd", "--help").stdout
    top = _run(venv / "brokerctl", "--help").stdout
    for command in ("ping", "publish", "consume", "topic", "wal", "user"):
        assert f"\n  {command} " in top, command
    # The broker's offline commands join through the entry points: run one of each.
    assert "verify" in _run(venv / "brokerctl", "wal", "--help").stdout
    assert "passwd" in _run(venv / "brokerctl", "user", "--help").stdout


def test_no_top_level_tools_package_is_installed(venv: Path, tmp_path: Path) -> None:
    # From a directory outside the checkout, so that only the venv's packages are found.
    probe = "import importlib.util as u; print([m for m in ('tools', 'tests', 'examples', 'client.cli') " \
            "if u.find_spec(m) is not None])"
    found = _run(venv / "python", "-I", "-c", probe, cwd=tmp_path).stdout.strip()
    assert found == "['client.cli']"
