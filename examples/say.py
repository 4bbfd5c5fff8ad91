"""One event per line on stdout: ``event key=value ...``."""
from __future__ import annotations

import json


def say(event: str, **fields: object) -> None:
    """Print one event as ``event key=value ...``; values with spaces are JSON-quoted."""
    parts = [event]
    for key, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        if isinstance(value, str) and (not value or any(c in value for c in ' "=\\')):
            text = json.dumps(value)
        parts.append(f"{key}={text}")
    print(" ".join(parts), flush=True)
