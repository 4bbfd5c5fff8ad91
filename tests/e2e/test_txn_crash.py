"""Transactions under SIGKILL (SPEC §5.28): consume, then ack + publish in one ``txn``,
pipelined; the broker is killed at a random point. After the restart each input message
is either still in the input queue with no output, or acked with exactly one output:
never both, never neither, never two."""
from __future__ import annotations

import random
from collections import Counter

import pytest
import trio

from client import Client, ConnectionClosed, SyncClient, TxnConflict

from ..broker_process import BrokerProcess

INPUTS = 400


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_input_has_one_outcome_after_a_kill(broker_process: BrokerProcess, seed: int) -> None:
    rng = random.Random(seed)
    proc = broker_process
    kill_after = rng.randrange(20, INPUTS // 2)
    with SyncClient(proc.addr) as setup:
        setup.create_queue("in", visibility_ms=600_000)
        setup.create_queue("out")
        setup.publish_batch("in", [b"job-%d" % i for i in range(INPUTS)])
    committed = 0

    async def worker(client: Client) -> None:
        nonlocal committed
        while True:
            got = await client.consume("in", 8)
            if not got:
                return
            for d in got:
                try:
                    await client.transaction().ack("in", [d.id]).publish("out", [b"done " + d.body]).commit()
                except TxnConflict:
                    continue
                committed += 1
                if committed == kill_after:
                    proc.kill()

    with pytest.raises((ConnectionClosed, OSError, BaseExceptionGroup)):
        async with Client.connect(proc.addr) as client:
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(worker, client)
    assert committed >= kill_after
    proc.start()
    with SyncClient(proc.addr) as client:
        outputs = Counter()
        while batch := client.consume("out", 1000):
            outputs.update(d.body.removeprefix(b"done ") for d in batch)
        statuses = client.message_status("in", list(range(1, INPUTS + 1)))
    still_in = {b"job-%d" % (s.id - 1) for s in statuses if s.state != "gone"}
    for i in range(INPUTS):
        body = b"job-%d" % i
        assert outputs[body] + (body in still_in) == 1, (body, outputs[body], body in still_in)
    assert sum(outputs.values()) >= kill_after
