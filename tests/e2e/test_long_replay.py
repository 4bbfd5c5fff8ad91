"""A real brokerd recovers a log long enough to be decoded by its replay helper."""
from __future__ import annotations

from pathlib import Path

import msgpack

from broker.mutations import Ack, Publish, QueueCreate
from broker.wal import SegmentedLog, encode_record
from broker.wal.offload import OFFLOAD_MIN_BYTES

from ..broker_process import BrokerProcess

BODY = 300


def test_brokerd_recovers_a_long_log_through_the_helper(tmp_path: Path) -> None:
    from client import SyncClient

    data = tmp_path / "data"
    pack = msgpack.Packer(use_bin_type=True).pack
    count = OFFLOAD_MIN_BYTES // BODY + 1000
    with SegmentedLog.open(data / "wal", segment_bytes=4 << 20) as log:
        create = QueueCreate("long", "fifo", 1, 30_000, 0, None, 10**9)
        log.append(encode_record(create.TYPE, pack(create.fields())))
        for i in range(1, count + 1):
            m = Publish("long", i, 0, [i.to_bytes(4, "big") * (BODY // 4)])
            log.append(encode_record(m.TYPE, pack(m.fields())))
            if i % 10_000 == 0:
                log.write()
        ack = Ack("long", list(range(1, 501)))
        log.append(encode_record(ack.TYPE, pack(ack.fields())))
        log.write()
        last = max((data / "wal").glob("*.wal"))
    assert sum(p.stat().st_size for p in (data / "wal").glob("*.wal")) >= OFFLOAD_MIN_BYTES
    with last.open("ab") as f:  # a torn tail: a record header promising more than is there
        f.write(encode_record(3, b"x" * 100)[:50])

    proc = BrokerProcess(data, args=("--log-level", "info")).start(timeout=120)
    try:
        with SyncClient(proc.addr, timeout=30) as c:
            stats = c.queue_stats("long")
            assert stats.messages == count - 500
            got = c.consume("long", max=2)
            assert [d.body for d in got] == [
                i.to_bytes(4, "big") * (BODY // 4) for i in (501, 502)]
            assert c.publish("long", b"next") == count + 1
    finally:
        proc.stop()
    log_text = proc.log_tail(100_000)
    assert f"recovered: {count + 2} records" in log_text
    assert "torn tail" in log_text
    assert "with a helper process" in log_text
