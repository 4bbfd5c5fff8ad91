"""The public SDK type-checks under ``mypy --strict`` as a user's program sees it.

A small service written against the public API (both clients, subscriptions, reconnect,
the spill file) must pass ``mypy --strict``; a program with wrong types must not (so the
methods made from the op table carry real types, not ``Any``). The SDK's own code is
checked by tests/test_layering.py; here it is only followed (``--follow-imports=silent``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

USER_PROGRAM = '''
import asyncio

from client import (Client, ConnectionClosed, Delivery, IncomingMessage, Message, PublishResult, QueueStats,
                    Reconnect, Spill, SpillFull, SyncClient)


async def handle(msg: IncomingMessage) -> None:
    body: bytes = msg.body
    print(body, msg.attempt, msg.id)


async def main() -> None:
    async with Client.connect("127.0.0.1:7878", reconnect=Reconnect(max_attempts=5),
                              spill=Spill("/tmp/lg.spill", max_bytes=1 << 20)) as c:
        created: bool = await c.create_queue("jobs", kind="fifo", shards=2, max_attempts=3)
        msg_id: int = await c.publish("jobs", b"x", key="k", dedup_id=b"d")
        batch: PublishResult = await c.publish_batch("jobs", [b"a", Message(b"b", priority=3)])
        ids: range = batch.ids
        got: list[Delivery] = await c.consume("jobs", max=10, wait_ms=100)
        await c.ack("jobs", [d.id for d in got])
        try:
            later: int | None = await c.publish_or_spill("jobs", Message(b"c"))
        except (SpillFull, ConnectionClosed):
            later = None
        stats: QueueStats = await c.queue_stats("jobs")
        async with c.subscribe("jobs", credit=4) as sub:
            async for m in sub:
                async with m.process(reraise=False):
                    await handle(m)
        print(created, msg_id, ids, later, stats.ready, c.reconnects, c.info.max_batch)
    with SyncClient("127.0.0.1:7878") as s:
        n: int = s.publish("jobs", b"y")
        print(n, [d.body for d in s.consume("jobs", max=2)])


asyncio.run(main())
'''

WRONG_PROGRAM = '''
from client import Client


async def main() -> None:
    async with Client.connect("127.0.0.1:7878") as c:
        wrong: str = await c.publish("jobs", b"x")
        await c.publish("jobs", b"x", no_such_option=1)
        async with c.subscribe("jobs") as sub:
            async for m in sub:
                n: int = m.body
'''


def _mypy_strict(program: str, tmp_path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "user_app.py"
    path.write_text(program)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-color-output",
         "--config-file", os.devnull, "--cache-dir", str(cache), str(path)],
        cwd=tmp_path, env={**os.environ, "MYPYPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cache(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    c = getattr(pytestconfig, "cache", None)
    return Path(c.mkdir("mypy-strict-user")) if c is not None else tmp_path_factory.mktemp("mypy-strict-user")


def test_a_user_program_passes_mypy_strict(tmp_path: Path, cache: Path) -> None:
    proc = _mypy_strict(USER_PROGRAM, tmp_path, cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_wrong_types_are_caught(tmp_path: Path, cache: Path) -> None:
    proc = _mypy_strict(WRONG_PROGRAM, tmp_path, cache)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line.split(": error: ")[1] for line in proc.stdout.splitlines() if ": error: " in line]
    assert len(errors) == 3, proc.stdout
    assert 'expression has type "int", variable has type "str"' in errors[0]
    assert 'Unexpected keyword argument "no_such_option"' in errors[1]
    assert 'expression has type "bytes", variable has type "int"' in errors[2]
