"""Shared test settings: hypothesis profiles sized for CI and for local runs."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=150, deadline=None)
settings.register_profile("long", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# -- real brokers ------------------------------------------------------------------------

from collections.abc import AsyncIterator, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import trio  # noqa: E402

from broker.config import BrokerConfig  # noqa: E402
from broker.server import Broker  # noqa: E402

from .broker_process import BrokerProcess  # noqa: E402


@pytest.fixture
async def broker(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Broker]:
    """A real broker serving on 127.0.0.1, port 0, in this test's trio run."""
    instance = Broker(BrokerConfig(host="127.0.0.1", port=0, data_dir=tmp_path / "data"))
    await nursery.start(instance.serve)
    yield instance


@pytest.fixture
async def broker_addr(broker: Broker) -> tuple[str, int]:
    host, port = broker.addr.rsplit(":", 1)
    return host, int(port)


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A real broker in a child process; killed at the end of the test."""
    with BrokerProcess(tmp_path / "data") as proc:
        yield proc


@pytest.fixture
def sync_broker_addr(broker_process: BrokerProcess) -> tuple[str, int]:
    return broker_process.host, broker_process.port
