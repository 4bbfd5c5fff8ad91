"""Reconnect for the blocking client (``SyncClient(..., reconnect=...)``, client/sync.py).

Against a real broker process SIGKILLed and started again on the same port and data
(tests/broker_process.py), and behind the proxy that loses a reply on purpose
(tests/client/cutproxy.py, run in a thread of its own): a publish whose reply was lost
is sent again and stored once, a publish made while the broker is down waits for it,
other requests in flight raise, subscriptions resubscribe (or end when their queue went),
the wait counts against the timeout, and the client gives up after ``max_attempts``.
"""
from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from client import ConnectionClosed, SyncClient, TopicMessage
from client.backoff import Reconnect
from tests.broker_process import BrokerProcess

from .cutproxy import CutProxy, cut_proxy

FAST = Reconnect(initial_delay_s=0.01, max_delay_s=0.05)


def qname() -> str:
    return f"src-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker process whose restarts keep its port (and its data)."""
    proc = BrokerProcess(tmp_path / "data").start()
    proc.args = ("--port", str(proc.port))
    try:
        yield proc
    finally:
        proc.kill()


@contextmanager
def proxy_to(upstream: tuple[str, int]) -> Iterator[tuple[CutProxy, BlockingPortal]]:
    """The cut proxy, in an event loop on a thread of its own."""
    with start_blocking_portal(backend="trio") as portal, portal.wrap_async_context_manager(
            cut_proxy(upstream)) as proxy:
        yield proxy, portal


def test_a_publish_across_a_broker_restart_is_stored_once(restartable: BrokerProcess) -> None:
    """The broker dies between two publishes; the second finds the connection gone, waits
    while the broker is down (refused attempts, with backoff) and goes out once it is back."""
    q = qname()
    with SyncClient(restartable.addr, reconnect=FAST) as lg:
        lg.create_queue(q)
        first = lg.publish(q, b"before")
        restartable.kill()
        back = threading.Thread(target=restartable.start)
        back.start()                                                  # takes a while: a new process
        try:
            second = lg.publish(q, b"after")                          # lost, then refused, then sent
        finally:
            back.join()
        batch = lg.publish_batch(q, [b"b1", b"b2"])
        assert (lg.reconnects, lg.publishes_retried) == (1, 1)
        assert second == first + 1 and list(batch.ids) == [first + 2, first + 3]
        assert [m.body for m in lg.peek(q, 10)] == [b"before", b"after", b"b1", b"b2"]
        assert lg.connected and not lg.closed


def test_a_publish_whose_reply_was_lost_is_stored_once(sync_broker_addr: tuple[str, int]) -> None:
    q, r = qname(), qname()
    with proxy_to(sync_broker_addr) as (proxy, portal), SyncClient(proxy.addr, reconnect=FAST) as lg:
        lg.create_queue(q)
        lg.create_queue(r, dedup_window_ms=0)                          # the control: no dedup ids kept
        proxy.cut_reply_to("publish")
        lg.publish(q, b"exactly once")                                 # stored, reply lost, sent again
        proxy.cut_reply_to("publish")
        results = lg.publish_many(q, [b"m%d" % i for i in range(5)], batch_size=2, window=3)
        proxy.cut_reply_to("publish")
        lg.publish(r, b"twice")
        # every batch in flight when the reply was lost was sent again: 1 + 3 + 1
        assert lg.publishes_retried == 5 and lg.reconnects == 3 and proxy.accepted == 4
        assert [len(res.message_ids()) for res in results] == [2, 2, 1]     # stored now or before the loss
        assert [m.body for m in lg.peek(q, 10)] == [b"exactly once", *(b"m%d" % i for i in range(5))]
        assert lg.queue_stats(r).ready == 2


def test_a_topic_publish_whose_reply_was_lost_is_stored_once(sync_broker_addr: tuple[str, int]) -> None:
    t = qname()
    with proxy_to(sync_broker_addr) as (proxy, portal), SyncClient(proxy.addr, reconnect=FAST) as lg:
        lg.create_topic(t, 2)
        proxy.cut_reply_to("topic_publish")
        lost = lg.publish_topic(t, [b"once", TopicMessage(b"mine", b"k", dedup_id=b"order-1")])
        assert (lg.reconnects, lg.publishes_retried, proxy.accepted) == (1, 1, 2)
        assert (lost.count, lost.duplicates) == (0, ((0, 1), (1, 2)))
        assert lg.topic_stats(t).published == 2
        txn = lg.transaction().publish_topic(t, [b"in a txn"])
        proxy.cut_reply_to("txn")
        with pytest.raises(ConnectionClosed):                          # a txn is not retried
            txn.commit()
        assert lg.topic_stats(t).published == 3


def test_other_requests_in_flight_raise_and_the_next_one_reconnects(sync_broker_addr: tuple[str, int]) -> None:
    q = qname()
    with proxy_to(sync_broker_addr) as (proxy, portal), SyncClient(proxy.addr, reconnect=FAST) as lg:
        lg.create_queue(q)
        lg.publish(q, b"m")
        proxy.cut_reply_to("consume")
        waiting = lg.submit("queue_stats", {"queue": q})               # in flight on the same connection
        with pytest.raises(ConnectionClosed):
            lg.consume(q)                                              # leased, then the reply was lost
        with pytest.raises(ConnectionClosed):
            lg.result(waiting)
        assert not lg.connected and not lg.closed
        assert lg.queue_stats(q).leased == 1                           # sent on the next connection
        assert lg.reconnects == 1 and lg.publishes_retried == 0


def test_subscriptions_resubscribe_after_a_broker_restart(restartable: BrokerProcess) -> None:
    q = qname()
    with SyncClient(restartable.addr, reconnect=FAST) as lg:
        lg.create_queue(q)
        got: list[bytes] = []
        with lg.subscribe(q, credit=4, idle_timeout=60) as sub:
            lg.publish_batch(q, [b"a", b"b"])
            for msg in sub:
                with msg:
                    got.append(msg.body)
                if len(got) == 2:
                    break
            first_id = sub.id
            restartable.kill()
            restartable.start()
            with SyncClient(restartable.addr) as other:
                other.publish_batch(q, [b"c", b"d"])
            for msg in sub:                                            # reconnects, resubscribes
                with msg:
                    got.append(msg.body)
                if len(got) == 4:
                    break
            assert sub.id is not None and first_id is not None and lg.reconnects == 1
        assert got == [b"a", b"b", b"c", b"d"]
        stats = lg.queue_stats(q)
        assert (stats.messages, stats.acked) == (0, 4)


def test_a_subscription_whose_queue_went_while_away_ends(sync_broker_addr: tuple[str, int]) -> None:
    q = qname()
    with proxy_to(sync_broker_addr) as (proxy, portal), SyncClient(proxy.addr, reconnect=FAST) as lg:
        lg.create_queue(q)
        with lg.subscribe(q) as sub:
            proxy.refusing = True
            portal.call(proxy.cut_all)
            with SyncClient(sync_broker_addr) as admin:
                admin.delete_queue(q)
            proxy.refusing = False
            assert sub.get(timeout=30) is None                         # reconnected; the queue is gone
            assert sub.end_reason == "queue_deleted" and sub.ended
        assert lg.reconnects == 1 and lg.ping() > 0


def test_the_wait_for_a_connection_counts_against_the_timeout(restartable: BrokerProcess) -> None:
    q = qname()
    slow = Reconnect(initial_delay_s=0.05, max_delay_s=0.05, jitter=0)
    with SyncClient(restartable.addr, reconnect=slow, timeout=0.3) as lg:
        lg.create_queue(q)
        restartable.kill()
        with pytest.raises(ConnectionClosed):
            lg.ping()                                                  # sent on the dead connection
        with pytest.raises(TimeoutError, match="reconnect"):
            lg.queue_stats(q)                                          # refused until the timeout
        assert not lg.closed
        restartable.start()
        lg.timeout = 30
        assert lg.queue_stats(q).messages == 0 and lg.reconnects == 1


def test_the_client_gives_up_after_max_attempts(restartable: BrokerProcess) -> None:
    q = qname()
    policy = Reconnect(initial_delay_s=0.01, max_delay_s=0.01, max_attempts=3)
    with SyncClient(restartable.addr, reconnect=policy) as lg:
        lg.create_queue(q)
        with lg.subscribe(q) as sub:
            restartable.kill()
            with pytest.raises(ConnectionClosed, match="gave up reconnecting after 3 attempts"):
                lg.publish(q, b"never")
            assert lg.closed and not lg.connected
            with pytest.raises(ConnectionClosed, match="gave up"):
                sub.get(timeout=1)
        with pytest.raises(ConnectionClosed, match="gave up"):
            lg.ping()


def test_without_reconnect_a_lost_connection_closes_the_client(restartable: BrokerProcess) -> None:
    """The control: the same restart without ``reconnect`` leaves the client closed."""
    q = qname()
    with SyncClient(restartable.addr) as lg:
        lg.create_queue(q)
        restartable.kill()
        restartable.start()
        with pytest.raises(ConnectionClosed):
            lg.publish(q, b"lost")
        assert lg.closed
        with pytest.raises(ConnectionClosed):
            lg.ping()
        assert lg.reconnects == 0
