"""The pytest plugin for users (broker/testing.py, client/testing.py), used by a test
suite of its own: pytester writes a user's test file and runs it in a fresh pytest.

The file uses every fixture: the blocking client, the async client under pytest-trio and
under anyio's plugin on asyncio and trio, the clock for lease expiry, retry backoff and
delays without sleeping, a restart, and settings overridden in a conftest. It runs once
with the plugins loaded by their entry points and once named with -p alone.
"""
from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CONFTEST = '''
import pytest

@pytest.fixture
def lockgate_broker_settings():
    return {"max_message": 4096}
'''

USER_TESTS = '''
import pytest

from client import Client, MessageTooLarge, Reconnect, SyncClient


def test_blocking_client(lockgate_sync_client):
    lockgate_sync_client.create_queue("jobs")
    lockgate_sync_client.publish("jobs", b"x")
    assert [d.body for d in lockgate_sync_client.consume("jobs")] == [b"x"]


@pytest.mark.trio
async def test_lease_expiry_on_trio(lockgate_client, lockgate_clock):
    await lockgate_client.create_queue("jobs", visibility_ms=30_000)
    await lockgate_client.publish("jobs", b"resize photo 17")
    [first] = await lockgate_client.consume("jobs")
    assert await lockgate_client.consume("jobs") == []          # leased for 30 s
    lockgate_clock.advance(30_000)                               # no sleep: the lease ends now
    [again] = await lockgate_client.consume("jobs")
    assert (again.id, again.attempt) == (first.id, 2)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_retry_backoff_on_anyio(lockgate_client, lockgate_clock, anyio_backend):
    await lockgate_client.create_queue("mail", retry_delay_ms=60_000, retry_backoff="fixed")
    await lockgate_client.publish("mail", b"hi")
    [d] = await lockgate_client.consume("mail")
    await lockgate_client.nack("mail", [d.id])
    assert await lockgate_client.consume("mail") == []           # waits out its retry delay
    lockgate_clock.advance(60_000)
    async with lockgate_client.subscribe("mail") as sub:
        async for msg in sub:
            async with msg:
                assert (msg.body, msg.attempt) == (b"hi", 2)
            break


def test_delay_across_a_restart(lockgate_broker, lockgate_sync_client, lockgate_clock):
    lockgate_sync_client.create_queue("later")
    lockgate_sync_client.publish("later", b"in an hour", delay_ms=3_600_000)
    lockgate_clock.advance(3_000_000)
    assert lockgate_sync_client.consume("later") == []
    before = lockgate_clock.now_ms()
    lockgate_broker.restart()                                    # same port, same data, same clock
    assert lockgate_clock.now_ms() >= before
    lockgate_clock.advance(600_000)
    with SyncClient(lockgate_broker.addr) as again:
        assert [d.body for d in again.consume("later")] == [b"in an hour"]


@pytest.mark.trio
async def test_a_client_with_reconnect_survives_a_restart(lockgate_broker):
    async with Client.connect(lockgate_broker.addr, reconnect=Reconnect(initial_delay_s=0.01)) as c:
        await c.create_queue("q")
        lockgate_broker.restart()
        assert await c.publish("q", b"after") >= 1
        assert c.reconnects == 1


def test_settings_from_the_conftest(lockgate_sync_client):
    lockgate_sync_client.create_queue("small")
    with pytest.raises(MessageTooLarge):
        lockgate_sync_client.publish("small", b"x" * 5000)
'''


@pytest.fixture
def user_suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_user=USER_TESTS)
    return pytester


def test_the_plugin_loads_by_its_entry_points(user_suite: pytest.Pytester) -> None:
    result = user_suite.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=7)


def test_the_plugin_named_with_p(user_suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = user_suite.runpytest_subprocess(
        "-p", "broker.testing", "-p", "client.testing", "-p", "pytest_trio.plugin", "-p", "anyio.pytest_plugin",
        "-p", "no:cacheprovider")
    result.assert_outcomes(passed=7)


def test_a_failing_user_test_fails(pytester: pytest.Pytester) -> None:
    """The fixtures do not hide a user's failure: a lease not yet over stays leased."""
    pytester.makepyfile(test_user='''
def test_too_early(lockgate_sync_client, lockgate_clock):
    lockgate_sync_client.create_queue("jobs", visibility_ms=30_000)
    lockgate_sync_client.publish("jobs", b"x")
    lockgate_sync_client.consume("jobs")
    lockgate_clock.advance(20_000)
    assert lockgate_sync_client.consume("jobs") != []
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(failed=1)


TLS_CONFTEST = '''
import pytest
import trustme

from client import tls_context


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    ca, where = trustme.CA(), tmp_path_factory.mktemp("pki")
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(where / "key.pem"))
    (where / "cert.pem").write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    return where


@pytest.fixture
def lockgate_broker_settings(pki):
    return {"tls_cert": pki / "cert.pem", "tls_key": pki / "key.pem"}


@pytest.fixture
def lockgate_client_tls(pki):
    return tls_context(ca=pki / "ca.pem")
'''

TLS_TESTS = '''
import pytest

from client import ConnectionClosed, SyncClient


def test_blocking_client_in_tls(lockgate_broker, lockgate_sync_client):
    lockgate_sync_client.create_queue("jobs")
    lockgate_sync_client.publish("jobs", b"hi")
    with pytest.raises(ConnectionClosed):  # the broker speaks TLS only
        SyncClient(lockgate_broker.addr)


@pytest.mark.trio
async def test_async_client_in_tls(lockgate_client):
    await lockgate_client.create_queue("jobs")
    assert await lockgate_client.publish("jobs", b"hi") == 1
'''


def test_a_tls_broker_and_clients_that_trust_it(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.broker_process import ROOT

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout's plugin, wherever lockgate is installed
    pytester.makeconftest(TLS_CONFTEST)
    pytester.makepyfile(test_user=TLS_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
