"""A redrive is one log record (SPEC §5.16): a broker SIGKILLed while it runs one, before
or after its reply, restarts with every message in exactly one place, the dead-letter
queue or its source queue, none lost and none doubled."""
from __future__ import annotations

import socket
from collections import Counter

import pytest

from client import SyncClient
from client.types import hello_args
from protocol import Encoder

from ..broker_process import BrokerProcess

MESSAGES = 2000


@pytest.mark.parametrize("wait_for_reply", [False, True])
def test_a_kill_around_a_redrive_loses_and_doubles_nothing(broker_process: BrokerProcess,
                                                          wait_for_reply: bool) -> None:
    proc = broker_process
    with SyncClient(proc.addr) as client:
        client.create_queue("dlq")
        client.create_queue("jobs", max_attempts=1, dead_letter="dlq")
        client.publish_batch("jobs", [b"job-%d" % i for i in range(MESSAGES)])
        while batch := client.consume("jobs", 1000):
            client.nack("jobs", [d.id for d in batch])  # out of attempts: dead-lettered
        assert client.queue_stats("dlq").messages == MESSAGES
        if wait_for_reply:
            result = client.redrive("dlq")
            assert result.redriven == MESSAGES
        else:
            _send_raw(proc, "dlq")
    proc.kill()
    proc.start()
    with SyncClient(proc.addr) as client:
        places: Counter[bytes] = Counter()
        for queue in ("jobs", "dlq"):
            while batch := client.consume(queue, 1000):
                places.update(d.body for d in batch)
                client.ack(queue, [d.id for d in batch])
        assert sorted(places) == sorted(b"job-%d" % i for i in range(MESSAGES))
        assert set(places.values()) == {1}
        if wait_for_reply:  # confirmed: every one of them is back in its source queue
            assert client.queue_stats("jobs").acked == MESSAGES


def _send_raw(proc: BrokerProcess, dlq: str) -> None:
    """Write a redrive request and do not wait for its reply (the kill may land before or
    after the broker runs it)."""
    enc = Encoder()
    with socket.create_connection((proc.host, proc.port)) as sock:
        sock.sendall(enc.request(1, "hello", hello_args()) + enc.request(2, "redrive", {"queue": dlq}))
