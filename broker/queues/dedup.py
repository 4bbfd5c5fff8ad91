"""Remembered dedup ids (SPEC §8.9): what makes a queue's or a topic's publishes
idempotent. One ``DedupIds`` per queue and per topic, changed only by their appliers
(``remember``) and by snapshot import.

Pure state: no clock, no I/O.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from itertools import islice
from typing import Any, cast

from protocol import DEDUP_MAX_IDS

#: A remembered dedup id's entry packs the first publish's time and the message id:
#: ``at_ms << _ID_BITS | id`` (ids are below 2**63).
_ID_BITS = 64
_ID_MASK = (1 << _ID_BITS) - 1


class DedupIds(dict[bytes, int]):
    """Dedup id -> the ms of the first publish with it and the message id it got
    (packed, see ``_ID_BITS``), oldest first, kept for ``window`` ms after that publish
    whatever happens to the message, and at most ``DEDUP_MAX_IDS`` of them (the oldest
    goes first). A dict, so that the publish paths look ids up in C."""

    __slots__ = ("window", "order")

    def __init__(self, window: int) -> None:
        super().__init__()
        #: How long an id is remembered (ms); 0: no dedup.
        self.window = window
        #: The ids in the order they were remembered, so the oldest is found in O(1): a
        #: dict's first key is not (it skips the slots its deleted keys leave behind). An
        #: id remembered again is here twice; the first is stale.
        self.order: deque[bytes] = deque()

    def duplicate_of(self, dedup_id: bytes, now_ms: int) -> int | None:
        """The id of the message first published with ``dedup_id`` within the window
        before ``now_ms``, if remembered. Reads only."""
        entry = self.get(dedup_id)
        if entry is None or (entry >> _ID_BITS) + self.window <= now_ms:
            return None
        return entry & _ID_MASK

    def first_of(self, dedup_id: bytes, now_ms: int, batch: dict[bytes, int]) -> int | None:
        """The id of the message first published with ``dedup_id``: by an earlier entry
        of the same publish (``batch``: its dedup ids -> the ids they got), else within
        the window (``duplicate_of``). Reads only."""
        earlier = batch.get(dedup_id)
        return earlier if earlier is not None else self.duplicate_of(dedup_id, now_ms)

    def remember(self, first_id: int, dedup_ids: list[bytes | None], now_ms: int) -> None:
        """Messages ``first_id, first_id + 1, ...`` were published at ``now_ms`` with these
        dedup ids (None: none). Entries whose window has passed by ``now_ms`` are
        forgotten from the oldest on; beyond ``DEDUP_MAX_IDS`` the oldest go."""
        window, order = self.window, self.order
        if not window:
            return
        while order:
            entry = self.get(order[0])
            if entry is not None and (entry >> _ID_BITS) + window > now_ms:
                break
            del_id = order.popleft()
            if entry is not None:
                del self[del_id]
        # Each entry is one int, ``now_ms << _ID_BITS | id``: no tuple (nor a container
        # for the collector to scan) per remembered id.
        base = now_ms << _ID_BITS
        ids = range(base + first_id, base + first_id + len(dedup_ids))
        if None not in dedup_ids:  # the common case, in C
            every = cast("list[bytes]", dedup_ids)
            # The handler stored no id the window still holds, and the ids whose window
            # has passed were forgotten just above (times only grow), so these are new.
            self.update(zip(every, ids))
            order.extend(every)
        else:
            for entry, dedup_id in zip(ids, dedup_ids):
                if dedup_id is not None:
                    self.pop(dedup_id, None)  # a new first publish goes to the back
                    self[dedup_id] = entry
                    order.append(dedup_id)
        while len(self) > DEDUP_MAX_IDS:
            self.pop(order.popleft(), None)

    def export_rows(self) -> Iterator[list[Any]]:
        """As rows ``[dedup id, first publish ms, message id]``, oldest first."""
        for dedup_id, entry in self.items():
            yield [dedup_id, entry >> _ID_BITS, entry & _ID_MASK]

    def export_columns(self, chunk: int) -> Iterator[tuple[list[bytes], list[int], list[int]]]:
        """As chunks of three columns, oldest first (snapshot records 111 and 112): the
        dedup ids, their first publish times (ms) and their message ids."""
        ids, entries = iter(list(self)), iter(list(self.values()))
        mask = _ID_MASK
        for _ in range(0, len(self), chunk):
            packed = list(islice(entries, chunk))
            yield list(islice(ids, chunk)), [e >> _ID_BITS for e in packed], [e & mask for e in packed]

    def import_columns(self, ids: list[bytes], at_ms: list[int], mids: list[int]) -> None:
        """A chunk of ``export_columns``, in order."""
        self.update(zip(ids, (at << _ID_BITS | mid for at, mid in zip(at_ms, mids))))
        self.order.extend(ids)

    def import_rows(self, rows: list[list[Any]]) -> None:
        """Rows of ``export_rows``, in order."""
        for dedup_id, at_ms, mid in rows:
            self[dedup_id] = at_ms << _ID_BITS | mid
            self.order.append(dedup_id)
