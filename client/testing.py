"""A pytest plugin for users' test suites: clients of the test broker.

    pytest -p broker.testing -p client.testing     # or nothing: installed, both load by themselves

- ``lockgate_client``: an async :class:`~client.api.Client` connected to
  ``lockgate_broker`` (from :mod:`broker.testing`), closed after the test. An async
  fixture: it runs in the test's own event loop, under pytest-trio (``trio_mode`` or
  ``@pytest.mark.trio``) or anyio's pytest plugin (``@pytest.mark.anyio``, on asyncio or
  trio); any runner of async fixtures will do.
- ``lockgate_sync_client``: a blocking :class:`~client.sync.SyncClient` connected to it.
- ``lockgate_client_tls``: what both clients pass as ``tls=`` (None). A suite whose
  ``lockgate_broker_settings`` give the broker ``tls_cert`` and ``tls_key`` overrides it
  with a context that trusts that certificate (:func:`client.tls.tls_context`).

This module names the broker fixture but does not import the broker: the client never
does (the import contracts in pyproject.toml).
"""
from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

import pytest

from .api import Client
from .sync import SyncClient


class _Broker(Protocol):
    @property
    def addr(self) -> str: ...


@pytest.fixture
def lockgate_client_tls() -> ssl.SSLContext | None:
    """The ``tls=`` of ``lockgate_client`` and ``lockgate_sync_client``: None (plain TCP).
    Override it for a broker given ``tls_cert`` in ``lockgate_broker_settings``."""
    return None


@pytest.fixture
async def lockgate_client(lockgate_broker: _Broker, lockgate_client_tls: ssl.SSLContext | None) -> AsyncIterator[Client]:
    """An async client of ``lockgate_broker``."""
    async with Client.connect(lockgate_broker.addr, tls=lockgate_client_tls) as client:
        yield client


@pytest.fixture
def lockgate_sync_client(lockgate_broker: _Broker, lockgate_client_tls: ssl.SSLContext | None) -> Iterator[SyncClient]:
    """A blocking client of ``lockgate_broker``."""
    with SyncClient(lockgate_broker.addr, tls=lockgate_client_tls) as client:
        yield client


__all__ = ["lockgate_client", "lockgate_client_tls", "lockgate_sync_client"]
