"""A pytest plugin for users' test suites: a real broker in-process, and its clock.

    pytest -p broker.testing -p client.testing     # or nothing: installed, both load by themselves

Fixtures (the client ones are in :mod:`client.testing`):

- ``lockgate_broker``: a real broker (the same code as ``brokerd``) serving on
  127.0.0.1 and a free port, with its data in a temporary directory, running in a thread
  of the test process; ``.addr`` is ``"127.0.0.1:PORT"``. One per test, so every test
  starts empty. ``.restart()`` stops it cleanly and starts it again on the same port and
  data (clients with ``reconnect=`` come back by themselves; the clock keeps what
  ``advance`` added).
- ``lockgate_clock``: the broker's clock. It runs at real speed; ``advance(ms)`` moves it
  forward at once and returns when the broker has acted on it (leases expired, delayed
  and retried messages ready, pushes sent), so tests of lease expiry, delays, retry
  backoff and TTLs need no sleeps. ``now_ms()`` is the broker's time (ms since the epoch,
  as in ``published_at``).
- ``lockgate_broker_settings``: a dict of :class:`~broker.config.BrokerConfig` fields for
  the broker (empty); override the fixture in a ``conftest.py`` to change them.

Test brokers differ from ``brokerd``'s defaults in three settings: ``fsync`` is
``never`` (a test needs no power-cut safety, and a clean stop still checkpoints),
``idle_timeout_ms`` is 0 (a clock moved by hours must not close the test's idle
connections) and ``max_connections`` is 1024.

The broker runs its own trio event loop in its thread, with a ``trio.testing.MockClock``
at rate 1, so it serves tests on trio, asyncio or no event loop at all. ``advance`` is a
blocking call that works from any of them (it holds the caller's loop for the moment the
broker needs).
"""
from __future__ import annotations

import concurrent.futures
import gc
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    import trio
    import trio.testing

    from .server import Broker

T = TypeVar("T")

#: Settings in which a test broker differs from brokerd's defaults (see the docstring).
TEST_DEFAULTS: dict[str, Any] = {"fsync": "never", "idle_timeout_ms": 0, "max_connections": 1024}
#: Seconds a start, a stop or a clock move may take before the fixture gives up.
TIMEOUT_S = 60.0


class BrokerClock:
    """The clock of a :class:`TestBroker` (``lockgate_clock``)."""

    def __init__(self, owner: TestBroker) -> None:
        self._owner = owner

    def advance(self, ms: float) -> None:
        """Move the broker's clock ``ms`` forward, then wait until the broker has done
        what came due (expiries, deliveries, pushes)."""
        if not ms >= 0:
            raise ValueError(f"the clock only moves forward: advance({ms!r})")
        self._owner._call(self._advance, ms / 1000)
        self._owner._advanced_s += ms / 1000

    def now_ms(self) -> int:
        """The broker's wall clock in ms since the epoch (``published_at`` and ``deliver_at``
        use it)."""
        return self._owner._call(self._now_ms)

    async def _advance(self, seconds: float) -> None:
        import trio.testing

        self._owner.mock_clock.jump(seconds)
        await trio.testing.wait_all_tasks_blocked()

    async def _now_ms(self) -> int:
        live = self._owner.broker._live
        assert live is not None
        return live.clock.now_ms()


class TestBroker:
    """A broker serving in a thread of this process (``lockgate_broker``)."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, data_dir: Path, settings: dict[str, Any] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.settings = {**TEST_DEFAULTS, **(settings or {})}
        self.host = "127.0.0.1"
        self.port = 0
        self.clock = BrokerClock(self)
        self._broker: Broker | None = None
        self._mock: trio.testing.MockClock | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        #: Seconds ``advance`` moved the clock, kept across restarts.
        self._advanced_s = 0.0

    @property
    def addr(self) -> str:
        """``"127.0.0.1:PORT"`` of the running broker."""
        return f"{self.host}:{self.port}"

    @property
    def broker(self) -> Broker:
        """The :class:`~broker.server.Broker` object (its state may be read between requests)."""
        if self._broker is None:
            raise RuntimeError("the test broker is not running")
        return self._broker

    @property
    def mock_clock(self) -> trio.testing.MockClock:
        if self._mock is None:
            raise RuntimeError("the test broker is not running")
        return self._mock

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> TestBroker:
        """Start serving (on the same port as before, after a stop)."""
        import trio.testing

        from . import settings
        from .server import Broker

        if self.running:
            raise RuntimeError("the test broker is already running")
        flags = {**self.settings, "host": self.host, "port": self.port, "data_dir": self.data_dir}
        # Checked as brokerd checks flags (a bad one raises ConfigError naming it); the
        # environment's LOCKGATE_* variables are not read.
        config = settings.load({k: v if type(v) is bool else str(v) for k, v in flags.items()}, {}).config
        self._broker = Broker(config)
        self._mock = trio.testing.MockClock(rate=1.0)
        self._ready.clear()
        self._error = None
        thresholds = gc.get_threshold()
        self._thread = threading.Thread(target=self._serve, name="lockgate-test-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(TIMEOUT_S):
            raise RuntimeError(f"the test broker did not start within {TIMEOUT_S:g} s")
        # The broker tunes the collector for a process of its own (broker/gcpolicy.py);
        # this process is the test run's: give it back its settings.
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        if self._error is not None:
            self._thread.join(TIMEOUT_S)
            raise RuntimeError(f"the test broker did not start: {self._error}") from self._error
        self.port = int(self.broker.addr.rsplit(":", 1)[1])
        if self._advanced_s:  # a restarted broker's clock keeps what advance() added
            self._call(self.clock._advance, self._advanced_s)
        return self

    def _serve(self) -> None:
        import trio

        try:
            trio.run(self._main, clock=self._mock)
        except BaseException as exc:  # reported by start(), or by stop()
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        import trio

        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            await nursery.start(self.broker.serve)
            self._ready.set()

    def stop(self) -> None:
        """Stop cleanly (as on SIGTERM: in-flight requests answered, a final checkpoint)."""
        thread, token = self._thread, self._token
        if thread is None or token is None:
            return
        if thread.is_alive():
            def shut_down() -> None:
                # Grace periods and lingering closes pass at once: nothing waits on the wall clock.
                self.mock_clock.autojump_threshold = 0
                self.broker.shutdown()

            try:
                token.run_sync_soon(shut_down)
            except RuntimeError:  # the run ended meanwhile
                pass
            thread.join(TIMEOUT_S)
            if thread.is_alive():
                raise RuntimeError(f"the test broker did not stop within {TIMEOUT_S:g} s")
        self._thread = self._token = None
        error, self._error = self._error, None
        if error is not None:
            raise RuntimeError(f"the test broker failed: {error!r}") from error

    def restart(self) -> None:
        """Stop cleanly and start again on the same port and data directory."""
        self.stop()
        self.start()

    def _call(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``afn(*args)`` in the broker's event loop; block until it is done. Works from
        any thread, inside another event loop or not."""
        import trio

        token = self._token
        if token is None or not self.running:
            raise RuntimeError("the test broker is not running")
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def run() -> None:
            try:
                done.set_result(await afn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        token.run_sync_soon(lambda: trio.lowlevel.spawn_system_task(run))
        return done.result(TIMEOUT_S)

    def __enter__(self) -> TestBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def lockgate_broker_settings() -> dict[str, Any]:
    """:class:`~broker.config.BrokerConfig` fields for ``lockgate_broker`` (override it)."""
    return {}


@pytest.fixture
def lockgate_broker(
    tmp_path_factory: pytest.TempPathFactory, lockgate_broker_settings: dict[str, Any]
) -> Iterator[TestBroker]:
    """A real broker in this process on 127.0.0.1, a free port and a temporary directory."""
    with TestBroker(tmp_path_factory.mktemp("lockgate") / "data", lockgate_broker_settings) as broker:
        yield broker


@pytest.fixture
def lockgate_clock(lockgate_broker: TestBroker) -> BrokerClock:
    """The clock of ``lockgate_broker``: ``advance(ms)``, ``now_ms()``."""
    return lockgate_broker.clock


__all__ = ["TEST_DEFAULTS", "BrokerClock", "TestBroker", "lockgate_broker", "lockgate_broker_settings",
           "lockgate_clock"]
