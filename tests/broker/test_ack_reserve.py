"""The room kept for acks: an ack record never takes more than its messages reserved."""
from __future__ import annotations

import msgpack
import pytest

from broker.mutations import Ack
from broker.records import ack_cost
from broker.wal import encode_record
from protocol.ops import QUEUE_NAME_MAX

pack = msgpack.Packer(use_bin_type=True).pack


@pytest.mark.parametrize("name_len", [1, 31, 32, QUEUE_NAME_MAX])
@pytest.mark.parametrize("count", [1, 2, 15, 16, 100, 65_535, 65_536])
def test_an_ack_record_fits_in_what_its_messages_reserved(name_len: int, count: int) -> None:
    name = "q" * name_len
    ack = Ack(name, [2**63 - 1] * count)  # the widest ids
    assert len(encode_record(ack.TYPE, pack(ack.fields()))) <= count * ack_cost(name)
