"""Both SDKs behind one awaited interface, for tests that run each case on each client.

Import ``api`` into a test module to get the fixture: the async :class:`~client.Client`,
or a :class:`~client.SyncClient` behind :class:`Threaded`, against the ``broker_addr``
broker.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest
import trio

from client import Client, SyncClient


class Threaded:
    """A :class:`SyncClient` driven from trio: every call runs in a worker thread."""

    def __init__(self, client: SyncClient) -> None:
        self.client = client
        self.info = client.server_info

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await trio.to_thread.run_sync(partial(method, *args, **kwargs))

        return call


@pytest.fixture(params=["async", "sync"])
async def api(request: pytest.FixtureRequest, broker_addr: tuple[str, int]) -> AsyncIterator[Any]:
    """The async client, or the blocking one behind :class:`Threaded`: same calls, awaited."""
    if request.param == "async":
        async with Client.connect(broker_addr) as client:
            yield client
    else:
        sync = await trio.to_thread.run_sync(partial(SyncClient, broker_addr))
        try:
            yield Threaded(sync)
        finally:
            sync.close()
