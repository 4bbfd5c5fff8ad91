"""Queue groups: one consume or subscription reading several queues fairly (SPEC §8.15).

A ``consume`` or ``subscribe`` names either one ``queue``, or a group: ``queues`` (a list
of names) or ``prefix`` (every queue whose name starts with it, looked up afresh each
time the group is read, so a queue created later joins it). Rules:

1. **Members.** A ``queues`` group is its names (duplicates dropped), each an existing
   queue (else ``QUEUE_NOT_FOUND``). A ``prefix`` group is the queues whose names start
   with it, in creation order; with auth, only those its user may consume from. A group
   has at most ``MAX_GROUP_QUEUES`` members (else ``LIMIT_EXCEEDED``); a ``prefix`` group
   may have none (a consume then finds nothing, and may wait).
2. **Fairness.** Each read starts at the next member after the previous read's start
   (a cursor per connection), and divides what it may take among the members with ready
   messages: each gets an equal share, and what a member cannot use goes to the others.
   So a busy queue cannot starve a quiet one, and every member is served in turn.
3. **Waiting.** A held consume or a subscription of a group waits in the line of each
   member (a ``prefix`` group: in the line of its prefix, which any queue matching it
   wakes, including one created while it waits), and leaves the other lines once one
   wakes it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from protocol import ErrorCode, ProtocolError

from .queues import DELIVERY_OVERHEAD, Message, Queue

#: Most queues one group reads (the names of ``queues``, or the matches of ``prefix``).
MAX_GROUP_QUEUES = 1000
#: Longest ``prefix``, in characters (a queue name has at most 200).
MAX_PREFIX = 200


@dataclass(frozen=True, slots=True)
class QueueGroup:
    """What a consume or subscribe names instead of one queue: ``queues`` or ``prefix``."""

    queues: tuple[str, ...] = ()
    prefix: str | None = None

    def describe(self) -> str:
        return f"prefix {self.prefix!r}" if self.prefix is not None else f"queues {list(self.queues)}"


def _invalid(name: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_ARGUMENT, message, details={"field": name})


def group_arg(args: dict[str, Any], valid_name: Callable[[Any], bool]) -> QueueGroup | None:
    """The group a request names, None if it names one ``queue``; refuses a request that
    names more than one of ``queue``, ``queues`` and ``prefix``, or none."""
    queues, prefix = args.get("queues"), args.get("prefix")
    if queues is None and prefix is None:
        return None
    given = [n for n in ("queue", "queues", "prefix") if args.get(n) is not None]
    if len(given) > 1:
        raise _invalid(given[1], f"give one of queue, queues and prefix, not {' and '.join(given)}")
    if prefix is not None:
        if type(prefix) is not str or len(prefix) > MAX_PREFIX:
            raise _invalid("prefix", f"prefix must be a string of at most {MAX_PREFIX} characters")
        return QueueGroup(prefix=prefix)
    if type(queues) is not list or not queues:
        raise _invalid("queues", "queues must be a non-empty array of queue names")
    if len(queues) > MAX_GROUP_QUEUES:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {MAX_GROUP_QUEUES} queues in a group",
                            details={"field": "queues", "limit": MAX_GROUP_QUEUES})
    for name in queues:
        if not valid_name(name):
            raise _invalid("queues", f"{name!r} is not a queue name")
    return QueueGroup(queues=tuple(dict.fromkeys(queues)))


def members(group: QueueGroup, queues: dict[str, Queue], may_consume: Callable[[str], bool]) -> list[Queue]:
    """The queues of ``group`` now (rule 1)."""
    if group.prefix is None:
        found: list[Queue] = []
        for name in group.queues:
            queue = queues.get(name)
            if queue is None:
                raise ProtocolError(ErrorCode.QUEUE_NOT_FOUND, f"queue {name!r} does not exist",
                                    details={"field": "queues", "queue": name})
            found.append(queue)
        return found
    prefix = group.prefix
    matched = [q for name, q in queues.items() if name.startswith(prefix) and may_consume(name)]
    if len(matched) > MAX_GROUP_QUEUES:
        raise ProtocolError(ErrorCode.LIMIT_EXCEEDED,
                            f"prefix {prefix!r} matches {len(matched)} queues; a group reads at most "
                            f"{MAX_GROUP_QUEUES}", details={"field": "prefix", "limit": MAX_GROUP_QUEUES})
    return matched


def rotated(found: list[Queue], start: int) -> list[Queue]:
    """``found`` from its member ``start`` (modulo its length) on (rule 2)."""
    if not found:
        return found
    i = start % len(found)
    return found[i:] + found[:i]


def shares(ready: list[int], most: int) -> list[int]:
    """How many of ``most`` each member takes, given how many each has ready: equal
    shares, and what one cannot use goes to the others, earlier members first (rule 2)."""
    taken = [0] * len(ready)
    left = most
    active = [i for i, n in enumerate(ready) if n > 0]
    while left > 0 and active:
        share = max(1, left // len(active))
        still: list[int] = []
        for i in active:
            give = min(share, ready[i] - taken[i], left)
            taken[i] += give
            left -= give
            if taken[i] < ready[i]:
                still.append(i)
            if left == 0:
                break
        active = still
    return taken


def row_cost(queue: Queue, msg: Message) -> int:
    """Bytes a message adds to a group's consume reply or push: its delivery row, and its
    queue's name in ``queues``."""
    cost = len(msg.body) + (len(msg.key) if msg.key else 0) + DELIVERY_OVERHEAD + len(queue.name) + 4
    if queue.row_extra is not None:
        cost += queue.row_extra(msg)
    return cost


def select_fair(order: Iterable[Queue], most: int, byte_budget: int,
                now_ms: int) -> list[tuple[Queue, list[Message]]]:
    """Up to ``most`` ready messages across ``order`` (already rotated) whose rows fit in
    ``byte_budget`` (at least one if any is ready): each member's share (rule 2), as
    (queue, its messages) for the members that gave any. Reads only."""
    queues = list(order)
    wanted = shares([q.ready for q in queues], most)
    chosen: list[tuple[Queue, list[Message]]] = []
    budget = byte_budget
    for queue, count in zip(queues, wanted):
        if count == 0:
            continue
        fitting: list[Message] = []
        for msg in queue.select(count, budget, now_ms):
            cost = row_cost(queue, msg)
            if cost > budget and (fitting or chosen):
                break
            budget -= cost
            fitting.append(msg)
        if fitting:
            chosen.append((queue, fitting))
    return chosen
