"""Mutation records: the one codec between a mutation and its WAL record.

Everything that writes or reads mutation records goes through here: the live path
(``encode``, ``PublishFold``), replay (``fold_records``), checkpoints and
``brokerctl wal`` (``decode``), and admission (the record-size bounds).

Rules:
1. A record is ``encode_record(m.TYPE, msgpack(m.record_fields()))``: the declared
   fields of ``broker.mutations``, in order (optional trailing ones left out at their
   defaults). Fields are read by name; positions come from ``Cls.FIELDS``.
2. Folding: applying ``Publish(q, n, t, [a])`` then ``Publish(q, n + 1, t, [b])`` gives
   the same state as ``Publish(q, n, t, [a, b])`` when both are plain (no keys,
   priorities, delays, expiries or dedup ids: every column None) and have the same
   ``now_ms`` ``t`` (each message's ``published_at``). The live path logs such runs as
   one record (``PublishFold``); replay applies such runs as one item
   (``fold_records``). A publish record's optional columns (those after
   ``ready_at_ms``) are left out when None, so a plain record has 7 fields, as before
   they existed.
3. The size bounds are upper bounds: admission reserves at least what the records
   it admits will take, and what acking every live message will take.
"""
from __future__ import annotations

from typing import Any

import msgpack

from .mutations import MUTATIONS, Mutation, Publish, Txn
from .wal import encode_record

__all__ = [
    "ACK_RECORD_BASE", "PublishFold", "ack_cost", "decode", "decode_fields", "encode",
    "fold_records", "publish_need", "record_need", "txn_need",
]

_pack = msgpack.Packer(use_bin_type=True).pack
_unpackb = msgpack.unpackb
_PUBLISH = Publish.TYPE
# Positions of a publish record's fields (rule 1).
_QUEUE, _FIRST_ID, _NOW, _BODIES, _KEYS, _PRIORITIES, _READY_AT = (
    Publish.FIELDS.index(name) for name in
    ("queue", "first_id", "now_ms", "bodies", "keys", "priorities", "ready_at_ms"))
#: Fields of a publish record without its optional columns (rule 2).
_PUBLISH_BASE = Publish.RECORD_BASE


# -- the codec ------------------------------------------------------------------------

def encode(mutation: Mutation) -> bytes:
    """The WAL record of ``mutation``."""
    return encode_record(mutation.TYPE, _pack(mutation.record_fields()))


def decode_fields(payload: bytes) -> list[Any]:
    """A record payload's field values, in declared order."""
    fields: list[Any] = _unpackb(payload, raw=False)
    return fields


def decode(rtype: int, payload: bytes) -> Mutation:
    """The mutation a record holds. Raises ``KeyError`` for a type this build lacks and
    ``TypeError``/``ValueError`` for a payload that does not fit its type."""
    return MUTATIONS[rtype](*decode_fields(payload))


class PublishFold:
    """The live path's pending run of plain publishes (rule 2), not yet appended."""

    __slots__ = ("_fields",)

    def __init__(self) -> None:
        self._fields: list[Any] | None = None

    def add(self, m: Publish) -> bytes | None:
        """Take a plain publish into the run. Returns the record of the run it ended
        (to append before anything else), or None if it joined the pending one."""
        pending = self._fields
        if pending is not None and pending[_QUEUE] == m.queue \
                and pending[_FIRST_ID] + len(pending[_BODIES]) == m.first_id \
                and pending[_NOW] == m.now_ms:
            pending[_BODIES] += m.bodies
            return None
        self._fields = [m.queue, m.first_id, m.now_ms, list(m.bodies), None, None, None]
        return None if pending is None else encode_record(_PUBLISH, _pack(pending))

    def flush(self) -> bytes | None:
        """The pending run's record, if any; the run is then empty."""
        pending, self._fields = self._fields, None
        return None if pending is None else encode_record(_PUBLISH, _pack(pending))


def fold_records(types: bytes, payloads: list[bytes]) -> list[list[Any]]:
    """Decode WAL records (``types[i]`` the type of ``payloads[i]``) into
    ``[type, fields]`` items for ``BrokerState.apply_items``, folding each run of plain
    publishes to one queue with consecutive ids into one publish (rule 2).

    Reads nothing but its arguments: replay may run it in a helper process.
    The replay hot path: one loop, state in locals.
    """
    items: list[list[Any]] = []
    add = items.append
    queue: str | None = None
    nxt = 0
    now = -1
    bodies: list[bytes] = []
    # Field positions as locals: the cheapest loads, which pays for the length check.
    publish, at_queue, at_first, at_now, at_bodies, at_keys, at_prio, at_ready, base = (
        _PUBLISH, _QUEUE, _FIRST_ID, _NOW, _BODIES, _KEYS, _PRIORITIES, _READY_AT, _PUBLISH_BASE)
    for rtype, fields in zip(types, map(_unpackb, payloads)):
        # Plain: the three columns None and no optional ones (a record that spells out
        # optional columns as None is applied alone: correct, only not folded).
        if rtype == publish and fields[at_keys] is None and fields[at_prio] is None \
                and fields[at_ready] is None and len(fields) == base:
            if fields[at_first] == nxt and fields[at_now] == now and fields[at_queue] == queue:
                more = fields[at_bodies]
                bodies += more  # the run's item holds this very list
                nxt += len(more)
                continue
            queue, bodies, now = fields[at_queue], fields[at_bodies], fields[at_now]
            nxt = fields[at_first] + len(bodies)
        else:
            queue = None
        add([rtype, fields])
    return items


# -- size bounds (rule 3) --------------------------------------------------------------

#: Log bytes an ACK record takes, at most, to ack one message of a queue alone, less
#: the queue name's length: record header 9, array 1, name header 2, id array 1, id 9
#: (rounded up). Acking k messages in one record takes at most k times that.
ACK_RECORD_BASE = 24
#: Bytes a record takes beyond its packed fields, at most; for a publish, beyond its
#: bodies and queue name: record header, fields, the name's header.
RECORD_OVERHEAD = 48
#: Bytes a publish record takes per body beyond the body (its bin header).
PER_BODY = 5


def ack_cost(queue_name: str) -> int:
    """Most log bytes acking one message of ``queue_name`` can take (names are ASCII)."""
    return ACK_RECORD_BASE + len(queue_name)


def publish_need(m: Publish) -> int:
    """Log bytes a publish may take, its messages' future acks included."""
    bodies = m.bodies
    n = len(bodies)
    need = RECORD_OVERHEAD + len(m.queue) + sum(map(len, bodies)) + n * (PER_BODY + ack_cost(m.queue))
    if m.keys is not None:
        need += sum(len(k) + PER_BODY for k in m.keys if k is not None) + n
    if m.priorities is not None:
        need += 2 * n
    if m.ready_at_ms is not None:
        need += 9 * n
    if m.expires_at_ms is not None:
        need += 9 * n
    dedup_ids = m.dedup_ids
    if dedup_ids is not None:
        if None in dedup_ids:
            dedup_ids = [d for d in dedup_ids if d is not None]
        need += sum(map(len, dedup_ids)) + (PER_BODY + 1) * n  # type: ignore[arg-type]
    if m.depends_on is not None:  # per pair: array 1, name header 2 + name, id 9
        need += n + sum(12 + len(q) for deps in m.depends_on if deps for q, _ in deps)
    return need


def record_need(m: Mutation) -> int:
    """Log bytes the record of ``m`` takes, at most."""
    return len(_pack(m.record_fields())) + RECORD_OVERHEAD


def txn_need(m: Txn) -> tuple[int, int]:
    """Log bytes a transaction's record takes, at most, with the future acks of the
    messages its publish steps add; and how many messages those are."""
    need = record_need(m)
    rows = 0
    for rtype, fields in m.steps:
        if rtype == _PUBLISH:
            count = len(fields[_BODIES])
            need += count * ack_cost(fields[_QUEUE])
            rows += count
    return need, rows
