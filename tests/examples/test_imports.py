"""The examples are programs a user copies: they use the SDK (``client``) and trio, never
the broker's own packages."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

from tools.procs import ROOT

ALLOWED = set(sys.stdlib_module_names) | {"client", "trio"}


def test_examples_import_only_the_sdk_trio_and_the_standard_library() -> None:
    files = sorted((ROOT / "examples").rglob("*.py"))
    assert files
    bad: list[str] = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            bad += [f"{Path(path).relative_to(ROOT)}: {name}" for name in names if name.split(".")[0] not in ALLOWED]
    assert not bad
