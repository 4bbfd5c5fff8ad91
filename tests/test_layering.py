"""Static checks that CI runs inside the suite: the import layering and mypy.

Both tools read their settings from pyproject.toml: the contracts in ``[tool.importlinter]``
(tools -> client -> protocol <- broker; only tools.bench reaches broker) and
the packages and strictness in ``[tool.mypy]``. They run as subprocesses of this
interpreter, so they check the code the way a developer's ``lint-imports`` and ``mypy``
would. Their caches live in pytest's cache directory (.pytest_cache, ignored by git), so a
second run re-checks only what changed.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
MYPY_PACKAGES: list[str] = tomllib.loads(PYPROJECT.read_text())["tool"]["mypy"]["files"]
# lint-imports prints a banner of box-drawing characters and arrows first (only recent
# versions have --no-logo); failure reports leave it out, and blank lines with it.
_BANNER = re.compile(r"[\s\u2190-\u21ff\u2500-\u25ff]*")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def cache_dir(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(pytestconfig, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None:
        return Path(cache.mkdir("static-checks"))
    return tmp_path_factory.mktemp("static-checks")


def test_import_contracts(cache_dir: Path) -> None:
    proc = _run(
        "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
        "--cache-dir", str(cache_dir / "import-linter"),  # config: pyproject.toml in ROOT
    )
    if proc.returncode != 0:
        report = "\n".join(
            line for line in (proc.stdout + proc.stderr).splitlines() if not _BANNER.fullmatch(line)
        )
        pytest.fail(f"lint-imports exited {proc.returncode}:\n{report}", pytrace=False)


@pytest.fixture(scope="module")
def mypy_run(cache_dir: Path) -> subprocess.CompletedProcess[str]:
    """One mypy run over every package in [tool.mypy] files; each test reads its part."""
    return _run(
        "-m", "mypy",
        "--config-file", str(PYPROJECT),
        "--cache-dir", str(cache_dir / "mypy"),
        "--no-color-output",
    )


def test_mypy_ran(mypy_run: subprocess.CompletedProcess[str]) -> None:
    """mypy ran (exit 0: clean, 1: type errors) and every error it found is in a package
    that has its own test below, so none can go unreported."""
    output = mypy_run.stdout + mypy_run.stderr
    if mypy_run.returncode not in (0, 1):
        pytest.fail(f"mypy could not check (exit {mypy_run.returncode}):\n{output}", pytrace=False)
    stray = [
        line for line in mypy_run.stdout.splitlines()
        if ": error:" in line and not line.startswith(tuple(f"{p}/" for p in MYPY_PACKAGES))
    ]
    if stray or (mypy_run.returncode == 1 and ": error:" not in mypy_run.stdout):
        pytest.fail(f"mypy failed outside the checked packages:\n{output}", pytrace=False)


@pytest.mark.parametrize("package", MYPY_PACKAGES)
def test_mypy(mypy_run: subprocess.CompletedProcess[str], package: str) -> None:
    lines = [line for line in mypy_run.stdout.splitlines() if line.startswith(f"{package}/")]
    errors = sum(": error:" in line for line in lines)
    if errors:
        pytest.fail(
            f"mypy: {errors} error(s) in {package}/ (settings: [tool.mypy] in pyproject.toml)\n"
            + "\n".join(lines),
            pytrace=False,
        )
